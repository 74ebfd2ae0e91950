-- wrk script for the serving benchmark: POST one pre-built V2 request body, again and again.
--
--   wrk -t1 -cN -dDs -s bench/serve_wrk.lua URL -- BODY_FILE [HEADER_LENGTH]
--
-- BODY_FILE holds the exact bytes to send: V2 JSON, or for the binary tensor extension the
-- JSON header followed by the raw tensor bytes, with HEADER_LENGTH the size of the JSON
-- part (sent as Inference-Header-Content-Length). The request is formatted once, so wrk
-- does no work per request but write it. done() prints one line, "RESULT {json}", with
-- requests, duration, latency percentiles (microseconds) and errors by kind.

local request_bytes

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  local headers = {}
  if args[2] then
    headers["Content-Type"] = "application/octet-stream"
    headers["Inference-Header-Content-Length"] = args[2]
  else
    headers["Content-Type"] = "application/json"
  end
  request_bytes = wrk.format("POST", nil, headers, body)
end

function request()
  return request_bytes
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout))
end

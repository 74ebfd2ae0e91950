-- wrk script for bench/auth_cost.py: POST one V2 JSON body again and again, with an
-- Authorization header when a key is given.
--
--   wrk -t1 -cN -dDs -s bench/auth_wrk.lua URL -- BODY_FILE [API_KEY]
--
-- done() prints "RESULT {json}" with requests, duration (us) and errors, as serve_wrk.lua.

local request_bytes

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  local headers = {["Content-Type"] = "application/json"}
  if args[2] then
    headers["Authorization"] = "Bearer " .. args[2]
  end
  request_bytes = wrk.format("POST", nil, headers, body)
end

function request()
  return request_bytes
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.status + errors.timeout))
end

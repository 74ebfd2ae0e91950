"""Benchmark: push and pull of a large model over the registry API against the local push.

Issue 12 asks for remote push and pull of a 200 MB model over loopback HTTP, as a ratio to
the local push. A model Y = X + W whose FP32 initializer fills ``--size-mb`` MiB is pushed

- locally: ``Registry(home A).push`` in this process;
- remotely: ``Registry.remote(hub).push`` to a ``modelport serve`` hub (home B) on
  127.0.0.1, which streams the file to the server's staging, then the server pushes it;
- and pulled back: ``Registry.remote(hub).pull`` (download verified while written) and, for
  reference, ``Registry(home A).pull`` (a verified local copy).

Rounds are interleaved; each step is timed ``--reps`` times and the median reported. The
server's peak RSS (VmHWM) shows that no request holds the file in memory.

    .venv/bin/python bench/remote_registry.py [--size-mb 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def make_model(path: Path, size_mb: int) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    count = size_mb * 2**20 // 4
    weights = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(count, dtype=np.float32), "W"
    )
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "big",
        [tensor("X", TensorProto.FLOAT, [count])],
        [tensor("Y", TensorProto.FLOAT, [count])],
        [weights],
    )
    opsets = [helper.make_opsetid("", 17)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def start_hub(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_HOME"] = str(home)
    cli = str(Path(sys.executable).parent / "modelport")
    proc = subprocess.Popen(
        [cli, "serve", "--http-port", str(port), "--no-grpc"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the hub did not become ready within 60 s")


def upload_only(url: str, model: Path, pid: int) -> int:
    """The server's peak RSS (KiB) after receiving the file alone (no push yet): the
    upload's own cost, apart from the push's model check (which loads the graph)."""
    with httpx.Client(base_url=f"{url}/api/v1", timeout=600) as api:
        upload = api.post("/uploads").json()["upload"]
        with model.open("rb") as handle:
            api.put(
                f"/uploads/{upload}/files/{model.name}",
                content=iter(lambda: handle.read(4 << 20), b""),
                headers={"content-length": str(model.stat().st_size)},
            ).raise_for_status()
        peak = memory_kib(pid, "VmHWM")
        api.delete(f"/uploads/{upload}")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from modelport import Registry, Settings

    root = Path(tempfile.mkdtemp(prefix="mp-remote-bench-"))
    try:
        model = make_model(root / "big.onnx", args.size_mb)
        size = model.stat().st_size
        proc, url = start_hub(root / "hub")
        idle_rss = memory_kib(proc.pid, "VmRSS")
        upload_peak = upload_only(url, model, proc.pid)
        times: dict[str, list[float]] = {"local push": [], "remote push": [], "remote pull": [],
                                         "local pull": []}  # fmt: skip
        local = Registry(Settings(home=root / "local"))
        remote = Registry.remote(url)
        try:
            for rep in range(args.reps):
                steps = {
                    "local push": lambda: local.push(model, "big"),
                    "remote push": lambda: remote.push(model, "big"),
                    "remote pull": lambda r=rep: remote.pull("big", root / f"pulled-{r}"),
                    "local pull": lambda r=rep: local.pull("big", root / f"copied-{r}"),
                }
                for name, step in steps.items():
                    subprocess.run(["sync"], check=False)
                    started = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - started)
                for directory in root.glob("*-" + str(rep)):
                    shutil.rmtree(directory)
        finally:
            remote.close()
            local.close()
        peak_rss = memory_kib(proc.pid, "VmHWM")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

        base = statistics.median(times["local push"])
        load = os.getloadavg()[0]
        print(f"model: {size / 2**20:.0f} MiB ONNX, {args.reps} interleaved rounds, "
              f"load average {load:.2f}, {os.cpu_count()} cores")  # fmt: skip
        print("| step | median s | MiB/s | vs local push |")
        print("|---|---|---|---|")
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"| {name} | {median:.2f} | {size / 2**20 / median:.0f} | {median / base:.2f}x |")
        print(f"server RSS: idle {idle_rss / 1024:.0f} MiB; peak while receiving the file "
              f"{upload_peak / 1024:.0f} MiB; peak over the whole run {peak_rss / 1024:.0f} MiB "
              f"(model {size / 2**20:.0f} MiB)")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Markdown for a serving benchmark run: the set-up, the tables, the targets and memory."""

from __future__ import annotations

from typing import Any

from _timing import markdown_table

__all__ = ["TARGETS", "render", "targets"]

# (what, model, protocol, numerator, denominator, at least), at concurrency 32, as the issue
# sets them.
TARGETS = [
    ("tiny, REST JSON, vs MLServer", "iris", "rest-json", "modelport", "mlserver", 5.0),
    ("(same, vs MLServer as configured by default)", "iris", "rest-json", "modelport",
     "mlserver:parallel_workers=1 (default), batching off", 5.0),
    ("tiny, REST JSON, vs bare Starlette", "iris", "rest-json", "modelport", "starlette", 0.8),
    ("CNN, REST binary, vs in-process limit", "cnn", "rest-binary", "modelport", "limit", 0.9),
    ("CNN, gRPC, vs in-process limit", "cnn", "grpc", "modelport", "limit", 0.9),
    ("CNN, REST JSON, vs MLServer", "cnn", "rest-json", "modelport", "mlserver", 1.3),
    ("(same, vs MLServer as configured by default)", "cnn", "rest-json", "modelport",
     "mlserver:parallel_workers=1 (default), batching off", 1.3),
]  # fmt: skip


def _best(report: dict[str, Any], server: str, model: str, protocol: str) -> tuple[float, str]:
    """The highest requests/s of ``server`` at concurrency 32 (best variant), and which."""
    server, _, variant = server.partition(":")
    if server == "limit":
        limit = report["limits"].get(model)
        return (limit["best"], limit["best_how"]) if limit else (0.0, "not measured")
    found = [
        p
        for p in report["points"]
        if p["server"] == server and p["model"] == model and p["protocol"] == protocol
        and p["concurrency"] == 32 and not p["failure"] and variant in ("", p["variant"])
    ]  # fmt: skip
    if not found:
        return 0.0, "not measured"
    best = max(found, key=lambda p: p["rps"])
    return best["rps"], best["variant"]


def targets(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for what, model, protocol, ours, theirs, floor in TARGETS:
        mine, _ = _best(report, ours, model, protocol)
        other, how = _best(report, theirs, model, protocol)
        if not mine or not other:
            rows.append([what, "-", "-", f">= {floor}", "not measured"])
            continue
        ratio = mine / other
        verdict = "hit" if ratio >= floor else "MISS"
        rows.append(
            [what, f"{mine:,.1f} / {other:,.1f} ({how})", f"{ratio:.2f}", f">= {floor}", verdict]
        )
    return rows


def _points_table(report: dict[str, Any], model: str) -> str:
    levels = sorted({p["concurrency"] for p in report["points"]})
    header = ["server", "variant", "protocol"]
    for level in levels:
        header += [f"c={level} req/s", "p50 ms", "p99 ms"]
    header += ["CPU ms/req (max c)", "client cores", "errors"]
    groups: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for point in report["points"]:
        if point["model"] == model:
            key = (point["server"], point["variant"], point["protocol"])
            groups.setdefault(key, {})[point["concurrency"]] = point
    rows = []
    for (server, variant, protocol), by_level in groups.items():
        row = [server, variant, protocol]
        for level in levels:
            point = by_level.get(level)
            if point is None:
                row += ["-", "-", "-"]
            elif point["failure"]:
                row += ["failed", "-", "-"]
            else:
                row += [f"{point['rps']:,.1f}", f"{point['p50_ms']:.2f}", f"{point['p99_ms']:.1f}"]
        top = by_level[max(by_level)]
        client = f"{top['client_cpu']:.2f}" + (
            f" ({top['client_processes']} proc)" if top["client_processes"] > 1 else ""
        )
        errors = sum(p["errors"] for p in by_level.values())
        row += [f"{top['server_cpu_ms']:.3f}", client, str(errors)]
        rows.append(row)
    return markdown_table(header, rows)


def _limit_table(report: dict[str, Any]) -> str:
    rows = []
    for limit in report["limits_measured"]:
        per_batch = [f"{limit['per_batch'][str(b)]:,.1f}" for b in (1, 2, 4, 8, 16)]
        side = f"{limit['side_by_side']:,.1f}"
        rows.append([limit["model"], limit["when"], *per_batch, side, f"{limit['best']:,.1f}"])
    header = ["model", "when", "b=1", "b=2", "b=4", "b=8", "b=16", "b=1, 2x1 thread", "best"]
    return markdown_table(header, rows)


def _mib(entry: dict[str, Any], when: str, key: str) -> str:
    return f"{entry[when][key]:,.0f}" if when in entry else "-"


def _memory_table(report: dict[str, Any]) -> str:
    rows = []
    for entry in report["memory"]:
        processes = entry.get("after_load", entry.get("ready", {})).get("processes", "-")
        rows.append(
            [
                entry["server"],
                entry["variant"],
                entry.get("load", "?"),
                str(processes),
                _mib(entry, "ready", "rss_mib"),
                _mib(entry, "ready", "pss_mib"),
                _mib(entry, "after_load", "rss_mib"),
                _mib(entry, "after_load", "pss_mib"),
            ]
        )
    header = [
        "server",
        "variant",
        "load 1 min",
        "processes",
        "RSS ready",
        "PSS ready",
        "RSS after",
        "PSS after",
    ]
    return markdown_table(header, rows)


def render(report: dict[str, Any]) -> str:
    facts = dict(report["facts"])
    lines = [
        f"Run {report['date']}: `{report['command']}` "
        f"({report['durations'][0]:.0f} s per point after a {report['durations'][1]:.0f} s "
        f"warm-up per server, model and protocol; {report['wall_seconds'] / 60:.1f} min in all).",
        "",
        f"- machine: {facts.get('cpus')}, {facts.get('memory')}, {facts.get('os')}, "
        f"{facts.get('python')}",
        f"- load average (1/5/15 min) before: {report['load_before']}; after: "
        f"{report['load_after']}",
        "- modelport side: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- MLServer venv: {report['mlserver_versions']}",
        "",
        "In-process onnxruntime limit (inferences/s; one session on all cores per batch size, "
        "and one 1-thread session per core side by side):",
        "",
        _limit_table(report),
    ]
    for model, title in (("iris", "Tiny model (iris LogisticRegression)"), ("cnn", "CNN")):
        if any(p["model"] == model for p in report["points"]):
            lines += ["", f"{title}:", "", _points_table(report, model)]
    lines += [
        "",
        "Targets (concurrency 32; MLServer is its best variant at that point):",
        "",
        markdown_table(["target", "req/s (ours / theirs)", "ratio", "needed", ""], targets(report)),
        "",
        "Memory of each server's process tree, MiB (RSS summed over processes counts shared "
        "pages once per process; PSS splits them):",
        "",
        _memory_table(report),
    ]
    failures = [p for p in report["points"] if p["failure"]]
    failures += [m for m in report["memory"] if "failure" in m]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- {f.get('server')} {f.get('variant')}: {f.get('failure')}" for f in failures]
    return "\n".join(lines)

"""Serving settings: server-wide limits and per-model batching, instances, response cache
and timeouts.

CLI flags cover the common case; a TOML file (``modelport serve --config serve.toml``) sets
anything per model::

    [server]
    http_port = 8000
    grpc_port = 8001
    max_models = 4
    memory_budget = "8GiB"    # per worker process
    workers = 2               # processes sharing the ports (both cores for small models)
    max_request_bytes = "128MiB"   # REST bodies; JSON ones stop at max_json_bytes (32MiB)
    max_upload_bytes = "64GiB"     # one file pushed over the registry API (streamed to disk)
    keep_alive_timeout = 75   # seconds; above a load balancer's idle timeout
    http_wrappers = ["mypackage.audit:wrap"]          # ASGI middleware factories, outermost first
    grpc_interceptors = ["mypackage.audit:Interceptor"]  # each makes a grpc.aio.ServerInterceptor

    [defaults]            # applies to every model unless it says otherwise
    max_batch_size = 32
    max_batch_bytes = "4MiB"   # a batch of large inputs stops growing here

    [models.iris]
    ref = "iris@production"
    instances = 2
    response_cache_size = 10000   # (also read as cache_size)

    [models.resnet]
    ref = "resnet@2"
    traffic = { "2" = 90, "3" = 10 }   # canary: 10% of unversioned requests go to @3
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelport.errors import InvalidInput
from modelport.types import ModelRef

__all__ = [
    "ModelEntry",
    "ModelServeConfig",
    "ServeConfig",
    "load_config",
    "parse_bytes",
    "with_stored_settings",
]

_UNITS = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", start=1):
    _UNITS[_prefix] = _UNITS[_prefix + "b"] = 1000**_power
    _UNITS[_prefix + "ib"] = 1024**_power


def parse_bytes(value: str | int) -> int:
    """``8GiB``, ``512MB``, ``1e9`` or an int, in bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise InvalidInput(f"{value!r} is not a size; use e.g. 512MiB, 8GiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[unit])


class ModelServeConfig(BaseModel):
    """How one model is served."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=0, description="0 turns dynamic batching off.")
    # 4 MiB holds six 224x224 RGB FP32 images: for such a CNN on 2 cores, batches capped
    # there served as many requests/s as batches of 32 with 113 MiB less memory after load
    # (bench/RESULTS.md); small rows (tabular, text) never reach it.
    max_batch_bytes: int = Field(
        4 * 2**20,
        ge=0,
        description="Input bytes one merged batch may hold; 0: no limit. A request over it "
        "still runs, alone.",
    )
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        description="How long a batch may wait to grow while an instance is idle. "
        "0: dispatch at once; batches still grow while every instance is busy.",
    )
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    instances: int = Field(
        0,
        ge=0,
        description="Batches run in parallel on this many instances (threads of one process); "
        "0: one per CPU core (up to 4).",
    )
    threads: int = Field(
        0,
        ge=0,
        description="Threads inside one inference; 0: 1 when several instances run, else the "
        "runtime's default.",
    )
    solo_threads: int | None = Field(
        None,
        ge=0,
        description="Threads for a single-row inference that runs while no other one does "
        "(ONNX models whose weights are shared: a second session maps them); 0: none. "
        "Unset: every core when several single-threaded instances run, else none.",
    )

    @field_validator("max_batch_bytes", mode="before")
    @classmethod
    def _batch_bytes(cls, value: Any) -> Any:
        return parse_bytes(value) if isinstance(value, str) else value

    def instance_count(self) -> int:
        """Instances to run: independent single-threaded streams keep every core busy with
        less contention than one stream with many threads (measured: bench/RESULTS.md)."""
        return self.instances or max(1, min(4, os.cpu_count() or 1))

    def thread_count(self) -> int:
        """Threads per inference; 0 lets the runtime choose."""
        if self.threads:
            return self.threads
        return 1 if self.instance_count() > 1 else 0

    def solo_thread_count(self) -> int:
        """Threads for an inference that runs alone; 0: the same as every inference.

        By default a lone request gets every core and concurrent ones one core each, both
        ends at their best without tuning: on 2 cores lone MiniLM requests answered 1.7x
        faster (as fast as a bare two-thread endpoint) and load served no less
        (docs/performance.md). Explicit threads per inference turn it off.
        """
        if self.solo_threads is not None:
            return self.solo_threads
        if self.threads or self.instance_count() < 2:
            return 0
        return os.cpu_count() or 1

    max_queue_size: int = Field(256, ge=1, description="Requests waiting; more get 503.")
    timeout_ms: float = Field(30_000, gt=0, description="Per-request deadline, queue included.")
    response_cache_size: int = Field(
        0,
        ge=0,
        # cache_size: its name before "cache" also meant derived files and the checkout
        validation_alias=AliasChoices("response_cache_size", "cache_size"),
        description="Response cache entries; 0 turns it off. Also read as cache_size.",
    )
    warmup: bool = True
    inline_below_us: float = Field(
        150.0,
        ge=0,
        description="Run a small request on the event loop when the model's measured cost is "
        "below this: a thread hand-off would cost more than the inference. 0 turns it off.",
    )


class ModelEntry(ModelServeConfig):
    """A model entry of the config file: what to serve under which name."""

    ref: str
    traffic: dict[int, float] = Field(default_factory=dict)

    @field_validator("ref")
    @classmethod
    def _valid_ref(cls, value: str) -> str:
        ModelRef.parse(value)
        return value


class ServeConfig(BaseModel):
    """Everything ``modelport serve`` needs."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(8001, ge=0, le=65535, description="None: no gRPC server.")
    # Request limits a 2-core container with a few GB survives. Peak resident memory above
    # an idle server while it handles one request (measured with modelport serve, 2026-12):
    # binary FP32 2x the body, a BYTES element 6x, gRPC raw FP32 4x, JSON 11x. At these
    # limits one request costs 0.25-0.8 GiB (binary, BYTES, gRPC) or 0.35 GiB (JSON); at the
    # old 256/512 MiB a 256 MiB gRPC message took 1.1 GiB and 60 MiB of JSON 0.65 GiB.
    max_request_bytes: int = Field(
        128 * 2**20, gt=0, description="REST request body, as sent and once inflated; more: 413."
    )
    max_json_bytes: int = Field(
        32 * 2**20,
        gt=0,
        description="A JSON request body (TF Serving, V2 without binary data), as sent and "
        "once inflated; more: 413. Decoding JSON takes ~11 times its size in memory.",
    )
    max_upload_bytes: int = Field(
        64 * 2**30,
        gt=0,
        description="One file pushed over the registry API (streamed to disk, never held in "
        "memory); more: 413.",
    )
    grpc_max_message_bytes: int = Field(
        128 * 2**20, gt=0, le=2**31 - 1, description="gRPC message, either way (grpc: < 2 GiB)."
    )
    grpc_max_pending_calls: int = Field(
        16384,
        ge=1,
        description="gRPC calls received but not yet taken up by the server; past this, grpc "
        "itself cancels new calls (CANCELLED). Taken-up calls past max_concurrency get "
        "RESOURCE_EXHAUSTED. Each waiting call holds ~10 KiB.",
    )
    max_concurrency: int = Field(1024, ge=1, description="Requests in flight; more get 503.")
    max_connections: int = Field(
        2048, ge=1, description="Open REST connections; a request on one more gets 503."
    )
    keep_alive_timeout: int = Field(
        5, ge=1, description="Seconds a REST connection may sit idle (no request under way)."
    )
    head_timeout: float = Field(
        10.0, gt=0, description="Seconds to receive a whole request line and headers; then 408."
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request body may make no progress; then 408."
    )
    max_header_bytes: int = Field(
        64 * 2**10, ge=1024, description="Request line and headers; more: 431."
    )
    max_models: int | None = Field(None, ge=1)
    memory_budget: int | None = Field(None, gt=0)
    watch_interval: float | None = Field(None, gt=0, description="Seconds between alias checks.")
    drain_seconds: float = Field(30.0, ge=0)
    workers: int = Field(
        1,
        ge=0,
        description="Server processes sharing the ports, each with every model; 0: one per "
        "CPU core. ONNX weights are mmapped, so workers share one copy of most of them.",
    )
    http_wrappers: list[str] = Field(
        default_factory=list,
        description="ASGI middleware factories ('module:name'), outermost first: each is "
        "given the app and returns the app that wraps it; every REST request passes them.",
    )
    grpc_interceptors: list[str] = Field(
        default_factory=list,
        description="Zero-argument callables ('module:name') that each make a "
        "grpc.aio.ServerInterceptor, outermost first; every RPC passes them.",
    )
    auth: bool | None = Field(
        None,
        description="Require an API key on every route and RPC but plain liveness. None: on "
        "whenever host is not a loopback address, off on loopback.",
    )
    insecure: bool = Field(
        False,
        description="Allow a non-loopback address with auth off or with no keys (--insecure).",
    )
    auth_failures_per_minute: int = Field(
        10,
        ge=1,
        description="Failed authentications one client address may make in a minute; past "
        "that it gets 429 until the minute is over.",
    )
    tls_cert: Path | None = Field(None, description="Server certificate (PEM), REST and gRPC.")
    tls_key: Path | None = Field(None, description="Private key (PEM) of tls_cert.")
    tls_client_ca: Path | None = Field(
        None, description="CA (PEM) client certificates must be signed by (mTLS)."
    )
    defaults: ModelServeConfig = Field(default_factory=ModelServeConfig)
    models: dict[str, ModelEntry] = Field(default_factory=dict)

    @field_validator(
        "memory_budget",
        "max_request_bytes",
        "max_json_bytes",
        "max_upload_bytes",
        "grpc_max_message_bytes",
        "max_header_bytes",
        mode="before",
    )
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_bytes(value) if isinstance(value, str) else value

    @field_validator("http_wrappers", "grpc_interceptors")
    @classmethod
    def _import_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not re.fullmatch(r"[\w.]+:[\w.]+", path):
                raise ValueError(f"{path!r} is not an import path; write 'module:name'")
        return paths

    def json_limit(self) -> int:
        """Bytes a JSON request body may take: ``max_json_bytes`` within ``max_request_bytes``."""
        return min(self.max_json_bytes, self.max_request_bytes)

    def process_count(self) -> int:
        """Worker processes to run (``workers``, with 0 meaning one per CPU core)."""
        return self.workers or max(1, os.cpu_count() or 1)

    def model_settings(self, name: str) -> ModelServeConfig:
        """The settings for model ``name``: its own entry, else the defaults."""
        entry = self.models.get(name)
        if entry is None:
            return self.defaults
        # Only what the file (or a flag) set counts as set: settings stored on a version
        # fill the rest (``with_stored_settings``).
        return ModelServeConfig(**entry.model_dump(exclude={"ref", "traffic"}, exclude_unset=True))


def with_stored_settings(
    config: ModelServeConfig, stored: dict[str, Any]
) -> tuple[ModelServeConfig, dict[str, Any]]:
    """``config`` with the settings stored on a version (``modelport tune``) filling what
    neither flags nor the config file set, and the stored settings that were applied.

    Stored settings this version of modelport does not know, or that are no longer valid,
    are ignored: they were measured, never required.
    """
    known = ModelServeConfig.model_fields
    applied = {
        key: value
        for key, value in stored.items()
        if key in known and key not in config.model_fields_set
    }
    if not applied:
        return config, {}
    try:
        merged = ModelServeConfig.model_validate(
            {**config.model_dump(exclude_unset=True), **applied}
        )
    except ValidationError:
        return config, {}
    return merged, applied


def load_config(path: Path) -> ServeConfig:
    """Read a serve TOML file; errors name the key that is wrong."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: invalid TOML ({exc})") from None
    data: dict[str, Any] = dict(raw.pop("server", {}))
    defaults = raw.pop("defaults", {})
    models = raw.pop("models", {})
    if raw:
        raise InvalidInput(
            f"{path}: unknown section(s) {', '.join(sorted(raw))}; use server, defaults, models"
        )
    merged = {name: {"ref": name, **defaults, **entry} for name, entry in models.items()}
    try:
        return ServeConfig.model_validate({**data, "defaults": defaults, "models": merged})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"{path}: {where}: {first['msg']}") from None

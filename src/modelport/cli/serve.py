"""``modelport serve``: flags for the common case, a TOML file for per-model settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from modelport.config import load_settings
from modelport.errors import InvalidInput
from modelport.registry import Registry

# Settings whose flag is not the setting's name with dashes.
_FLAGS = {
    "max_request_bytes": "max-request-size",
    "max_json_bytes": "max-json-size",
    "grpc_max_message_bytes": "grpc-max-message-size",
}


def serve(
    refs: Annotated[
        list[str] | None, typer.Argument(help="Models to serve: iris@production resnet@2 …")
    ] = None,
    # None, not the address: a default here would override `host` from --config.
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to bind; 0.0.0.0 to listen on every interface [default: 127.0.0.1]."
        ),
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help="REST port [default: 8000].")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option("--grpc-port", help="gRPC port [default: 8001].")
    ] = None,
    no_grpc: Annotated[bool, typer.Option("--no-grpc", help="Serve REST only.")] = False,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML file with per-model settings.")
    ] = None,
    aliased: Annotated[
        str | None, typer.Option("--aliased", help="Serve every model that has this alias.")
    ] = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Follow aliases that move in the registry (zero-downtime)."),
    ] = False,
    watch_interval: Annotated[
        float, typer.Option("--watch-interval", help="Seconds between alias checks with --watch.")
    ] = 2.0,
    max_models: Annotated[
        int | None, typer.Option("--max-models", help="Most models loaded at once (LRU).")
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--memory-budget", help="e.g. 8GiB: unload least recently used models past it."
        ),
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option("--max-batch-size", help="0 turns batching off.")
    ] = None,
    max_batch_bytes: Annotated[
        str | None,
        typer.Option("--max-batch-bytes", help="e.g. 8MiB: input bytes in one batch; 0: any."),
    ] = None,
    max_queue_delay_ms: Annotated[float | None, typer.Option("--max-queue-delay-ms")] = None,
    instances: Annotated[
        int | None, typer.Option("--instances", help="Parallel inference instances per model.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Threads inside one inference.")
    ] = None,
    solo_threads: Annotated[
        int | None,
        typer.Option(
            "--solo-threads",
            help="Threads for an inference that runs alone (ONNX, a second session); 0: off.",
        ),
    ] = None,
    max_queue_size: Annotated[
        int | None, typer.Option("--max-queue-size", help="Waiting requests per model before 503.")
    ] = None,
    timeout_ms: Annotated[
        float | None, typer.Option("--timeout-ms", help="Per-request deadline.")
    ] = None,
    response_cache_size: Annotated[
        int | None,
        typer.Option(
            "--response-cache-size", "--cache-size", help="Response cache entries per model."
        ),
    ] = None,
    max_request_size: Annotated[
        str | None,
        typer.Option("--max-request-size", help="REST body limit, e.g. 256MiB [default: 128MiB]."),
    ] = None,
    max_json_size: Annotated[
        str | None,
        typer.Option(
            "--max-json-size", help="JSON body limit (within --max-request-size) [default: 32MiB]."
        ),
    ] = None,
    grpc_max_message_size: Annotated[
        str | None,
        typer.Option("--grpc-max-message-size", help="gRPC message limit [default: 128MiB]."),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option("--max-connections", help="Open REST connections before 503 [default: 2048]."),
    ] = None,
    keep_alive_timeout: Annotated[
        int | None,
        typer.Option(
            "--keep-alive-timeout",
            help="Seconds an idle REST connection stays open; above a load balancer's idle "
            "timeout [default: 5].",
        ),
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="Requests in flight before 503.")
    ] = None,
    # -- auth (keys, exposure policy) --
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="Require an API key on every route and RPC but liveness [default: on unless "
            "the host is loopback].",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve a non-loopback address with --no-auth, or with no API key created.",
        ),
    ] = False,
    # -- end auth --
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Server processes sharing the ports (every model in each; ONNX weights "
            "shared); 0: one per CPU core [default: 1].",
        ),
    ] = None,
    # -- TLS (docs/tls.md) --------------------------------------------------------------------
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", help="Serve REST and gRPC over TLS: the certificate (PEM)."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="The private key (PEM) of --tls-cert.")
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-client-ca",
            help="Require client certificates signed by this CA (PEM) on both ports (mTLS).",
        ),
    ] = None,
) -> None:
    """Serve models over the Open Inference Protocol (REST and gRPC) and TF Serving's REST API."""
    from modelport.serving.config import ServeConfig, load_config, parse_bytes
    from modelport.serving.server import run

    config = load_config(config_file) if config_file else ServeConfig()
    server: dict[str, Any] = {
        "host": host,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "watch_interval": watch_interval if watch else None,
        "max_models": max_models,
        "memory_budget": parse_bytes(memory_budget) if memory_budget else None,
        "max_request_bytes": parse_bytes(max_request_size) if max_request_size else None,
        "max_json_bytes": parse_bytes(max_json_size) if max_json_size else None,
        "grpc_max_message_bytes": (
            parse_bytes(grpc_max_message_size) if grpc_max_message_size else None
        ),
        "max_connections": max_connections,
        "keep_alive_timeout": keep_alive_timeout,
        "max_concurrency": max_concurrency,
        "workers": workers,
        "auth": auth,
        "insecure": insecure or None,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "tls_client_ca": tls_client_ca,
    }
    updates = {k: v for k, v in server.items() if v is not None}
    if no_grpc:
        updates["grpc_port"] = None
    per_model = {
        "max_batch_size": max_batch_size,
        "max_batch_bytes": parse_bytes(max_batch_bytes) if max_batch_bytes else None,
        "max_queue_delay_ms": max_queue_delay_ms,
        "instances": instances,
        "threads": threads,
        "solo_threads": solo_threads,
        "max_queue_size": max_queue_size,
        "timeout_ms": timeout_ms,
        "response_cache_size": response_cache_size,
    }
    model_updates = {k: v for k, v in per_model.items() if v is not None}
    try:
        config = ServeConfig.model_validate(
            {
                **config.model_dump(),
                **updates,
                # exclude_unset: what was set (a flag, the file) overrides settings stored
                # on a version; what was not, they may fill
                "defaults": {**config.defaults.model_dump(exclude_unset=True), **model_updates},
                "models": {
                    name: {**entry.model_dump(exclude_unset=True), **model_updates}
                    for name, entry in config.models.items()
                },
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][-1])
        raise InvalidInput(
            f"--{_FLAGS.get(field, field.replace('_', '-'))}: {first['msg']}"
        ) from None
    if config.tls_cert is not None:
        # grpc core logs every failed TLS handshake at INFO, so any client could fill the
        # log with them; read when grpc is first imported, so set before the server does.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    registry = Registry(load_settings())
    try:
        run(registry, config, refs or [], aliased)
    finally:
        registry.close()

"""Open Inference Protocol (KServe V2) over gRPC: ``inference.GRPCInferenceService``.

Wire-compatible with Triton's service, so ``tritonclient.grpc`` and other V2 clients work
unchanged; includes the model repository extension and Triton's ModelConfig. Translates
messages <-> ``Tensors`` and calls the ``ModelManager``; an error aborts the call with its
class's ``grpc_status`` and the trailing metadata ``("modelport-error", code)``. Tensors
come as typed ``contents`` or as ``raw_input_contents`` (what tritonclient sends); outputs
always go back as ``raw_output_contents``, as Triton sends them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from modelport import __version__
from modelport._generated import grpc_predict_v2_pb2 as pb
from modelport._generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelport.errors import (
    Internal,
    InvalidInput,
    ModelportError,
    Unavailable,
)
from modelport.protocols.v2.codec import check_id
from modelport.protocols.v2.messages import (
    as_message,
    decoding_may_stall,
    infer_response,
    request_inputs,
    requested_outputs,
)
from modelport.protocols.v2.metadata import EXTENSIONS
from modelport.serving.config import ServeConfig
from modelport.serving.deployment import State
from modelport.serving.description import metadata, triton_config
from modelport.serving.manager import ModelManager
from modelport.serving.repository_audit import grpc_caller, recorded
from modelport.serving.tls import ServerTls

__all__ = ["ERROR_METADATA", "InferenceServicer", "abort", "start_grpc_server", "status_of"]

log = logging.getLogger(__name__)

PROTOCOL = "grpc_v2"

ERROR_METADATA = "modelport-error"
"""The trailing metadata key whose value is the error's stable ``code`` (the wire contract)."""


def status_of(error: ModelportError) -> grpc.StatusCode:
    """The gRPC status for ``error``: its class's ``grpc_status``.

    A full queue or too many requests in flight is RESOURCE_EXHAUSTED, not UNAVAILABLE, so
    that clients can tell "back off" from "not there".
    """
    return _STATUS_CODES[error.grpc_status]


_STATUS_CODES = {code.name: code for code in grpc.StatusCode}


async def abort(context: Any, error: ModelportError) -> None:
    """End the call with ``error``'s status, message and code (raises, as ``abort`` does)."""
    await context.abort(
        status_of(error), error.message, trailing_metadata=((ERROR_METADATA, error.code),)
    )


INTERNAL_ERROR = "internal error; see the server log"

Handler = Callable[[Any, Any, Any], Awaitable[Any]]


def _edge(method: Handler) -> Handler:
    """Abort the call with the mapped status, the error's message and its code."""

    @functools.wraps(method)
    async def handle(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except ModelportError as exc:
            await abort(context, exc)
        except Exception:
            log.exception("gRPC %s failed", method.__name__)
            await abort(context, Internal(INTERNAL_ERROR))

    return handle


class InferenceServicer:
    """``inference.GRPCInferenceService`` over one ``ModelManager``. Runs on its event loop."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    @_edge
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - RPC names
        return pb.ServerLiveResponse(live=True)

    @_edge
    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.manager.ready())

    @_edge
    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        deployment = await self.manager.deployment(request.name, request.version)
        served = self.manager.served(deployment.name)
        return pb.ModelReadyResponse(ready=served.enabled and deployment.state is State.READY)

    @_edge
    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(
            name="modelport", version=__version__, extensions=EXTENSIONS
        )

    @_edge
    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        deployment = await self.manager.deployment(request.name, request.version)
        return as_message(pb.ModelMetadataResponse, metadata(self.manager, deployment))

    @_edge
    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        deployment = await self.manager.deployment(request.name, request.version)
        return pb.ModelConfigResponse(config=as_message(pb.ModelConfig, triton_config(deployment)))

    @_edge
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        request_id = check_id(request.id)
        # Raw inputs are judged by the addressed version's signature before they are
        # decoded; ``infer`` validates every tensor for the version it runs.
        deployment = await self.manager.deployment(request.model_name, request.model_version)
        if decoding_may_stall(request):
            inputs = await asyncio.to_thread(request_inputs, request, deployment.signature)
        else:
            inputs = request_inputs(request, deployment.signature)
        outputs = requested_outputs(request)
        result, deployment = await self.manager.infer(
            request.model_name,
            request.model_version,
            inputs,
            outputs,
            PROTOCOL,
            timeout=_timeout(request, context),
        )
        # Request parameters are options for this server, not data: never echoed.
        return infer_response(deployment.name, str(deployment.version), request_id, result)

    @_edge
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        rows = [r for r in self.manager.index() if not request.ready or r["state"] == "READY"]
        return pb.RepositoryIndexResponse(
            models=[as_message(pb.RepositoryIndexResponse.ModelIndex, row) for row in rows]
        )

    @_edge
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        _refuse_parameters(request, "load")
        name, caller = request.model_name, grpc_caller(context)
        async with recorded(self.manager.registry, "model.load", name, caller) as detail:
            detail["version"] = (await self.manager.load(name)).version
        return pb.RepositoryModelLoadResponse()

    @_edge
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        # tritonclient always sends unload_dependents; modelport models have no dependents.
        _refuse_parameters(request, "unload", accepted={"unload_dependents"})
        name, caller = request.model_name, grpc_caller(context)
        async with recorded(self.manager.registry, "model.unload", name, caller):
            await self.manager.unload(name)
        return pb.RepositoryModelUnloadResponse()


async def start_grpc_server(
    manager: ModelManager,
    config: ServeConfig,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: ServerTls | None = None,
) -> grpc.aio.Server:
    """Serve ``inference.GRPCInferenceService`` on ``config.host:config.grpc_port``, over TLS
    (and mTLS) when ``tls`` is given.

    ``interceptors`` (``pipeline.server_interceptors``, the first outermost) see every RPC.

    Messages up to ``config.grpc_max_message_bytes`` pass both ways (grpcio's own default is
    4 MB). Overload is answered RESOURCE_EXHAUSTED by the manager (``max_concurrency``, a full
    queue), which needs the calls to reach it: see ``grpc_max_pending_calls``. Returns the
    started server; stop it with ``await server.stop(grace)``.

    Raises:
        Unavailable: the address cannot be bound (port in use, not allowed).
    """
    limit = config.grpc_max_message_bytes
    # grpc core queues calls that arrive before the server's event loop has asked for the
    # next one; past 1,000 of them it cancels new calls at random, and past 3,000 all of
    # them (CANCELLED, never seen by the server, nothing logged): 20-33% of 3,000
    # concurrent calls failed so. A longer queue lets them reach the manager, which answers
    # each (RESOURCE_EXHAUSTED when over its limits). Equal soft and hard limits: no random
    # early drop. grpc.aio's own ``maximum_concurrent_rpcs`` would not help: past it, the
    # server stops asking for calls instead of refusing them, so this queue fills faster.
    pending = config.grpc_max_pending_calls
    server = grpc.aio.server(
        # None, not []: no interceptor machinery on any call when there is none.
        interceptors=list(interceptors) or None,
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.server.max_pending_requests", pending),
            ("grpc.server.max_pending_requests_hard_limit", pending),
            # Without this a second server on a busy port binds "successfully" and steals
            # half the connections; a port in use must be an error. Worker processes of one
            # server share the port on purpose: their supervisor checked it was free first.
            ("grpc.so_reuseport", 1 if config.process_count() > 1 else 0),
        ],
    )
    servicer = InferenceServicer(manager)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    address = f"{config.host}:{config.grpc_port}"
    try:
        if tls is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, tls.grpc_credentials())
    except RuntimeError:
        raise Unavailable(
            f"cannot listen for gRPC on {address}: the port is in use or not allowed; "
            "choose another with --grpc-port, or turn gRPC off with --no-grpc"
        ) from None
    await server.start()
    return server


def _timeout(request: Any, context: Any) -> float | None:
    """The earlier of the call's deadline and its ``timeout`` parameter (microseconds, as
    Triton's clients send it), in seconds; ``None`` when the client set neither."""
    limits = []
    remaining = context.time_remaining()
    if remaining is not None:
        limits.append(remaining)
    if "timeout" in request.parameters:
        parameter = request.parameters["timeout"]
        if parameter.WhichOneof("parameter_choice") != "int64_param" or parameter.int64_param < 0:
            raise InvalidInput("parameter 'timeout' must be an int64 number of microseconds")
        limits.append(parameter.int64_param / 1_000_000)
    return min(limits) if limits else None


def _refuse_parameters(request: Any, action: str, accepted: set[str] | None = None) -> None:
    unknown = set(request.parameters) - (accepted or set())
    if unknown:
        given = ", ".join(sorted(unknown))
        raise InvalidInput(
            f"{action} parameters ({given}) are not supported: modelport {action}s models "
            "from its registry as they were pushed"
        )

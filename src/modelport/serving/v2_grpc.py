"""Open Inference Protocol (KServe V2) over gRPC: ``inference.GRPCInferenceService``.

Wire-compatible with Triton's service, so ``tritonclient.grpc`` and other V2 clients work
unchanged; includes the model repository extension and Triton's ModelConfig. Translates
messages <-> ``Tensors`` and calls the ``ModelManager``; errors map to status codes once, in
``STATUS``. Tensors come as typed ``contents`` or as ``raw_input_contents`` (what tritonclient
sends); outputs always go back as ``raw_output_contents``, as Triton sends them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from modelport import __version__
from modelport._generated import grpc_predict_v2_pb2 as pb
from modelport._generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelport.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    ModelportError,
    NotFound,
    Overloaded,
    Timeout,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
)
from modelport.protocols.v2.codec import (
    OFF_LOOP_BYTES,
    array_from_raw,
    check_declared,
    check_id,
    check_shape,
    raw_bytes,
)
from modelport.protocols.v2.metadata import EXTENSIONS
from modelport.serving.config import ServeConfig
from modelport.serving.deployment import State
from modelport.serving.description import metadata, triton_config
from modelport.serving.manager import ModelManager
from modelport.types import DataType, Signature, Tensors

__all__ = ["STATUS", "InferenceServicer", "start_grpc_server", "status_of"]

log = logging.getLogger(__name__)

PROTOCOL = "grpc_v2"

STATUS: dict[type[ModelportError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnsupportedFormat: grpc.StatusCode.UNIMPLEMENTED,
    Timeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
}


def status_of(error: ModelportError) -> grpc.StatusCode:
    """The gRPC status for ``error``: the nearest class in ``STATUS``, else INTERNAL.

    A full queue or too many requests in flight is RESOURCE_EXHAUSTED, not UNAVAILABLE, so
    that clients can tell "back off" from "not there".
    """
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


Handler = Callable[[Any, Any, Any], Awaitable[Any]]


def _edge(method: Handler) -> Handler:
    """Abort the call with the mapped status and the error's message."""

    @functools.wraps(method)
    async def handle(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except ModelportError as exc:
            await context.abort(status_of(exc), exc.message)
        except Exception:
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

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
        return _message(pb.ModelMetadataResponse, metadata(self.manager, deployment))

    @_edge
    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        deployment = await self.manager.deployment(request.name, request.version)
        return pb.ModelConfigResponse(config=_message(pb.ModelConfig, triton_config(deployment)))

    @_edge
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        request_id = check_id(request.id)
        # Raw inputs are judged by the addressed version's signature before they are
        # decoded; ``infer`` validates every tensor for the version it runs.
        deployment = await self.manager.deployment(request.model_name, request.model_version)
        if _decoding_may_stall(request):
            inputs = await asyncio.to_thread(_inputs, request, deployment.signature)
        else:
            inputs = _inputs(request, deployment.signature)
        outputs = _requested_outputs(request)
        result, deployment = await self.manager.infer(
            request.model_name,
            request.model_version,
            inputs,
            outputs,
            PROTOCOL,
            timeout=_timeout(request, context),
        )
        # Request parameters are options for this server, not data: never echoed.
        response = pb.ModelInferResponse(
            model_name=deployment.name, model_version=str(deployment.version), id=request_id
        )
        for name, array in result.items():
            datatype = DataType.from_numpy(array.dtype)
            response.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
            response.raw_output_contents.append(raw_bytes(array))
        return response

    @_edge
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        rows = [r for r in self.manager.index() if not request.ready or r["state"] == "READY"]
        return pb.RepositoryIndexResponse(
            models=[_message(pb.RepositoryIndexResponse.ModelIndex, row) for row in rows]
        )

    @_edge
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        _refuse_parameters(request, "load")
        await self.manager.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_edge
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        # tritonclient always sends unload_dependents; modelport models have no dependents.
        _refuse_parameters(request, "unload", accepted={"unload_dependents"})
        await self.manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


async def start_grpc_server(manager: ModelManager, config: ServeConfig) -> grpc.aio.Server:
    """Serve ``inference.GRPCInferenceService`` on ``config.host:config.grpc_port``.

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
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.server.max_pending_requests", pending),
            ("grpc.server.max_pending_requests_hard_limit", pending),
            # Without this a second server on a busy port binds "successfully" and steals
            # half the connections; a port in use must be an error. Worker processes of one
            # server share the port on purpose: their supervisor checked it was free first.
            ("grpc.so_reuseport", 1 if config.process_count() > 1 else 0),
        ]
    )
    servicer = InferenceServicer(manager)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    address = f"{config.host}:{config.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError:
        raise Unavailable(
            f"cannot listen for gRPC on {address}: the port is in use or not allowed; "
            "choose another with --grpc-port, or turn gRPC off with --no-grpc"
        ) from None
    await server.start()
    return server


# -- requests -> Tensors ------------------------------------------------------------------

# Which typed field holds each datatype's data; FP16 has none and travels raw only.
_CONTENTS: dict[DataType, str] = {
    DataType.BOOL: "bool_contents", DataType.BYTES: "bytes_contents",
    DataType.UINT8: "uint_contents", DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents", DataType.UINT64: "uint64_contents",
    DataType.INT8: "int_contents", DataType.INT16: "int_contents",
    DataType.INT32: "int_contents", DataType.INT64: "int64_contents",
    DataType.FP32: "fp32_contents", DataType.FP64: "fp64_contents",
}  # fmt: skip


def _decoding_may_stall(request: Any) -> bool:
    """Whether decoding ``request`` may hold the event loop long: ``OFF_LOOP_BYTES`` or more
    of fixed-size data, or any BYTES, whose size only its contents tell.

    Judged from what the inputs declare: protobuf copies a ``bytes`` field on every access,
    and ``ByteSize()`` serializes the message (200 ms for 64 MiB), so the data is not looked at.
    A declaration that is wrong is refused by the decoding itself.
    """
    for tensor in request.inputs:
        itemsize = _ITEMSIZE.get(tensor.datatype)
        if itemsize == 0 or (itemsize and math.prod(tensor.shape) * itemsize >= OFF_LOOP_BYTES):
            return True
    return False


_ITEMSIZE = {datatype.value: datatype.itemsize for datatype in DataType}  # BYTES: 0


def _inputs(request: Any, signature: Signature) -> Tensors:
    """The request's tensors; raw ones checked against ``signature`` before they are decoded.
    Pure: runs in a worker thread for large requests."""
    raw = request.raw_input_contents
    if not request.inputs:
        raise InvalidInput("request has no inputs")
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in the order of 'inputs'"
        )
    inputs: Tensors = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        if "shared_memory_region" in tensor.parameters:
            raise InvalidInput(f"input {name!r}: shared memory is not supported; send the data")
        try:
            datatype = DataType.parse(tensor.datatype)
        except InvalidInput as exc:
            raise InvalidInput(f"input {name!r}: {exc}") from None
        shape = check_shape(name, list(tensor.shape))
        if not raw:
            inputs[name] = _from_contents(name, datatype, shape, tensor.contents)
        elif tensor.HasField("contents"):
            raise InvalidInput(
                f"input {name!r} has typed contents while the request uses raw_input_contents; "
                "send every input one way"
            )
        else:
            # Raw data costs its decoding whatever the model takes: judge what it claims
            # first. (Typed contents are decoded already; ``infer`` judges them.)
            check_declared(signature, name, datatype, shape)
            inputs[name] = array_from_raw(name, datatype, shape, raw[index])
    return inputs


def _from_contents(
    name: str, datatype: DataType, shape: tuple[int, ...], contents: Any
) -> npt.NDArray[Any]:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input {name!r}: {datatype.value} has no typed contents field; "
            "send it in raw_input_contents"
        )
    stray = [f.name for f, _ in contents.ListFields() if f.name != field]
    if stray:
        raise InvalidInput(
            f"input {name!r}: {datatype.value} data goes in {field}, not {', '.join(stray)}"
        )
    values = getattr(contents, field)
    expected = math.prod(shape)
    if len(values) != expected:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {expected} elements, "
            f"{field} has {len(values)}"
        )
    if datatype is DataType.BYTES:
        array = np.empty(expected, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=datatype.numpy).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(
            f"input {name!r}: {field} is not valid {datatype.value} ({exc})"
        ) from None


def _requested_outputs(request: Any) -> list[str] | None:
    names = []
    for output in request.outputs:
        for unsupported in ("shared_memory_region", "classification"):
            if unsupported in output.parameters:
                raise InvalidInput(
                    f"output {output.name!r}: {unsupported.replace('_', ' ')} is not supported; "
                    "request the output without it"
                )
        names.append(output.name)
    return names or None


def _message(cls: Any, fields: dict[str, Any]) -> Any:
    """A message from the dict the REST front-end answers with; keys it lacks are left out."""
    known = cls.DESCRIPTOR.fields_by_name
    return cls(**{key: value for key, value in fields.items() if key in known})


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

"""The client over gRPC: the V2 calls as ``inference.GRPCInferenceService`` RPCs (the stubs in
``_generated/``), on one channel (``grpc.aio`` for ``AsyncClient``).

Inputs travel as ``raw_input_contents``. Errors come back as the server mapped them: the
``modelport-error`` trailing metadata names the class; a status without it falls back to
the gRPC code. UNAVAILABLE and RESOURCE_EXHAUSTED are retried by the client; nothing else is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy.typing as npt

from modelport._generated import grpc_predict_v2_pb2 as pb
from modelport._generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelport.client.base import Call, Retry
from modelport.client.tls import ClientTls, untrusted
from modelport.errors import (
    Conflict,
    Forbidden,
    Internal,
    InvalidInput,
    ModelportError,
    NotFound,
    Overloaded,
    Timeout,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
    error_from_code,
)
from modelport.protocols.v2.messages import (
    index_entries,
    infer_request,
    model_metadata,
    read_response,
    server_metadata,
)
from modelport.protocols.v2.metadata import ModelMetadata, RepositoryEntry, ServerMetadata
from modelport.types import Tensors

__all__ = ["AsyncGrpcTransport", "GrpcApi", "GrpcTransport", "error_of"]

ERROR_METADATA = "modelport-error"

STATUS: dict[grpc.StatusCode, type[ModelportError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedFormat,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.UNAUTHENTICATED: Unauthorized,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
}
"""The class for a status that carries no ``modelport-error`` code; others are ``Internal``."""

# grpc core's words for a connection that failed (not the server's for a model it refuses).
_CONNECTION_FAILED = ("failed to connect", "Socket closed", "Connection reset", "Broken pipe")
# ... and for a TLS handshake that failed on the client's side: not worth retrying.
_TLS_FAILED = ("handshake failed", "Hostname Verification", "CERTIFICATE_VERIFY_FAILED")
_RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# No limit of the client's own: the server's grpc_max_message_bytes is the one that counts.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def error_of(
    code: grpc.StatusCode,
    details: str | None,
    trailing: Any,
    target: str,
    tls: ClientTls | None = None,
) -> Exception:
    """The error (or the ``Retry`` wrapping it) for a failed call on a channel with ``tls``
    (None: plaintext)."""
    message = details or code.name
    found = None
    for key, value in trailing or ():
        if key == ERROR_METADATA:
            found = value
    if found is not None:
        error = error_from_code(found, message)
    elif code is grpc.StatusCode.UNAVAILABLE and any(s in message for s in _TLS_FAILED):
        return untrusted(f"grpcs://{target}", _tls_reason(message))
    elif code is grpc.StatusCode.UNAVAILABLE and any(s in message for s in _CONNECTION_FAILED):
        error = Unavailable(
            f"cannot reach {target} over gRPC ({message}); is `modelport serve` running there?"
            + _closed_hint(tls)
        )
    else:
        error = STATUS.get(code, Internal)(message)
    return Retry(error) if code in _RETRIED else error


class GrpcApi:
    """The V2 calls as gRPC requests."""

    def server_live(self) -> Call[bool]:
        return Call("ServerLive", "", pb.ServerLiveRequest(), None, None, lambda m: bool(m.live))

    def server_ready(self) -> Call[bool]:
        return Call("ServerReady", "", pb.ServerReadyRequest(), None, None, lambda m: bool(m.ready))

    def model_ready(self, name: str, version: str) -> Call[bool]:
        request = pb.ModelReadyRequest(name=name, version=version)
        return Call("ModelReady", "", request, None, None, lambda m: bool(m.ready))

    def server_metadata(self) -> Call[ServerMetadata]:
        return Call("ServerMetadata", "", pb.ServerMetadataRequest(), None, None, server_metadata)

    def model_metadata(self, name: str, version: str) -> Call[ModelMetadata]:
        request = pb.ModelMetadataRequest(name=name, version=version)
        return Call("ModelMetadata", "", request, None, None, model_metadata)

    def index(self) -> Call[list[RepositoryEntry]]:
        return Call("RepositoryIndex", "", pb.RepositoryIndexRequest(), None, None, index_entries)

    def load(self, name: str) -> Call[None]:
        request = pb.RepositoryModelLoadRequest(model_name=name)
        return Call("RepositoryModelLoad", "", request, None, None, lambda m: None)

    def unload(self, name: str) -> Call[None]:
        request = pb.RepositoryModelUnloadRequest(model_name=name)
        return Call("RepositoryModelUnload", "", request, None, None, lambda m: None)

    def metrics(self) -> Call[str]:
        raise InvalidInput(
            "metrics are served over HTTP only (GET /metrics); ask a Client for the server's "
            "http:// URL instead, e.g. Client('http://127.0.0.1:8000').metrics()"
        )

    def infer(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        outputs: Sequence[str] | None,
        binary: bool,
        timeout: float | None,
    ) -> Call[Tensors]:
        # gRPC always sends raw contents: ``binary`` is a REST choice.
        request = infer_request(name, version, inputs, outputs)
        return Call("ModelInfer", "", request, None, timeout, _outputs)


def _outputs(message: Any) -> Tensors:
    return read_response(message).outputs


def _tls_reason(message: str) -> str:
    """grpc core's long handshake message, cut to its cause."""
    if "Hostname Verification" in message:
        return "the server's certificate does not name the host or address connected to"
    cause = message.rpartition("OPENSSL_internal:")[2].removesuffix(": OK") or message
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return f"the server's certificate is not trusted ({cause})"
    return f"no TLS handshake ({cause.split(':')[0]})"


def _closed_hint(tls: ClientTls | None) -> str:
    # A TLS server drops a plaintext channel, and an mTLS server a channel without the right
    # client certificate, with no word of why: the client sees "Socket closed".
    if tls is None:
        return " If it serves TLS (--tls-cert), use grpcs://."
    if tls.cert is None:
        return (
            " If it requires client certificates (--tls-client-ca), pass client_cert= and "
            "client_key=."
        )
    return " It may not accept this client certificate (signed by another CA?)."


def _channel(url: str, tls: ClientTls | None, asynchronous: bool) -> tuple[str, Any]:
    target = url.partition("://")[2].rstrip("/")
    module: Any = grpc.aio if asynchronous else grpc
    if tls is None:
        return target, module.insecure_channel(target, _CHANNEL_OPTIONS)
    credentials = tls.grpc_credentials()
    return target, module.secure_channel(target, credentials, _CHANNEL_OPTIONS)


def _metadata(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    return tuple((k.lower(), v) for k, v in headers.items()) if headers else None


class GrpcTransport:
    """Sends ``Call``s over one gRPC channel (TLS with ``tls``); safe to share between threads."""

    def __init__(
        self,
        url: str,
        timeout: float,
        headers: Mapping[str, str] | None,
        tls: ClientTls | None = None,
    ) -> None:
        self.timeout = timeout
        self._metadata = _metadata(headers)
        self._tls = tls
        self.target, self._channel = _channel(url, tls, asynchronous=False)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def send(self, call: Call[Any]) -> Any:
        timeout = self.timeout if call.timeout is None else call.timeout
        try:
            message = getattr(self._stub, call.method)(
                call.payload, timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_of(
                exc.code(), exc.details(), exc.trailing_metadata(), self.target, self._tls
            ) from None
        return call.read(message)

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcTransport:
    """Sends ``Call``s over one ``grpc.aio`` channel, on the event loop it was made on."""

    def __init__(
        self,
        url: str,
        timeout: float,
        headers: Mapping[str, str] | None,
        tls: ClientTls | None = None,
    ) -> None:
        self.timeout = timeout
        self._metadata = _metadata(headers)
        self._tls = tls
        self.target, self._channel = _channel(url, tls, asynchronous=True)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def send(self, call: Call[Any]) -> Any:
        timeout = self.timeout if call.timeout is None else call.timeout
        try:
            message = await getattr(self._stub, call.method)(
                call.payload, timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            trailing = exc.trailing_metadata()
            raise error_of(exc.code(), exc.details(), trailing, self.target, self._tls) from None
        return call.read(message)

    async def aclose(self) -> None:
        await self._channel.close()

"""The gRPC edge of auth: a ``grpc.aio.ServerInterceptor`` in front of every RPC.

The key comes from the metadata ``authorization: Bearer mp_...`` (what ``tritonclient``
sends with ``headers=``). Which model an RPC addresses is in its request message, so the
interceptor wraps the method's behaviour: a unary call is checked once, a streaming call
once per request message. A refusal ends the call UNAUTHENTICATED, PERMISSION_DENIED or
RESOURCE_EXHAUSTED with the trailing metadata ``("modelport-error", code)`` (and
``retry-after`` when rate limited), as every other gRPC error of modelport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from modelport.errors import RateLimited
from modelport.security.gate import Admission, Denied, Gate
from modelport.security.policy import Rule, grpc_rule, model_of
from modelport.security.principal import acting_as

__all__ = ["AuthInterceptor"]

_ERROR_METADATA = "modelport-error"  # serving.v2_grpc.ERROR_METADATA: the wire contract
_STATUS = {code.name: code for code in grpc.StatusCode}


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every RPC behind the ``gate`` (``policy.GRPC_RULES``; an RPC with no rule needs admin)."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        rule = grpc_rule(details.method)
        if handler is None or rule.scope is None:
            return handler
        header = None
        for name, value in details.invocation_metadata or ():
            if name == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        check = _Check(self._gate, rule, header, details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                check.unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                check.streaming(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # inference.GRPCInferenceService has no other kind: refuse rather than pass unchecked.
        return grpc.unary_unary_rpc_method_handler(_unsupported)


class _Check:
    """The checks of one call."""

    def __init__(self, gate: Gate, rule: Rule, header: str | None, method: str) -> None:
        self._gate, self._rule, self._header, self._method = gate, rule, header, method

    async def admit(self, message: Any, context: grpc.aio.ServicerContext) -> Admission:
        assert self._rule.scope is not None
        try:
            return self._gate.admit(
                self._header,
                _address(context.peer()),
                self._rule.scope,
                model_of(self._rule, message),
                (self._method,),
            )
        except Denied as denied:
            error = denied.error
            trailing: tuple[tuple[str, str], ...] = ((_ERROR_METADATA, error.code),)
            if isinstance(error, RateLimited):
                trailing += (("retry-after", str(int(error.retry_after))),)
            status = _STATUS[error.grpc_status]
            await context.abort(status, error.message, trailing_metadata=trailing)
            raise  # abort raises; this is for the type checker

    def unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            admitted = await self.admit(request, context)
            with acting_as(admitted.principal):
                return await behaviour(request, context)

        return checked

    def streaming(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async def each() -> AsyncIterator[Any]:
                async for message in requests:
                    await self.admit(message, context)
                    yield message

            async for response in behaviour(each(), context):
                yield response

        return checked


async def _unsupported(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        "this RPC kind is not served with auth on",
        trailing_metadata=((_ERROR_METADATA, "internal"),),
    )


def _address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` -> ``127.0.0.1:5000`` / ``[::1]:5000``."""
    return peer.partition(":")[2] or peer

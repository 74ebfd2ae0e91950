"""What both transports of the client share: one request as a ``Call``, the retry signal and
its backoff, the records a client returns, and the choice of transport by URL scheme."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from modelport.errors import InvalidInput, ModelportError
from modelport.types import TensorSpec

if TYPE_CHECKING:
    import numpy.typing as npt

    from modelport.protocols.v2.metadata import ModelMetadata, RepositoryEntry, ServerMetadata
    from modelport.types import Tensors

__all__ = [
    "Api",
    "Backoff",
    "Call",
    "Credentials",
    "ModelInfo",
    "Retry",
    "connect",
    "retry_after_seconds",
    "scheme_of",
]

T = TypeVar("T")

SCHEMES = {"http": "rest", "https": "rest", "grpc": "grpc", "grpcs": "grpc"}


def scheme_of(url: str) -> str:
    """``"rest"`` or ``"grpc"``: the transport a server URL names.

    Raises:
        InvalidInput: the URL has no scheme the client speaks.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in SCHEMES or not rest.strip("/"):
        raise InvalidInput(
            f"server URL {url!r} is not one the client speaks; use http://HOST:PORT (REST, "
            "default port 8000), https://..., or grpc://HOST:PORT (gRPC, default port 8001)"
        )
    return SCHEMES[scheme.lower()]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request, independent of sync or async: what to send and how to read the answer.

    For REST ``method`` is the HTTP method, ``target`` the path and ``payload`` the body
    (bytes or None); for gRPC ``method`` is the RPC name and ``payload`` the request
    message. ``read`` turns the transport's answer (an ``http11.Response``, a response
    message) into the result, raising the mapped error.
    """

    method: str
    target: str
    payload: Any
    headers: Mapping[str, str] | None
    timeout: float | None
    read: Callable[[Any], T]


class Retry(Exception):
    """The transport's word that ``error`` may pass if the call is sent again (HTTP 503,
    gRPC UNAVAILABLE or RESOURCE_EXHAUSTED, a refused connection), after at least
    ``retry_after`` seconds when the server said so."""

    def __init__(self, error: ModelportError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` (from 0) waits a random time up to
    ``min(cap, base * 2**n)``; a server's Retry-After adds to that, so that clients told
    to come back in one second do not all come back at the same instant."""

    retries: int
    base: float = 0.05
    cap: float = 2.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        jitter = random.uniform(0, min(self.cap, self.base * 2**attempt))  # noqa: S311
        return jitter + (retry_after or 0.0)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header's delay in seconds (the HTTP-date form is not honoured); capped
    at a minute so that a confused server cannot park a client."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), 60.0)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model a server serves, as ``Client.models()`` describes it.

    ``versions`` are the versions served (the wire's strings), ``states`` each one's state
    (``READY``, ``UNAVAILABLE``, ``LOADING``, ``FAILED``, ...). ``state`` sums them up:
    ``READY`` when any version is ready, else the state of the last version listed.
    ``inputs`` and ``outputs`` are the signature of the version requests go to by default.
    """

    name: str
    versions: tuple[str, ...]
    states: Mapping[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def state(self) -> str:
        if "READY" in self.states.values():
            return "READY"
        return self.states.get(self.versions[-1], "UNAVAILABLE") if self.versions else "UNAVAILABLE"


class Api(Protocol):
    """The Open Inference Protocol's calls, as one transport's wire spells them.

    ``version`` is ``""`` for the version a server routes to by default.
    """

    def server_live(self) -> Call[bool]: ...
    def server_ready(self) -> Call[bool]: ...
    def model_ready(self, name: str, version: str) -> Call[bool]: ...
    def server_metadata(self) -> Call[ServerMetadata]: ...
    def model_metadata(self, name: str, version: str) -> Call[ModelMetadata]: ...
    def index(self) -> Call[list[RepositoryEntry]]: ...
    def load(self, name: str) -> Call[None]: ...
    def unload(self, name: str) -> Call[None]: ...
    def metrics(self) -> Call[str]: ...
    def infer(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        outputs: Sequence[str] | None,
        binary: bool,
        timeout: float | None,
    ) -> Call[Tensors]: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presents and trusts, as ``Client(...)`` was given them."""

    api_key: str | None = None
    tls_ca: Path | str | None = None
    client_cert: Path | str | None = None
    client_key: Path | str | None = None


def connect(
    url: str,
    timeout: float,
    headers: Mapping[str, str] | None,
    pool: int,
    *,
    asynchronous: bool,
    credentials: Credentials = Credentials(),
) -> tuple[Api, Any]:
    """The calls and the transport for ``url``'s scheme: blocking ones for ``Client``, asyncio
    ones for ``AsyncClient``. Imported here, so a REST client never imports grpc.

    Raises:
        InvalidInput: ``url`` has no scheme the client speaks; TLS files for a plaintext
            URL or that cannot be used; an API key that is not one, or given twice.
    """
    from modelport.client.tls import auth_headers, client_tls

    transport_name = scheme_of(url)
    key_headers = auth_headers(credentials.api_key)
    if key_headers and any(name.lower() == "authorization" for name in headers or {}):
        raise InvalidInput("give the key as api_key= or an authorization header, not both")
    headers = {**(headers or {}), **key_headers} or None
    tls = client_tls(url, credentials.tls_ca, credentials.client_cert, credentials.client_key)
    if transport_name == "rest":
        from modelport.client import rest

        transport = rest.AsyncHttpTransport if asynchronous else rest.HttpTransport
        return rest.RestApi(), transport(url, timeout, headers, pool, tls)
    from modelport.client import grpc

    channel = grpc.AsyncGrpcTransport if asynchronous else grpc.GrpcTransport
    return grpc.GrpcApi(), channel(url, timeout, headers, tls)

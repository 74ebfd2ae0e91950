"""The client over REST: the V2 calls as HTTP/1.1 requests on pooled keep-alive connections
(``http11``).

Errors come back as the server mapped them: the ``code`` of a JSON error body names the
class (``errors.error_from_code``); a body without one falls back to the HTTP status. A 503
is retried by the client (after its Retry-After); nothing else is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy.typing as npt
import orjson

from modelport.client.base import Call, Retry, retry_after_seconds
from modelport.client.http11 import (
    AsyncPool,
    ConnectFailed,
    ConnectionLost,
    Pool,
    Response,
    TlsFailed,
)
from modelport.client.tls import ClientTls, untrusted
from modelport.errors import (
    Conflict,
    Forbidden,
    Internal,
    InvalidInput,
    ModelportError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Timeout,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
    error_from_code,
)
from modelport.protocols.v2.metadata import ModelMetadata, RepositoryEntry, ServerMetadata
from modelport.protocols.v2.rest import HEADER_LENGTH, decode_response, encode_request
from modelport.types import Tensors

__all__ = ["AsyncHttpTransport", "HttpTransport", "RestApi", "error_of"]

STATUS: dict[int, type[ModelportError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: Overloaded,
    500: Internal,
    501: UnsupportedFormat,
    503: Unavailable,
    504: Timeout,
}
"""The class for an error body that carries no ``code`` (an older server, a proxy)."""

_JSON = {"content-type": "application/json"}


def error_of(response: Response) -> ModelportError:
    """The error a failed response stands for: by its body's ``code``, else by its status."""
    message = ""
    code = None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("error", ""))
        code = body.get("code")
    if not message:
        message = response.text.strip()[:500] or response.reason_phrase
    message = message or f"HTTP {response.status_code}"
    if isinstance(code, str):
        return error_from_code(code, message)
    status = response.status_code
    cls = STATUS.get(status) or (InvalidInput if status < 500 else Internal)
    return cls(message)


def _raise_for(response: Response) -> None:
    error = error_of(response)
    if response.status_code == 503:
        raise Retry(error, retry_after_seconds(response.headers.get("retry-after")))
    raise error


def _ok(response: Response) -> None:
    if response.status_code >= 400:
        _raise_for(response)


def _ready(response: Response) -> bool:
    """V2 readiness: 200 ready, 400 not ready; anything else is an error."""
    if response.status_code in (200, 400):
        return response.status_code == 200
    _raise_for(response)
    raise AssertionError("unreachable")  # pragma: no cover


def _json(response: Response) -> Any:
    _ok(response)
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise Internal(f"the server answered {response.path} with no JSON") from None


def _outputs(response: Response) -> Tensors:
    _ok(response)
    return decode_response(response.content, response.headers.get(HEADER_LENGTH)).outputs


def _text(response: Response) -> str:
    _ok(response)
    return response.text


def _none(response: Response) -> None:
    _ok(response)


class RestApi:
    """The V2 calls as REST requests (paths relative to the client's base URL)."""

    def __init__(self) -> None:
        self._paths: dict[tuple[str, str], str] = {}

    def _model(self, name: str, version: str) -> str:
        path = self._paths.get((name, version))
        if path is None:
            path = f"v2/models/{quote(name, safe='')}"
            if version:
                path += f"/versions/{quote(version, safe='')}"
            if len(self._paths) < 1024:
                self._paths[name, version] = path
        return path

    def server_live(self) -> Call[bool]:
        return Call("GET", "v2/health/live", None, None, None, _ready)

    def server_ready(self) -> Call[bool]:
        return Call("GET", "v2/health/ready", None, None, None, _ready)

    def model_ready(self, name: str, version: str) -> Call[bool]:
        return Call("GET", self._model(name, version) + "/ready", None, None, None, _ready)

    def server_metadata(self) -> Call[ServerMetadata]:
        return Call("GET", "v2", None, None, None, lambda r: ServerMetadata.from_json(_json(r)))

    def model_metadata(self, name: str, version: str) -> Call[ModelMetadata]:
        return Call(
            "GET",
            self._model(name, version),
            None,
            None,
            None,
            lambda r: ModelMetadata.from_json(_json(r)),
        )

    def index(self) -> Call[list[RepositoryEntry]]:
        return Call(
            "POST",
            "v2/repository/index",
            b"{}",
            _JSON,
            None,
            lambda r: [RepositoryEntry.from_json(row) for row in _json(r)],
        )

    def load(self, name: str) -> Call[None]:
        path = f"v2/repository/models/{quote(name, safe='')}/load"
        return Call("POST", path, b"{}", _JSON, None, _none)

    def unload(self, name: str) -> Call[None]:
        path = f"v2/repository/models/{quote(name, safe='')}/unload"
        return Call("POST", path, b"{}", _JSON, None, _none)

    def metrics(self) -> Call[str]:
        return Call("GET", "metrics", None, None, None, _text)

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
        encoded = encode_request(inputs, outputs=outputs, binary=binary, timeout=timeout)
        if encoded.header_length is None:
            headers = _JSON
        else:
            headers = {
                "content-type": "application/octet-stream",
                HEADER_LENGTH: str(encoded.header_length),
            }
        path = self._model(name, version) + "/infer"
        return Call("POST", path, encoded.body, headers, timeout, _outputs)


def _timeout_error(url: str, call: Call[Any], timeout: float) -> Timeout:
    return Timeout(f"{call.method} {url}{call.target}: no answer within {timeout:g} s")


def _unreachable(url: str, exc: Exception) -> Retry:
    return Retry(
        Unavailable(f"cannot connect to {url}: {exc}; is `modelport serve` running there?")
    )


def _lost(url: str, call: Call[Any], exc: ConnectionLost, tls: ClientTls | None) -> Unavailable:
    # Not retried: the request may have reached the server and done its work.
    why = "the server may have stopped"
    if not exc.fresh:
        pass
    elif tls is None:
        why += "; or, if it serves TLS (modelport serve --tls-cert), use https://"
    elif tls.cert is None:
        why += (
            "; or it requires a client certificate (serve --tls-client-ca): pass client_cert= "
            "and client_key="
        )
    else:
        why += "; or it does not accept this client certificate (signed by another CA?)"
    return Unavailable(
        f"{call.method} {url}{call.target}: the connection was lost before the answer "
        f"({exc}); {why}"
    )


class HttpTransport:
    """Sends ``Call``s on a pool of keep-alive connections; safe to share between threads."""

    def __init__(
        self,
        url: str,
        timeout: float,
        headers: Mapping[str, str] | None,
        pool: int,
        tls: ClientTls | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self._tls = tls
        context = tls.ssl_context() if tls is not None else None
        self._pool = Pool(self.url, headers, pool, context)

    def send(self, call: Call[Any]) -> Any:
        timeout = self.timeout if call.timeout is None else call.timeout
        try:
            response = self._pool.request(
                call.method, call.target, headers=call.headers, body=call.payload, timeout=timeout
            )
        except TimeoutError:
            raise _timeout_error(self.url, call, timeout) from None
        except ConnectFailed as exc:
            raise _unreachable(self.url, exc) from None
        except TlsFailed as exc:
            raise untrusted(self.url, str(exc)) from None
        except ConnectionLost as exc:
            raise _lost(self.url, call, exc, self._tls) from None
        return call.read(response)

    def close(self) -> None:
        self._pool.close()


class AsyncHttpTransport:
    """Sends ``Call``s on a pool of asyncio keep-alive connections, on the caller's loop."""

    def __init__(
        self,
        url: str,
        timeout: float,
        headers: Mapping[str, str] | None,
        pool: int,
        tls: ClientTls | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self._tls = tls
        context = tls.ssl_context() if tls is not None else None
        self._pool = AsyncPool(self.url, headers, pool, context)

    async def send(self, call: Call[Any]) -> Any:
        timeout = self.timeout if call.timeout is None else call.timeout
        try:
            response = await self._pool.request(
                call.method, call.target, headers=call.headers, body=call.payload, timeout=timeout
            )
        except TimeoutError:
            raise _timeout_error(self.url, call, timeout) from None
        except ConnectFailed as exc:
            raise _unreachable(self.url, exc) from None
        except TlsFailed as exc:
            raise untrusted(self.url, str(exc)) from None
        except ConnectionLost as exc:
            raise _lost(self.url, call, exc, self._tls) from None
        return call.read(response)

    async def aclose(self) -> None:
        await self._pool.aclose()

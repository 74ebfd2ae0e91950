"""``Client``: a running modelport (or any Open Inference Protocol) server, from Python."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy.typing as npt

from modelport.client.base import Backoff, Call, Credentials, ModelInfo, Retry, connect
from modelport.client.records import model_infos
from modelport.protocols.v2.metadata import ModelMetadata, ServerMetadata
from modelport.types import Tensors

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A client of one server, over REST (``http://``, ``https://``) or gRPC (``grpc://``,
    ``grpcs://``), chosen by the URL's scheme::

        with Client("http://127.0.0.1:8000") as client:
            outputs = client.predict("iris", {"float_input": x})

    Connections are pooled and kept open until ``close()`` (or the end of the ``with``
    block). One client may be shared by threads.

    Args:
        url: the server's base URL (REST: ``http://``, ``https://``) or
            ``grpc://HOST:PORT`` (``grpcs://`` over TLS).
        timeout: seconds each call may take; ``predict(timeout=...)`` overrides it.
        retries: how many times a call is sent again after HTTP 503, gRPC UNAVAILABLE or
            RESOURCE_EXHAUSTED, or a refused connection; with exponential backoff and
            jitter, after the server's Retry-After. No other failure is retried.
        headers: sent with every request (HTTP headers or gRPC metadata).
        pool: the most connections kept open to the server (REST).
        api_key: sent as ``authorization: Bearer <api_key>`` with every request (an HTTP
            header, gRPC metadata). Not read from the environment: pass
            ``os.environ["MODELPORT_API_KEY"]`` to use that.
        tls_ca: CA bundle (PEM) the server's certificate must chain to, for ``https://``
            and ``grpcs://``; default: the system's trust store (REST), grpcio's bundled
            roots (gRPC). The host name or address in the URL must be in the certificate.
        client_cert, client_key: a client certificate and its key (PEM) for a server that
            requires one (mTLS, ``serve --tls-client-ca``).

    Every call raises the ``modelport`` error the server answered with (``NotFound`` for
    an unknown model, ``InvalidInput`` for a wrong datatype, ``Unauthorized`` for a
    missing key, ...), ``Timeout`` when no answer came in time, ``Unavailable`` when the
    server cannot be reached, and ``InvalidInput`` (not retried) when the TLS handshake
    fails: the server's certificate is not trusted or does not name its host.

    Raises:
        InvalidInput: ``url`` has no scheme the client speaks; TLS files given for
            ``http://`` or ``grpc://``, or that cannot be read; a client certificate
            without its key.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        headers: Mapping[str, str] | None = None,
        pool: int = 64,
        api_key: str | None = None,
        tls_ca: Path | str | None = None,
        client_cert: Path | str | None = None,
        client_key: Path | str | None = None,
    ) -> None:
        self.url = url
        self._backoff = Backoff(retries)
        credentials = Credentials(api_key, tls_ca, client_cert, client_key)
        self._api, self._transport = connect(
            url, timeout, headers, pool, credentials=credentials, asynchronous=False
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections. The client is not usable afterwards."""
        self._transport.close()

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                result: T = self._transport.send(call)
                return result
            except Retry as retry:
                if attempt >= self._backoff.retries:
                    raise retry.error from None
                time.sleep(self._backoff.delay(attempt, retry.retry_after))
                attempt += 1

    def server_live(self) -> bool:
        """Whether the server answers at all."""
        return self._send(self._api.server_live())

    def server_ready(self) -> bool:
        """Whether every model the server serves is loaded and ready."""
        return self._send(self._api.server_ready())

    def model_ready(self, name: str, version: int | str | None = None) -> bool:
        """Whether ``name`` (its default version, or ``version``) is ready for requests.

        Raises:
            NotFound: the server does not serve the model, or has no such version.
        """
        return self._send(self._api.model_ready(name, _version(version)))

    def server_metadata(self) -> ServerMetadata:
        """The server's name, version and protocol extensions."""
        return self._send(self._api.server_metadata())

    def model_metadata(self, name: str, version: int | str | None = None) -> ModelMetadata:
        """A model's versions, platform and signature (``.signature``).

        Raises:
            NotFound: the server does not serve the model, or has no such version.
        """
        return self._send(self._api.model_metadata(name, _version(version)))

    def models(self) -> list[ModelInfo]:
        """Every model the server serves, with its versions, states and signature."""
        entries = self._send(self._api.index())
        names = list(dict.fromkeys(entry.name for entry in entries))
        metadata = [self._send(self._api.model_metadata(name, "")) for name in names]
        return model_infos(entries, metadata)

    def predict(
        self,
        name: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        binary: bool = True,
        timeout: float | None = None,
    ) -> Tensors:
        """Run ``inputs`` (numpy arrays by input name) through model ``name``.

        Each array's dtype gives its datatype (str and object arrays of bytes are BYTES).
        Over REST the tensors travel as binary data both ways, or as JSON with
        ``binary=False``; gRPC always sends them raw. Binary outputs are read-only arrays
        that share the response's memory (``.copy()`` one to write to it).

        Args:
            version: a version number; None for the one the server routes to.
            outputs: only these outputs; None for all.
            timeout: seconds for this call instead of the client's timeout.

        Returns:
            The outputs, by name.

        Raises:
            NotFound: unknown model, version or output.
            InvalidInput: the inputs do not fit the model's signature.
            Timeout: no answer within the timeout.
            Unavailable: the server cannot be reached, or still refused after the retries.
        """
        call = self._api.infer(
            name, _version(version), inputs, outputs=outputs, binary=binary, timeout=timeout
        )
        return self._send(call)

    def load(self, name: str) -> None:
        """(Re)load ``name`` from the server's registry (the model repository extension)."""
        self._send(self._api.load(name))

    def unload(self, name: str) -> None:
        """Unload every version of ``name``; requests for it get ``Unavailable`` until
        ``load``."""
        self._send(self._api.unload(name))

    def metrics(self) -> str:
        """The server's Prometheus metrics, as text.

        Raises:
            InvalidInput: over gRPC; metrics are served over HTTP only.
        """
        return self._send(self._api.metrics())


def _version(version: int | str | None) -> str:
    return "" if version is None else str(version)

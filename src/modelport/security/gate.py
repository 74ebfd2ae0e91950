"""The gate both edges ask: is this key valid, may it do this, is it within its rate.

The hot path never touches the database: valid keys are held in a dict by ``key_id``,
replaced every ``refresh_seconds`` (1 s) by a background thread, so a revoked key is refused
by every worker process within a second or two, and a new key is accepted as soon. Denied
requests reach the audit log through a bounded queue the same thread drains, at most
``denials_per_second`` (100) entries a second in one transaction: a flood of bad keys costs
the database one bounded write a second and a count of what was dropped, never a write on
the request path.
"""

from __future__ import annotations

import collections
import logging
import threading
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine

from modelport.errors import Forbidden, ModelportError, RateLimited, Unauthorized
from modelport.registry.db import write_transaction
from modelport.security import audit
from modelport.security.keys import INVALID_KEY, KeyRecord, KeyStore, check_key
from modelport.security.principal import Principal, scope_includes
from modelport.security.ratelimit import Bucket, FailureLimiter

__all__ = ["Admission", "Denied", "Gate"]

log = logging.getLogger(__name__)


class Admission(NamedTuple):
    """An accepted request: who it is, its key's bucket (None: no rate), and when the key
    expires (None: never)."""

    principal: Principal
    bucket: Bucket | None
    expires_at: datetime | None = None


class Denied(Exception):
    """A refused request: the ``error`` to answer with and the HTTP headers to add (raw
    ASGI pairs, lower-case names)."""

    def __init__(self, error: ModelportError, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(error.message)
        self.error = error
        self.headers = headers


_Seen = tuple[Admission, KeyRecord]

Client = tuple[str, int] | str
"""A client: ASGI's ``(host, port)``, or ``"host:port"`` (gRPC's peer)."""

_MAX_REMEMBERED = 10_000
"""Most entries in each in-memory table of the gate (keys seen, principals, grants)."""

_BEARER = (b"www-authenticate", b'Bearer realm="modelport"')


def rate_headers(bucket: Bucket) -> list[tuple[bytes, bytes]]:
    """The IETF draft's ``RateLimit-*`` headers after the last ``take`` from ``bucket``."""
    return [
        (b"ratelimit-limit", bucket.limit_header),
        (b"ratelimit-remaining", str(bucket.remaining).encode()),
        (b"ratelimit-reset", str(bucket.reset).encode()),
    ]


class Gate:
    """Authentication, authorization and rate limits for one server process.

    ``admit`` runs on the event loop; ``start`` loads the keys and starts the refresher,
    ``close`` stops it (and writes the denials still queued).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        refresh_seconds: float = 1.0,
        failures_per_minute: int = 10,
        denials_per_second: int = 100,
        max_queued_denials: int = 1000,
    ) -> None:
        self._store = KeyStore(engine)
        self._engine = engine
        self._keys: dict[str, KeyRecord] = {}
        self._accepted: dict[str, KeyRecord] = {}  # Authorization header -> its key
        self._principals: dict[tuple[str, Client], Principal] = {}
        # (Authorization, scope needed, model, client) -> what was admitted, and its key.
        self._admitted: dict[tuple[str | None, str, str | None, Client], _Seen] = {}
        self._grants: dict[tuple[str, str], bool] = {}
        self.remembered: dict[Any, Admission] = {}
        """For the REST wrapper's fast path: its own keys (raw header, method, path, client)
        to what ``admit`` admitted; emptied with every other cache on ``refresh``."""
        self._buckets: dict[str, Bucket] = {}
        self.failures = FailureLimiter(failures_per_minute, 60.0)
        self._refresh_seconds = refresh_seconds
        self._denials_per_tick = max(1, int(denials_per_second * refresh_seconds))
        self._max_queued = max_queued_denials
        self._denials: collections.deque[tuple[Principal, str, dict[str, Any]]] = (
            collections.deque()
        )
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dropped_denials(self) -> int:
        """Denied requests not written to the audit log since the last summary entry."""
        return self._dropped

    def start(self) -> None:
        """Load the keys now (a failure here is a start-up error), then refresh them."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="modelport-keys", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._write_denials(everything=True)

    def refresh(self) -> None:
        """Replace the held keys with the database's live ones.

        Runs in the refresher thread while the event loop reads and adds to these tables:
        each is replaced whole (one reference swap), never changed in place from here, and
        the buckets are copied with ``list`` (a single step under the GIL) first.
        """
        keys = self._store.live_keys()
        self._keys = keys
        # What was remembered is forgotten: a revoked or expired key is not let in again,
        # and a live one costs one hash check a second to be remembered anew.
        self._accepted = {}
        self._admitted = {}
        self.remembered = {}
        self._principals = {}
        self._grants = {}
        # A key that is gone loses its bucket; the others keep theirs.
        self._buckets = {k: b for k, b in list(self._buckets.items()) if k in keys}

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_seconds):
            try:
                self.refresh()
            except Exception:
                log.exception("reading the API keys failed; using the last ones read")
            try:
                self._write_denials()
            except Exception:
                log.exception("writing denied requests to the audit log failed")

    def admit(
        self,
        authorization: str | None,
        client: Client,
        needed: str,
        model: str | None,
        what: tuple[str, ...],
    ) -> Admission:
        """Admit a request needing scope ``needed`` (on ``model``, when not None).

        ``authorization`` is the header's value (``Bearer mp_...``); ``client`` the
        client's ``(host, port)`` (ASGI's ``scope["client"]``) or ``"host:port"``; ``what``
        names the request for the audit log (joined with spaces only when it is denied:
        ``("POST", "/v2/models/iris/infer")``).

        Raises:
            Denied: with ``Unauthorized`` (401), ``Forbidden`` (403) or ``RateLimited`` (429).
        """
        if self.failures.active:
            self._refuse_blocked(client, what)
        # The hot path: this key, on this connection, did this kind of request before.
        seen = self._admitted.get((authorization, needed, model, client))
        if seen is not None:
            admission, record = seen
            if record.expires_at is None or record.expires_at > datetime.now(UTC):
                bucket = admission.bucket
                if bucket is None or bucket.take():
                    return admission
                raise self._over_rate(record, bucket, admission.principal, what)
        admission, record = self._admit(authorization, client, needed, model, what)
        if len(self._admitted) >= _MAX_REMEMBERED:
            self._admitted.clear()
        self._admitted[authorization, needed, model, client] = admission, record
        return admission

    def _admit(
        self,
        authorization: str | None,
        client: Client,
        needed: str,
        model: str | None,
        what: tuple[str, ...],
    ) -> tuple[Admission, KeyRecord]:
        """``admit`` the first time: every check, taking a token when the key has a rate."""
        record = self._accepted.get(authorization) if authorization else None
        if record is None:
            record = self._authenticate(authorization, client, what)
        elif record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            raise self._unauthorized(client, what)
        principal = self._principals.get((record.key_id, client))
        if principal is None:
            principal = self._principal(record, client)
        if not scope_includes(record.scope, needed):
            refusal = Forbidden(
                f"key {record.name!r} has scope {record.scope!r}; this needs {needed!r}"
            )
            raise self._deny(refusal, principal, what, 403)
        if model is not None and not self._granted(principal, model):
            # The same answer whether or not the model exists: names are not leaked.
            refusal = Forbidden(f"key {record.name!r} is not granted model {model!r}")
            raise self._deny(refusal, principal, what, 403)
        if record.rate is None:
            return Admission(principal, None, record.expires_at), record
        bucket = self._buckets.get(record.key_id) or self._bucket(record)
        if not bucket.take():
            raise self._over_rate(record, bucket, principal, what)
        return Admission(principal, bucket, record.expires_at), record

    def _over_rate(
        self, record: KeyRecord, bucket: Bucket, principal: Principal, what: tuple[str, ...]
    ) -> Denied:
        wait = bucket.retry_after
        rate = record.rate.text if record.rate else ""
        error = RateLimited(
            f"key {record.name!r} is over its rate of {rate}; retry in {wait} s", retry_after=wait
        )
        return self._deny(error, principal, what, 429, rate_headers(bucket))

    def _refuse_blocked(self, client: Client, what: tuple[str, ...]) -> None:
        host = _host(client)
        blocked = self.failures.blocked_for(host)
        if blocked:
            seconds = int(blocked) + 1
            error = RateLimited(
                f"too many failed authentications from {host}; try again in {seconds} s "
                "with a valid API key",
                retry_after=seconds,
            )
            raise self._deny(error, _anonymous(client), what, 429)

    def _authenticate(
        self, authorization: str | None, client: Client, what: tuple[str, ...]
    ) -> KeyRecord:
        """The slow path: parse, look up, compare the hash in constant time. A key that
        passes is remembered by its header value until the next refresh, so its next
        requests cost one dict lookup (only live keys get in: the dict stays small)."""
        key = _bearer(authorization)
        try:
            record = check_key(key, self._keys.get) if key else None
        except Unauthorized:
            record = None
        if record is None:
            raise self._unauthorized(client, what)
        if len(self._accepted) < _MAX_REMEMBERED and authorization:
            self._accepted[authorization] = record
        return record

    def _unauthorized(self, client: Client, what: tuple[str, ...]) -> Denied:
        self.failures.failed(_host(client))
        return self._deny(Unauthorized(INVALID_KEY), _anonymous(client), what, 401)

    def _principal(self, record: KeyRecord, client: Client) -> Principal:
        # One per connection (a client's keep-alive connection keeps its address).
        if len(self._principals) >= _MAX_REMEMBERED:
            self._principals.clear()
        principal = record.principal(_address(client))
        self._principals[(record.key_id, client)] = principal
        return principal

    def _granted(self, principal: Principal, model: str) -> bool:
        key = (principal.key_id or "", model)
        granted = self._grants.get(key)
        if granted is None:
            if len(self._grants) >= _MAX_REMEMBERED:
                self._grants.clear()
            granted = self._grants[key] = principal.may_see(model)
        return granted

    def _bucket(self, record: KeyRecord) -> Bucket:
        assert record.rate is not None
        # A burst of one period's count (100/s: 100 at once), at least one request.
        bucket = self._buckets[record.key_id] = Bucket(record.rate.per_second, record.rate.count)
        return bucket

    def _deny(
        self,
        error: ModelportError,
        principal: Principal,
        what: tuple[str, ...],
        status: int,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Denied:
        if len(self._denials) < self._max_queued:
            detail = {"status": status, "code": error.code}
            self._denials.append((principal, " ".join(what), detail))
        else:
            with self._dropped_lock:
                self._dropped += 1
        extra = list(headers or ())
        if status == 401:
            extra.append(_BEARER)
        if isinstance(error, RateLimited):
            extra.append((b"retry-after", str(int(error.retry_after)).encode()))
        return Denied(error, extra)

    def _write_denials(self, *, everything: bool = False) -> None:
        """Up to a tick's budget of queued denials (all with ``everything``), and the count
        of those dropped since the last time, in one transaction."""
        budget = len(self._denials) if everything else self._denials_per_tick
        batch = []
        for _ in range(budget):
            try:
                batch.append(self._denials.popleft())
            except IndexError:
                break
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        if not batch and not dropped:
            return
        with write_transaction(self._engine) as conn:
            for principal, what, detail in batch:
                audit.record(
                    conn, "request.denied", what, outcome="denied", detail=detail,
                    principal=principal,
                )  # fmt: skip
            if dropped:
                log.warning("%d denied requests were not written to the audit log", dropped)
                audit.record(
                    conn, "request.denied", "", outcome="denied", detail={"dropped": dropped},
                    principal=Principal("modelport"),
                )  # fmt: skip


def _address(client: Client) -> str:
    return client if isinstance(client, str) else f"{client[0]}:{client[1]}"


def _host(client: Client) -> str:
    """The client's host: ``10.0.0.1:5000`` -> ``10.0.0.1``; ``[::1]:5000`` -> ``[::1]``."""
    if not isinstance(client, str):
        return str(client[0])
    return client.rpartition(":")[0] or client


def _anonymous(client: Client) -> Principal:
    return Principal("anonymous", address=_address(client))


def _bearer(header: str | None) -> str | None:
    if header is None or len(header) < 8 or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()

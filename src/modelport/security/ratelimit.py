"""Rate limits: a token bucket per key, and a limit on failed authentications per address.

Both live in one process's memory, on the event loop (no locks): with ``--workers N`` each
worker process keeps its own, so a key's rate holds per worker process. Memory is bounded:
buckets exist only for keys that have a rate, and the failure table holds at most
``max_addresses`` addresses, forgetting the oldest first.
"""

from __future__ import annotations

import math
import time

__all__ = ["Bucket", "FailureLimiter"]


class Bucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``; full at start.

    ``take`` is all an admitted request costs; the numbers a response reports (``remaining``,
    ``reset``, ``retry_after``) are worked out only when asked for.
    """

    __slots__ = ("_at", "_tokens", "burst", "limit_header", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.limit_header = str(int(self.burst)).encode()
        """``RateLimit-Limit``'s value, made once."""
        self._tokens = self.burst
        self._at = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Take one token if there is one; whether there was."""
        now = time.monotonic() if now is None else now
        tokens = self._tokens + (now - self._at) * self.rate
        tokens = min(tokens, self.burst)
        self._at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False

    @property
    def low(self) -> bool:
        """Whether less than half the burst is left (as of the last ``take``)."""
        return self._tokens * 2 < self.burst

    @property
    def limit(self) -> int:
        """Requests allowed in a burst."""
        return int(self.burst)

    @property
    def remaining(self) -> int:
        """Whole tokens left (as of the last ``take``)."""
        return int(self._tokens)

    @property
    def reset(self) -> int:
        """Seconds until the bucket is full again (as of the last ``take``)."""
        return math.ceil((self.burst - self._tokens) / self.rate)

    @property
    def retry_after(self) -> int:
        """Whole seconds, at least 1, until one token is back (as of the last ``take``)."""
        return max(1, math.ceil((1.0 - self._tokens) / self.rate))


class FailureLimiter:
    """At most ``failures`` failed authentications per ``window`` seconds from one address;
    past that, the address is refused (without its key being checked) until the window ends.
    """

    def __init__(self, failures: int = 10, window: float = 60.0, max_addresses: int = 10_000):
        self.failures = failures
        self.window = window
        self.max_addresses = max_addresses
        self._seen: dict[str, tuple[float, int]] = {}  # address -> (window start, count)

    @property
    def active(self) -> bool:
        """Whether any address has failed lately (else there is nothing to check)."""
        return bool(self._seen)

    def blocked_for(self, address: str, now: float | None = None) -> float:
        """Seconds ``address`` stays refused; 0 when it may try."""
        entry = self._seen.get(address)
        if entry is None:
            return 0.0
        now = time.monotonic() if now is None else now
        started, count = entry
        left = started + self.window - now
        if left <= 0:
            del self._seen[address]
            return 0.0
        return left if count >= self.failures else 0.0

    def failed(self, address: str, now: float | None = None) -> None:
        """Count one failure from ``address``."""
        now = time.monotonic() if now is None else now
        entry = self._seen.get(address)
        if entry is None or entry[0] + self.window <= now:
            if len(self._seen) >= self.max_addresses:
                self._forget(now)
            self._seen[address] = (now, 1)
        else:
            self._seen[address] = (entry[0], entry[1] + 1)

    def _forget(self, now: float) -> None:
        """Drop finished windows; if every window is live, the oldest half (dicts keep
        insertion order, so the first entries are the oldest windows)."""
        for address, (started, _) in list(self._seen.items()):
            if started + self.window <= now:
                del self._seen[address]
        if len(self._seen) >= self.max_addresses:
            for address in list(self._seen)[: self.max_addresses // 2]:
                del self._seen[address]

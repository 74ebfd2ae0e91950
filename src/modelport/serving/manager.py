"""ModelManager: which models a server serves, which versions are loaded, and inference.

Every protocol front-end goes through here. Models are registered by name with a registry
reference (``iris@production``); the version that reference names is the default for
requests without a version. Loading happens on first use (or at start-up), under an
optional limit on loaded models and on memory, evicting the least recently used idle one.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelport.errors import (
    Conflict,
    Internal,
    InvalidInput,
    InvalidName,
    ModelportError,
    NotFound,
    Overloaded,
    Unavailable,
)
from modelport.registry import ModelVersion, Registry
from modelport.serving.config import ModelServeConfig, ServeConfig, with_stored_settings
from modelport.serving.deployment import Deployment, State
from modelport.serving.metrics import ServingMetrics
from modelport.serving.response_cache import request_digest
from modelport.types import ModelRef, Tensors, validate_name

__all__ = ["ModelManager", "ServedModel"]

log = logging.getLogger(__name__)

# A version in a URL or a gRPC field: ASCII digits only (str.isdigit() also takes '²' and
# '٣', which int() refuses or reads as another number), at most what an int64 holds.
_VERSION = re.compile(r"[0-9]{1,18}")


@dataclass
class ServedModel:
    """A name the server answers to, and the versions of it that exist here."""

    name: str
    ref: ModelRef
    config: ModelServeConfig
    traffic: dict[int, float] = field(default_factory=dict)
    default: int = 0
    enabled: bool = True
    deployments: dict[int, Deployment] = field(default_factory=dict)


class Peers(Protocol):
    """The other worker processes of this server (``serve --workers N``)."""

    joined: bool
    """Every worker has been ready once."""

    async def broadcast(self, op: str, name: str) -> None: ...

    async def metrics(self) -> list[dict[str, list[list[Any]]]]: ...


class ModelManager:
    """Loads, routes to and unloads model versions. Use from one event loop.

    With several worker processes, each has its own manager holding every model; repository
    calls (``load``, ``unload``) are applied here and then in every other worker (``peers``).
    """

    def __init__(self, registry: Registry, config: ServeConfig, metrics: ServingMetrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.in_flight = 0
        self._swap_locks: dict[str, asyncio.Lock] = {}
        self._gauge_in_flight = metrics.in_flight
        self.peers: Peers | None = None

    # -- registration ----------------------------------------------------------------------

    async def register(
        self,
        ref: str,
        config: ModelServeConfig | None = None,
        traffic: dict[int, float] | None = None,
    ) -> ServedModel:
        """Serve ``ref`` under its model name (not loaded yet).

        Raises:
            NotFound: no such model or version in the registry.
            Conflict: the name is served already. An entry is never replaced: what it has
                loaded (sessions, batcher threads) would stay alive with nothing to unload it.
        """
        parsed = ModelRef.parse(ref)
        self._refuse_served(parsed.name)
        record = await asyncio.to_thread(self.registry.get, parsed)
        served = ServedModel(
            name=parsed.name,
            ref=parsed,
            config=config or self.config.model_settings(parsed.name),
            traffic=dict(traffic or {}),
            default=record.version,
        )
        served.deployments[record.version] = self._deployment(record, served.config)
        for version in served.traffic:
            if version not in served.deployments:
                other = await asyncio.to_thread(
                    self.registry.get, ModelRef(parsed.name, version=version)
                )
                served.deployments[version] = self._deployment(other, served.config)
        self._refuse_served(parsed.name)  # again: another task may have added it meanwhile
        self.models[parsed.name] = served
        return served

    def _refuse_served(self, name: str) -> None:
        if name in self.models:
            raise Conflict(
                f"model {name!r} is served already (as {self.models[name].ref}); "
                f"reload it with POST /v2/repository/models/{name}/load"
            )

    def _deployment(self, record: ModelVersion, config: ModelServeConfig) -> Deployment:
        tuned, applied = with_stored_settings(config, record.serving_settings)
        return Deployment(record, tuned, self.metrics, stored_settings=applied)

    async def load_all(self) -> None:
        """Load every registered model's default version (start-up), honouring the limits."""
        for served in list(self.models.values()):
            for version in {served.default, *served.traffic}:
                await self._ready(served.deployments[version])

    # -- routing ---------------------------------------------------------------------------

    def served(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            close = difflib.get_close_matches(name, list(self.models), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise NotFound(f"model {name!r} is not served here{hint}")
        return served

    async def deployment(self, name: str, version: str | int | None = None) -> Deployment:
        """The deployment a request addresses (not necessarily loaded)."""
        served = self.served(name)
        if version is None or version == "":
            number = self._route(served)
        else:
            number = _version_number(version)
        found = served.deployments.get(number)
        if found is None:
            record = await asyncio.to_thread(self.registry.get, ModelRef(name, version=number))
            found = served.deployments.setdefault(number, self._deployment(record, served.config))
        return found

    async def by_alias(self, name: str, alias: str) -> Deployment:
        served = self.served(name)
        record = await asyncio.to_thread(self.registry.get, ModelRef(name, alias=alias))
        return await self.deployment(served.name, record.version)

    @staticmethod
    def _route(served: ServedModel) -> int:
        if not served.traffic:
            return served.default
        versions = list(served.traffic)
        return random.choices(versions, weights=[served.traffic[v] for v in versions])[0]  # noqa: S311

    async def _ready(self, deployment: Deployment) -> Deployment:
        served = self.served(deployment.name)
        if not served.enabled:
            raise Unavailable(
                f"model {deployment.name!r} was unloaded; load it with "
                f"POST /v2/repository/models/{deployment.name}/load"
            )
        if deployment.state is not State.READY:
            if deployment.state is State.UNLOADING:
                raise Unavailable(f"{deployment.record.ref} is being unloaded; retry")
            await deployment.ensure_ready(self.registry)
            self.metrics.models_loaded.set(self._loaded_count())
            await self._enforce_limits(keep=deployment)
        return deployment

    # -- inference -------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | int | None,
        inputs: Tensors,
        outputs: Sequence[str] | None,
        protocol: str,
        *,
        timeout: float | None = None,
    ) -> tuple[Tensors, Deployment]:
        """Validate, batch and run one request; record its metrics.

        ``timeout`` (seconds) is the client's own limit (a gRPC deadline, a ``timeout``
        request parameter); the earlier of it and the model's ``timeout_ms`` applies.

        Raises:
            NotFound, InvalidInput, Unavailable (overloaded, unloaded), Timeout.
        """
        started = time.monotonic()
        deployment = await self.deployment(name, version)
        if self.in_flight >= self.config.max_concurrency:
            deployment.count(protocol, "unavailable", 0.0)
            raise Overloaded(f"overloaded: {self.in_flight} requests in flight; retry later")
        self.in_flight += 1
        self._gauge_in_flight.inc()
        deployment.in_flight += 1
        outcome = "success"
        try:
            await self._ready(deployment)
            deployment.last_used = started
            deployment.signature.validate(inputs)
            if outputs:
                _check_outputs(deployment, outputs)
            limit = deployment.config.timeout_ms / 1000
            if timeout is not None:
                limit = min(limit, max(timeout, 0.0))
            result = await self._run(deployment, inputs, outputs, limit)
            return result, deployment
        except ModelportError as exc:
            outcome = exc.code
            raise
        except asyncio.CancelledError:  # the client went away (gRPC cancel or deadline)
            outcome = "cancelled"
            raise
        except Exception:  # a bug; the edge logs it and answers 500
            outcome = Internal.code
            raise
        finally:
            self.in_flight -= 1
            self._gauge_in_flight.dec()
            deployment.in_flight -= 1
            deployment.count(protocol, outcome, time.monotonic() - started)

    async def _run(
        self,
        deployment: Deployment,
        inputs: Tensors,
        outputs: Sequence[str] | None,
        timeout: float,
    ) -> Tensors:
        batcher = deployment.batcher
        if batcher is None:
            raise Unavailable(f"{deployment.record.ref} is not loaded; retry")
        cache = deployment.response_cache
        if cache is None:
            return await batcher.submit(inputs, outputs, timeout)
        key = request_digest(inputs, outputs)
        hit = cache.get(key)
        if hit is not None:
            deployment.cache_hits.inc()
            return hit
        deployment.cache_misses.inc()
        result = await batcher.submit(inputs, outputs, timeout)
        cache.put(key, result)
        return result

    # -- residency -------------------------------------------------------------------------

    def _loaded(self) -> list[Deployment]:
        return [
            d
            for s in self.models.values()
            for d in s.deployments.values()
            if d.state is State.READY
        ]

    def _loaded_count(self) -> int:
        return len(self._loaded())

    async def _enforce_limits(self, keep: Deployment) -> None:
        limit, budget = self.config.max_models, self.config.memory_budget
        if limit is None and budget is None:
            return
        loaded = self._loaded()
        candidates = sorted(
            (d for d in loaded if d is not keep and d.idle), key=lambda d: d.last_used
        )
        while candidates and (
            (limit is not None and len(loaded) > limit)
            or (budget is not None and sum(d.memory for d in loaded) > budget)
        ):
            victim = candidates.pop(0)
            loaded.remove(victim)
            log.info("unloading %s (least recently used) to stay within limits", victim.record.ref)
            self.metrics.unloads.labels(reason="evicted").inc()
            await victim.unload(self.config.drain_seconds)
        self.metrics.models_loaded.set(self._loaded_count())

    # -- repository ------------------------------------------------------------------------

    async def load(self, name: str, *, everywhere: bool = True) -> Deployment:
        """(Re)load ``name`` from the registry: follow a moved alias with zero failed requests.

        The new version is loaded and warmed before requests switch to it; the old one then
        finishes what it has and is unloaded. A model not served yet is added. With
        ``everywhere``, every other worker process does the same before this returns.

        Raises:
            InvalidName: ``name`` is not a plain model name (``iris@2`` is not: a served
                model follows the reference it was served with).
            NotFound: no such model in the registry.
        """
        _plain_name(name)
        deployment = await self._load_here(name)
        if everywhere and self.peers is not None:
            await self.peers.broadcast("load", name)
        return deployment

    async def _load_here(self, name: str) -> Deployment:
        lock = self._swap_locks.setdefault(name, asyncio.Lock())
        async with lock:
            served = self.models.get(name)
            if served is None:
                served = await self.register(name)
            served.enabled = True
            record = await asyncio.to_thread(self.registry.get, served.ref)
            new = await self.deployment(name, record.version)
            await self._ready(new)
            old = served.default
            served.default = record.version
            if old != record.version and old not in served.traffic:
                previous = served.deployments.get(old)
                if previous is not None:
                    self.metrics.unloads.labels(reason="replaced").inc()
                    await previous.unload(self.config.drain_seconds)
            self.metrics.models_loaded.set(self._loaded_count())
            return new

    async def unload(self, name: str, *, everywhere: bool = True) -> None:
        """Unload every version of ``name``; requests get 503 until it is loaded again.

        With ``everywhere``, every other worker process does the same before this returns.

        Raises:
            InvalidName: ``name`` is not a plain model name.
            NotFound: ``name`` is not served here.
        """
        _plain_name(name)
        await self._unload_here(name)
        if everywhere and self.peers is not None:
            await self.peers.broadcast("unload", name)

    async def _unload_here(self, name: str) -> None:
        served = self.served(name)
        served.enabled = False
        for deployment in served.deployments.values():
            await deployment.unload(self.config.drain_seconds)
        self.metrics.unloads.labels(reason="requested").inc()
        self.metrics.models_loaded.set(self._loaded_count())

    async def refresh(self) -> None:
        """Follow aliases that moved in the registry (``serve --watch``)."""
        for served in list(self.models.values()):
            if served.ref.version is not None or not served.enabled:
                continue
            try:
                record = await asyncio.to_thread(self.registry.get, served.ref)
            except ModelportError as exc:
                log.warning("cannot follow %s: %s", served.ref, exc)
                continue
            if record.version != served.default:
                log.info("%s moved to %s; swapping", served.ref, record.ref)
                # Every worker watches on its own; telling the others would swap them twice.
                await self.load(served.name, everywhere=False)

    def index(self) -> list[dict[str, Any]]:
        """The repository index: every served model version and its state."""
        rows = []
        for served in self.models.values():
            for deployment in served.deployments.values():
                rows.append(
                    {
                        "name": served.name,
                        "version": str(deployment.version),
                        "state": deployment.state.value if served.enabled else "UNAVAILABLE",
                        "reason": deployment.reason,
                    }
                )
        return rows

    def ready(self) -> bool:
        """Ready when every enabled model's default version is loaded and warm, here and
        (with several worker processes) in every worker once."""
        return self.ready_here() and (self.peers is None or self.peers.joined)

    def ready_here(self) -> bool:
        """``ready`` for this process alone."""
        return all(
            s.deployments[s.default].state is State.READY for s in self.models.values() if s.enabled
        )

    async def close(self) -> None:
        for served in self.models.values():
            for deployment in served.deployments.values():
                await deployment.unload(self.config.drain_seconds)


def _plain_name(name: str) -> None:
    try:
        validate_name(name)
    except InvalidName as exc:
        raise InvalidName(
            f"{exc.message}; load and unload take a model name (iris, not iris@2): a served "
            "model follows the reference it is served with"
        ) from None


def _version_number(version: str | int) -> int:
    if isinstance(version, int):
        return version
    if _VERSION.fullmatch(version) is None or int(version) < 1:
        shown = version if len(version) <= 40 else version[:40] + "..."
        raise InvalidInput(
            f"model version must be a positive integer of at most 18 digits (1, 2, ...), "
            f"got {shown!r}"
        )
    return int(version)


def _check_outputs(deployment: Deployment, outputs: Sequence[str]) -> None:
    known = deployment.signature.output_names()
    for name in outputs:
        if name not in known:
            valid = ", ".join(repr(n) for n in known)
            raise InvalidInput(f"unknown output {name!r}; {deployment.record.ref} gives {valid}")

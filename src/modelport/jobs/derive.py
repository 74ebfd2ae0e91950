"""The derive-a-version job: a new version made from a parent, checked, pushed with lineage.

    derived = derive(registry, "cnn@1", produce, kind="convert", check=parity)
    derived.version.ref, derived.report.metrics()

Every job that makes a version out of another (convert today; optimize and train next) is
the same five steps, written here once; a job supplies only ``produce`` and ``check``:

1. **check out** the parent: its files, re-hashed against the manifest, read only;
2. **produce**: the job writes the new model into an empty scratch directory;
3. **conform**: the new model must promise what the parent promised (see ``conform``), so
   that clients of ``cnn@1`` call ``cnn@2`` unchanged;
4. **check**: the job's check runs the new model against the parent (e.g. parity on sample
   inputs, ``jobs.parity``) and returns a measured report; a report that did not pass
   refuses the version;
5. **push** the new version with its lineage (parent, job kind, parameters) and the report
   as its metrics, in the registry's one atomic push.

Nothing half-made survives a failure: until step 5 nothing is in the registry, a failure
at any step removes the scratch directory, and a refused check says why and stores
nothing. A job killed outright (``kill -9``) leaves its scratch directory behind, which
the next job or ``modelport gc`` removes (``jobs.scratch``), and at most a push's staging,
which ``gc`` removes too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from modelport.config import Settings
from modelport.errors import InvalidModel, VerificationFailed
from modelport.jobs.scratch import scratch_directory, sweep
from modelport.registry import Lineage, ModelVersion, Registry
from modelport.registry.store import hash_file
from modelport.registry.store.plaintext import encryption_on, plaintext_base
from modelport.runtimes import CheckedModel, LoadedModel, LoadOptions, PushOptions
from modelport.types import ModelRef, Signature, TensorSpec, validate_alias, validate_name

__all__ = [
    "CheckReport",
    "Checkout",
    "Derived",
    "Produced",
    "conform",
    "derive",
    "scratch_root",
]


@dataclass(frozen=True, slots=True)
class Checkout:
    """The parent version's files, verified against its manifest. Read only: a job that
    changes them damages the parent's checkout (the next load's verification says so)."""

    record: ModelVersion
    directory: Path

    @property
    def entry(self) -> Path:
        """The file (or directory) the parent's runtime opens."""
        return self.directory / self.record.entry


@dataclass(frozen=True, slots=True)
class Produced:
    """What ``produce`` made: the model to push, and what to record about how."""

    path: Path
    """The new model's file or directory, inside the scratch directory."""
    format: str | None = None
    """Its format name; ``None`` lets the runtimes detect it."""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Recorded in the lineage, after (and over) the job's own ``parameters``."""
    description: str = ""
    trust_pickle: bool = False
    """The new model is of a format that runs code when loaded, and the job vouches for it."""
    signature: Signature | None = None
    """For formats that do not record their inputs and outputs."""


class CheckReport(Protocol):
    """What a check measured. ``metrics()`` is stored with the version; ``failures()`` says
    what did not pass, as clauses for an error message."""

    @property
    def passed(self) -> bool: ...

    def metrics(self) -> dict[str, Any]: ...

    def failures(self) -> str: ...


ReportT = TypeVar("ReportT", bound=CheckReport)


@dataclass(frozen=True, slots=True)
class Derived(Generic[ReportT]):
    """A derived version that passed its check, as stored."""

    version: ModelVersion
    parent: ModelVersion
    parameters: dict[str, Any]
    """The lineage parameters recorded with the version."""
    report: ReportT
    seconds: dict[str, float]
    """How long each step took: ``checkout``, ``produce``, ``check``, ``push``."""


def derive(
    registry: Registry,
    parent: ModelRef | str,
    produce: Callable[[Checkout, Path], Produced],
    *,
    kind: str,
    check: Callable[[LoadedModel, LoadedModel], ReportT],
    parameters: Mapping[str, Any] | None = None,
    name: str | None = None,
    aliases: Iterable[str] = (),
    description: str | None = None,
    signature: Signature | None = None,
) -> Derived[ReportT]:
    """Make a new version from ``parent`` with ``produce``, check it, and push it.

    Args:
        produce: called with the parent's checkout and an empty directory to write into;
            returns what it wrote. Whatever it raises propagates (after clean-up).
        kind: the job's name, recorded as the lineage's operation (``convert``, ...).
        check: called with the parent and the new model, both loaded; returns a report.
            It may also raise ``InvalidModel`` itself with a message of its own.
        parameters: the job's options, recorded in the lineage.
        name: the model to store the version under; default: the parent's model.
        aliases: aliases to point at the new version.
        description: the version's description; default: ``Produced.description``.
        signature: what the new model must promise; default: the parent's signature.

    Raises:
        NotFound: no such parent. InvalidName: a bad ``name`` or alias.
        VerificationFailed: the parent's files do not match their manifest.
        InvalidModel: the new model does not conform to the promised signature, or its
            check did not pass (nothing is stored either way).
        Whatever ``produce`` or ``check`` raise, and ``Registry.push``'s errors.
    """
    alias_list = [validate_alias(alias) for alias in aliases]
    target = validate_name(name) if name is not None else None
    record = registry.get(parent)
    root = scratch_root(registry.settings)
    sweep(root)  # what jobs killed earlier left behind
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now

    with scratch_directory(root) as scratch:
        checkout = Checkout(record, _checked_out(registry, record))
        lap("checkout")
        output = scratch / "output"
        output.mkdir()
        produced = produce(checkout, output)
        lap("produce")
        runtime = (
            registry.runtimes.get(produced.format)
            if produced.format
            else registry.runtimes.detect(produced.path)
        )
        info = runtime.inspect(
            produced.path,
            PushOptions(signature=produced.signature, trust_pickle=produced.trust_pickle),
        )
        problems = conform(signature or record.signature, info.signature)
        if problems:
            raise InvalidModel(
                f"the version derived from {record.ref} by {kind} does not promise what "
                f"{record.ref} promised: {'; '.join(problems)}; nothing was stored"
            )
        candidate = CheckedModel(
            runtime.load(
                info.files.root / info.files.entry,
                LoadOptions(metadata=info.metadata, trust_pickle=produced.trust_pickle),
            )
        )
        try:
            # Its files were verified just now; what it derived (an optimized graph) still is.
            original = registry.load(record.ref, LoadOptions(verify_derived=True), verify="never")
            try:
                report = check(original, candidate)
            finally:
                original.close()
        finally:
            candidate.close()
        if not report.passed:
            raise InvalidModel(
                f"the version derived from {record.ref} by {kind} did not pass its check: "
                f"{report.failures()}; nothing was stored"
            )
        lap("check")
        recorded = {**(parameters or {}), **produced.parameters}
        version = registry.push(
            produced.path,
            target or record.model,
            format=runtime.format,
            aliases=alias_list,
            description=produced.description if description is None else description,
            trust_pickle=produced.trust_pickle,
            lineage=Lineage(record.ref, kind, recorded),
            metrics=report.metrics(),
            signature=produced.signature,
        )
        lap("push")
    return Derived(version, record, dict(version.lineage.parameters), report, seconds)


def scratch_root(settings: Settings) -> Path:
    """Where jobs keep their scratch directories (see ``jobs.scratch``): ``jobs/`` in the
    home, local even when the store is not; with encryption at rest, beside the decrypted
    checkouts (``registry.store.plaintext``), since a job's output is plaintext weights."""
    if encryption_on(settings):
        return plaintext_base(settings) / "jobs"
    return settings.home.expanduser() / "jobs"


def conform(promised: Signature, given: Signature) -> list[str]:
    """What ``given`` fails to promise of ``promised``; empty when a client of the one can
    call the other unchanged.

    Every promised input must be taken under its name, in its datatype, and in every shape
    it was taken (a dynamic dimension stays dynamic); no new input may be required. Every
    promised output must be given under its name and shape, in its datatype or, for a
    floating-point one, another floating-point precision (a check judges the difference).
    """
    problems: list[str] = []
    given_inputs = {spec.name: spec for spec in given.inputs}
    given_outputs = {spec.name: spec for spec in given.outputs}
    for spec in promised.inputs:
        problems += _compare("input", spec, given_inputs.get(spec.name), exact_type=True)
    wanted = {spec.name for spec in promised.inputs}
    problems += [
        f"input {spec.name!r} is new: clients of the parent do not send it"
        for spec in given.inputs
        if spec.name not in wanted
    ]
    for spec in promised.outputs:
        problems += _compare("output", spec, given_outputs.get(spec.name), exact_type=False)
    return problems


def _compare(
    role: str, promised: TensorSpec, given: TensorSpec | None, *, exact_type: bool
) -> list[str]:
    if given is None:
        return [f"{role} {promised.name!r} is missing"]
    problems = []
    same_type = promised.datatype is given.datatype or (
        not exact_type and promised.datatype.numpy.kind == given.datatype.numpy.kind == "f"
    )
    if not same_type:
        problems.append(
            f"{role} {promised.name!r} is {given.datatype.value} where the parent's is "
            f"{promised.datatype.value}"
        )
    if promised.shape is not None and given.shape is not None:
        fits = len(promised.shape) == len(given.shape) and all(
            g < 0 or g == p for p, g in zip(promised.shape, given.shape, strict=True)
        )
        if not fits:
            problems.append(
                f"{role} {promised.name!r} has shape {_shape(given.shape)} where the parent's "
                f"is {_shape(promised.shape)}"
            )
    return problems


def _checked_out(registry: Registry, record: ModelVersion) -> Path:
    # A job reads the parent's files directly, so they are re-hashed whatever the registry's
    # verify policy: a derived version is never built from damaged bytes.
    directory = registry.checkout.checkout(list(record.files))
    for entry in record.files:
        path = directory / entry.path
        digest, size = hash_file(path) if path.is_file() else ("", -1)
        if digest != entry.digest or size != entry.size:
            raise VerificationFailed(
                f"{record.ref}: file {entry.path!r} does not match its manifest digest; "
                f"nothing can be derived from it. Run `modelport verify {record.ref}` and "
                "push the model again"
            )
    return directory


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"

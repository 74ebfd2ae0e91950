"""The optimization job: recipes applied to a version, each result measured against it,
gated, and only the best that passes every gate stored.

``optimize`` is a derive job (``modelport.jobs.derive``): inside the job's scratch
directory it makes every candidate (one recipe, or the ``--auto`` grid), measures each
against the parent (``measure``), judges it (``gates``) and hands the best passing one to
derive, which checks it still promises the parent's signature and pushes it with its
lineage (parent, recipe and every parameter, data, library versions, CPU flags) and its
report as metrics. When no candidate passes, nothing is stored and ``GateFailed`` says
which gate failed by how much.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.datasets.feed import Feed, load_feed
from modelport.errors import GateFailed, InvalidInput, ModelportError, UnsupportedFormat
from modelport.jobs import Checkout, Produced, derive
from modelport.optimization.auto import AUTO_CALIBRATION_ROWS, auto_recipes
from modelport.optimization.calibration import CHUNK as CALIBRATION_CHUNK
from modelport.optimization.calibration import DEFAULT_CALIBRATION_ROWS, reader
from modelport.optimization.environment import environment
from modelport.optimization.gates import Gates, judge, score
from modelport.optimization.measure import measure
from modelport.optimization.model_files import ONNX_FORMATS, ModelFiles, size_on_disk
from modelport.optimization.progress import progress_bar
from modelport.optimization.recipes import Recipe, apply, refusal
from modelport.optimization.report import Candidate
from modelport.optimization.workload import Workload, workload
from modelport.registry import ModelVersion, Registry
from modelport.runtimes import LoadedModel
from modelport.types import ModelRef, Signature

__all__ = ["DEFAULT_BUDGET_SECONDS", "Data", "OptimizationResult", "run_optimization"]

DEFAULT_BUDGET_SECONDS = 5.0
DataSource = str | Feed | None
Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Data:
    """Where the rows come from: dataset references (``digits@2:val``) or ``Feed`` objects."""

    calibration: DataSource = None
    validate: DataSource = None
    calibration_rows: int = DEFAULT_CALIBRATION_ROWS
    input_map: Mapping[str, str] | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class OptimizationResult:
    """The stored version, the candidate it was made from, and every candidate tried."""

    version: ModelVersion
    parent: ModelVersion
    report: Candidate
    candidates: list[Candidate]
    parameters: dict[str, Any]
    """The lineage parameters recorded with the version."""
    skipped: list[tuple[Recipe, str]] = field(default_factory=list)
    converted_from: str | None = None
    """The non-ONNX version that was converted first, if any."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version.to_dict(),
            "parent": self.parent.ref,
            "converted_from": self.converted_from,
            "parameters": self.parameters,
            "report": self.report.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "skipped": [{"recipe": r.label, "reason": why} for r, why in self.skipped],
        }


def run_optimization(
    registry: Registry,
    ref: ModelRef | str,
    recipes: Sequence[Recipe] | None,
    gates: Gates,
    data: Data,
    *,
    threads: int = 1,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    name: str | None = None,
    aliases: Iterable[str] = (),
    show_progress: bool = True,
    say: Say | None = None,
    on_candidates: Callable[[Sequence[Candidate]], None] | None = None,
) -> OptimizationResult:
    """Optimize ``ref`` with ``recipes`` (``None``: the ``--auto`` grid), store the best
    candidate that passes ``gates``. See ``modelport.optimize`` for the contract."""
    if threads < 1 or budget_seconds < 0 or data.calibration_rows < 1:
        raise InvalidInput("threads and --calibration-rows must be 1 or more, the budget 0 or more")
    if gates.max_accuracy_drop is not None and data.validate is None:
        raise InvalidInput(
            "--max-accuracy-drop needs labelled rows to measure accuracy on: give --validate "
            "DATASET (with a label column)"
        )
    record = registry.get(ref)
    converted_from = None
    if record.format not in ONNX_FORMATS:
        from modelport.conversion import convert

        (say or (lambda _: None))(f"converting {record.ref} to ONNX first")
        converted_from = record.ref
        record = convert(registry, record.ref).version
    job = _Optimization(
        registry, record, recipes, gates, data, threads=threads, budget=budget_seconds,
        show_progress=show_progress, on_candidates=on_candidates,
    )  # fmt: skip
    derived = derive(
        registry, record.ref, job.produce, kind="optimize", check=job.check,
        parameters=job.parameters(), name=name, aliases=aliases,
    )  # fmt: skip
    return OptimizationResult(
        derived.version, derived.parent, derived.report, job.candidates,
        derived.parameters, job.skipped, converted_from,
    )  # fmt: skip


class _Optimization:
    """The two steps optimization adds to a derive job, and what they share."""

    def __init__(
        self,
        registry: Registry,
        record: ModelVersion,
        recipes: Sequence[Recipe] | None,
        gates: Gates,
        data: Data,
        *,
        threads: int,
        budget: float,
        show_progress: bool,
        on_candidates: Callable[[Sequence[Candidate]], None] | None,
    ) -> None:
        self.registry = registry
        self.record = record
        self.recipes = list(recipes) if recipes is not None else None
        self.gates = gates
        self.data = data
        self.threads = threads
        self.budget = budget
        self.show_progress = show_progress
        self.on_candidates = on_candidates
        self.candidates: list[Candidate] = []
        self.skipped: list[tuple[Recipe, str]] = []
        self.sources: dict[str, Any] = {}
        self.chosen: Candidate | None = None
        self.made: list[ModelFiles] = []
        """Each candidate's files, in the order of ``candidates``."""
        self.work: Workload | None = None

    def parameters(self) -> dict[str, Any]:
        return {
            "auto": self.recipes is None,
            "gates": self.gates.to_dict(),
            "environment": environment(self.threads),
            "budget_seconds": self.budget,
        }

    def produce(self, checkout: Checkout, output: Path) -> Produced:
        import onnx

        files = _private_copy(checkout, output.parent / "parent")
        model = onnx.load(str(files.graph), load_external_data=False)
        config = files.transformer_config()
        if self.recipes is None:
            recipes, self.skipped = auto_recipes(model, config)
            if not recipes:
                reasons = "; ".join(f"{r.label}: {why}" for r, why in self.skipped)
                raise UnsupportedFormat(f"no recipe applies to {self.record.ref}: {reasons}")
        else:
            recipes = self.recipes
            for recipe in recipes:
                reason = refusal(recipe, model, config)
                if reason is not None:
                    raise UnsupportedFormat(
                        f"{recipe.label} does not apply to {self.record.ref}: {reason}"
                    )
        signature = self.record.signature
        validate = self._feed(self.data.validate, signature, None)
        self.work = workload(files, signature, validate)
        self.sources["validate"] = self.work.origin
        calibrate = self._calibration(files, signature, validate, auto=self.recipes is None)
        scratch = output.parent
        for index, recipe in enumerate(recipes):
            directory = scratch / f"candidate-{index}"
            directory.mkdir()
            candidate = self._candidate(
                directory, recipe, files, config=config, calibrate=calibrate
            )
            self.candidates.append(candidate)
            if candidate.error and self.recipes is not None:
                raise UnsupportedFormat(f"{recipe.label} on {self.record.ref}: {candidate.error}")
        if self.on_candidates is not None:
            self.on_candidates(self.candidates)
        passing = [c for c in self.candidates if c.passed and c.measurement is not None]
        if not passing:
            raise GateFailed(self._refusal())
        best = max(passing, key=lambda c: score(self.gates, c.measurement))  # type: ignore[arg-type]
        self.chosen = best
        stored = output / checkout.entry.name
        shutil.move(str(self.made[self.candidates.index(best)].root), stored)
        return Produced(
            stored,
            format=self.record.format,
            parameters={**best.recipe.parameters(), "made": best.made, **self.sources},
            description=f"{self.record.ref} optimized: {best.recipe.label}",
        )

    def check(self, parent: LoadedModel, candidate: LoadedModel) -> Candidate:
        # The candidate was measured on onnxruntime directly; this proves the version loads
        # and answers through its runtime as it will be served.
        assert self.chosen is not None
        assert self.work is not None
        if self.record.format == "onnx":
            names = {spec.name for spec in candidate.signature.inputs}
            rows = self.work.take(2) if not self.work.fixed else self.work.take(self.work.batch)
            candidate.predict({k: v for k, v in rows.items() if k in names})
        return self.chosen

    def _feed(self, source: DataSource, signature: Signature, limit: int | None) -> Feed | None:
        if source is None or isinstance(source, Feed):
            return source
        return load_feed(
            self.registry, source, signature, input_map=self.data.input_map,
            label=self.data.label, limit=limit,
        )  # fmt: skip

    def _calibration(
        self, files: ModelFiles, signature: Signature, validate: Feed | None, *, auto: bool
    ) -> Workload | None:
        recipes = self.recipes or []
        needed = auto or any(r.kind == "int8" for r in recipes)
        if not needed:
            return None
        rows = (
            min(self.data.calibration_rows, AUTO_CALIBRATION_ROWS)
            if auto
            else self.data.calibration_rows
        )
        feed = self._feed(self.data.calibration, signature, rows)
        if feed is not None:
            self.sources["calibration"] = feed.source
        elif validate is not None:
            feed = validate
            self.sources["calibration"] = f"{validate.source} (no --calibration given)"
        else:
            self.sources["calibration"] = "generated (no --calibration given)"
        work = workload(files, signature, feed, rows=rows)
        limited = {name: array[:rows] for name, array in work.inputs.items()}
        self.sources["calibration_rows"] = min(rows, work.rows)
        return Workload(limited, None, work.origin, work.batch, work.fixed, work.embedding)

    def _candidate(
        self,
        directory: Path,
        recipe: Recipe,
        files: ModelFiles,
        *,
        config: dict[str, Any] | None,
        calibrate: Workload | None,
    ) -> Candidate:
        assert self.work is not None
        made = files.copy_into(directory, "model")
        self.made.append(made)
        candidate = Candidate(recipe)
        try:
            calibrating = recipe.kind == "int8" and calibrate is not None
            total = calibrate.rows if calibrate is not None and calibrating else 0
            with progress_bar(
                f"calibrating {recipe.label}", total, enabled=self.show_progress and calibrating
            ) as advance:
                calibration = None
                if calibrate is not None:
                    chunk = calibrate.batch if calibrate.fixed else CALIBRATION_CHUNK
                    inputs = calibrate.inputs

                    def calibration() -> Any:
                        return reader(inputs, chunk, advance)

                candidate.made = apply(
                    recipe, files.graph, made.graph, workdir=directory,
                    calibration=calibration, config=config,
                )  # fmt: skip
            candidate.measurement = measure(
                (files.graph, self.record.size), (made.graph, size_on_disk(made.root)), self.work,
                threads=self.threads, budget_seconds=self.budget, scratch=directory / "profile",
                label=recipe.label, show_progress=self.show_progress,
            )  # fmt: skip
        except ModelportError as exc:
            candidate.error = exc.message
            return candidate
        except Exception as exc:  # onnxruntime refusing to run what a recipe wrote
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            candidate.error = f"the optimized graph does not run: {first}"
            return candidate
        candidate.verdicts = judge(self.gates, candidate.measurement)
        return candidate

    def _refusal(self) -> str:
        lines = [f"  {c.recipe.label}: {c.failures()}" for c in self.candidates if not c.passed]
        what = "the candidate" if len(self.candidates) == 1 else "no candidate"
        return (
            f"{what} made from {self.record.ref} "
            f"{'failed its gates' if len(self.candidates) == 1 else 'passed every gate'}; "
            "nothing was stored:\n" + "\n".join(lines)
        )


def _private_copy(checkout: Checkout, directory: Path) -> ModelFiles:
    """The parent's files copied (not linked) into the job's scratch: onnx refuses to read
    external weights through the checkout's hard links, and recipes read them all."""
    directory.mkdir()
    for entry in checkout.record.files:
        target = directory / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkout.directory / entry.path, target)
    return ModelFiles.of(directory / checkout.record.entry)

"""The one checked model: what every runtime's model needs, around a narrow ``Predictor``.

A runtime's ``load`` returns a ``Predictor``, which only runs its framework. ``CheckedModel``
wraps it and does, once for every format, the steps each runtime used to copy:

1. validate the inputs against the signature (names, datatypes, shapes);
2. resolve the requested outputs (all when none are named; an unknown name is refused);
3. refuse a call after ``close``;
4. translate framework exceptions: those the predictor lists as input errors become
   ``InvalidInput``, anything else ``Internal``, with the framework's message kept;
5. cast every output to the datatype its signature declares.

``run_validated`` skips step 1, for callers that validated each request already (the
server's batcher validates each request on arrival and then runs merged batches).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import Internal, InvalidInput, ModelportError, Unavailable
from modelport.runtimes.base import Predictor
from modelport.types import DataType, Signature, Tensors

__all__ = ["CheckedModel", "requested_outputs"]

log = logging.getLogger(__name__)


def requested_outputs(known: Sequence[str], outputs: Sequence[str] | None) -> list[str]:
    """The output names a ``predict`` call asks for: all of ``known`` when none are named,
    else the named ones in order, each once.

    Raises:
        InvalidInput: a name the model does not give, listing those it does.
    """
    if not outputs:
        return list(known)
    for name in outputs:
        if name not in known:
            valid = ", ".join(repr(output) for output in known)
            raise InvalidInput(f"unknown output {name!r}; the model gives {valid}")
    return list(dict.fromkeys(outputs))


class CheckedModel:
    """A ``LoadedModel`` around a ``Predictor`` (see the module doc); a context manager
    that closes the model on exit.

    Thread-safe as its predictor is; ``close`` may race with running calls, which finish.
    """

    def __init__(self, predictor: Predictor) -> None:
        self._predictor: Predictor | None = predictor
        self._signature = predictor.signature
        self._output_names = self._signature.output_names()
        self._output_dtypes = {
            spec.name: spec.datatype.numpy
            for spec in self._signature.outputs
            if spec.datatype is not DataType.BYTES
        }
        self._input_errors = predictor.input_errors

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def predictor(self) -> Predictor | None:
        """The wrapped predictor; ``None`` once closed."""
        return self._predictor

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        """Run the model on ``inputs``; return the ``outputs`` named, or all when none are.

        Raises:
            InvalidInput: inputs that do not match the signature (the message names the
                input), unknown output names, or values the framework rejects.
            InvalidModel: the model gives something its signature cannot hold.
            Internal: the framework failed in a way retrying will not fix.
            Unavailable: the model was closed.
        """
        self._signature.validate(inputs)
        return self.run_validated(inputs, outputs)

    def validate(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> None:
        """Check a request without running it: ``predict``'s checks, nothing more.

        Raises:
            InvalidInput: as for ``predict``.
        """
        self._signature.validate(inputs)
        if outputs:
            requested_outputs(self._output_names, outputs)

    def run_validated(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        """``predict`` for inputs already validated against ``signature`` (by ``validate``,
        one request at a time, before the batcher merged them).

        Raises:
            As for ``predict``, but inputs are not checked again.
        """
        names = requested_outputs(self._output_names, outputs)
        predictor = self._predictor
        if predictor is None:
            raise Unavailable("the model was closed; load it again to predict")
        try:
            raw = predictor.run(inputs, names)
        except ModelportError:
            raise
        except self._input_errors as exc:
            message = f"the model could not run on these inputs: {predictor.describe_error(exc)}"
            raise InvalidInput(message) from exc
        except Exception as exc:
            log.error("inference failed", exc_info=True)
            message = f"the model failed: {type(exc).__name__}: {predictor.describe_error(exc)}"
            raise Internal(message) from exc
        return {name: self._cast(name, raw[name]) for name in names}

    def _cast(self, name: str, value: Any) -> npt.NDArray[Any]:
        array: npt.NDArray[Any] = value if isinstance(value, np.ndarray) else np.asarray(value)
        dtype = self._output_dtypes.get(name)
        if dtype is None or array.dtype == dtype:
            return array
        return array.astype(dtype)

    def close(self) -> None:
        """Close the predictor; a second call does nothing."""
        predictor, self._predictor = self._predictor, None
        if predictor is not None:
            predictor.close()

    def __enter__(self) -> CheckedModel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

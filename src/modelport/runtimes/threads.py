"""Thread counts that a framework holds once per process (PyTorch, OpenCV)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from modelport.errors import InvalidInput

__all__ = ["ProcessThreads"]

log = logging.getLogger(__name__)


class ProcessThreads:
    """One framework's intra-op thread count: the first model that asks for a count sets it;
    a later model asking for another keeps it, with a warning in the log."""

    def __init__(self, framework: str) -> None:
        self._framework = framework
        self._lock = threading.Lock()
        self._chosen = 0

    def apply(self, wanted: int, setter: Callable[[int], None]) -> None:
        """Set ``wanted`` threads with ``setter`` unless 0 (the framework chooses) or set.

        Raises:
            InvalidInput: a negative count.
        """
        if wanted < 0:
            raise InvalidInput(
                f"intra_op_threads must be 0 (the runtime chooses) or more, not {wanted}"
            )
        with self._lock:
            if wanted in (0, self._chosen):
                return
            if self._chosen:
                log.warning(
                    "%s's intra-op thread count is one per process and already %d; a model "
                    "asking for %d runs with %d",
                    self._framework,
                    self._chosen,
                    wanted,
                    self._chosen,
                )
                return
            setter(wanted)
            self._chosen = wanted

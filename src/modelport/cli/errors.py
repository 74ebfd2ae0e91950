"""The CLI's exit codes (each error class's ``exit_code``, errors.py being the one table) and
the one-line message it prints."""

from __future__ import annotations

import sys

from modelport.errors import ModelportError


def exit_code(error: ModelportError) -> int:
    """The process exit code for ``error``."""
    return error.exit_code


def fail(error: ModelportError) -> int:
    """Print ``error: message`` on stderr (never a traceback) and return the exit code."""
    sys.stderr.write(f"error: {error.message}\n")
    return exit_code(error)

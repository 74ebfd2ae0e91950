"""The CLI's one table from error class to exit code, and the one-line message it prints."""

from __future__ import annotations

import sys

from modelport.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidModel,
    MissingDependency,
    ModelportError,
    NotFound,
    StorageError,
    Timeout,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
    VerificationFailed,
)

EXIT_CODES: dict[type[ModelportError], int] = {
    InvalidInput: 2,
    NotFound: 3,
    Conflict: 4,
    UnsupportedFormat: 5,
    InvalidModel: 6,
    VerificationFailed: 7,
    MissingDependency: 8,
    StorageError: 9,
    Unavailable: 10,
    Timeout: 11,
    Unauthorized: 12,
    Forbidden: 13,
}
GENERIC_EXIT = 1


def exit_code(error: ModelportError) -> int:
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return GENERIC_EXIT


def fail(error: ModelportError) -> int:
    """Print ``error: message`` on stderr (never a traceback) and return the exit code."""
    sys.stderr.write(f"error: {error.message}\n")
    return exit_code(error)

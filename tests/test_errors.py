"""errors.py is the one table of codes, statuses and exit codes; docs/errors.md prints it."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from modelport.cli.errors import exit_code
from modelport.errors import ERRORS, ModelportError, error_from_code

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def _documented_rows() -> list[tuple[str, ...]]:
    text = DOC.read_text()
    table = text.split("<!-- errors-table: start -->")[1].split("<!-- errors-table: end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:  # past the header and its rule
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        code, name, http, grpc_status, exit_ = cells[:5]
        rows.append((code.strip("`"), name.strip("`"), http, grpc_status, exit_))
    return rows


def test_the_docs_table_is_the_code() -> None:
    expected = [
        (cls.code, cls.__name__, str(cls.http_status), cls.grpc_status, str(cls.exit_code))
        for cls in ERRORS
    ]
    assert _documented_rows() == expected


def test_every_error_class_is_in_the_table_once_and_round_trips() -> None:
    codes = [cls.code for cls in ERRORS]
    assert len(set(codes)) == len(codes)
    assert set(ERRORS) == _all_subclasses(ModelportError)
    for cls in ERRORS:
        rebuilt = error_from_code(cls.code, "message")
        assert type(rebuilt) is cls
        assert rebuilt.message == "message"
        assert exit_code(rebuilt) == cls.exit_code
        assert cls.grpc_status in grpc.StatusCode.__members__
        assert re.fullmatch(r"[a-z_]+", cls.code)
    assert type(error_from_code("from_a_newer_server", "x")) is ModelportError


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_only_a_retry_me_error_is_a_503_or_a_429(cls: type[ModelportError]) -> None:
    retry_me = cls.grpc_status in ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
    assert (cls.http_status in (503, 429)) == retry_me


def _all_subclasses(cls: type[ModelportError]) -> set[type[ModelportError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _all_subclasses(sub)
    return found

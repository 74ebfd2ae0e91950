"""``modelport audit``: the audit log, and ``modelport audit verify``: its hash chain.

Both read the local registry database, or with ``--remote`` the server's (``/api/v1/audit``,
an admin key in ``MODELPORT_API_KEY``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from modelport.cli import render
from modelport.cli.options import JsonFlag
from modelport.cli.state import remote_url
from modelport.config import load_settings
from modelport.errors import VerificationFailed
from modelport.security.audit import AuditCheck, AuditLog, parse_since

app = typer.Typer(
    name="audit",
    help="The audit log: who changed what, when, from where. `audit verify` checks its chain.",
    invoke_without_command=True,
)

_COLUMNS = ("when", "who", "action", "target", "outcome", "address")


@app.callback()
def audit(
    context: typer.Context,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Entries from then on: 30m, 1h, 2d, 1w or an ISO time."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Only this model (or dataset).")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only this actor (key:ci, local:alice).")
    ] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="Only this action (alias.set), or a family (dataset.)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the newest N entries.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the audit log, oldest entry first."""
    if context.invoked_subcommand is not None:
        return
    filters: dict[str, Any] = {"model": model, "actor": actor, "action": action, "limit": limit}
    url = remote_url()
    if url is not None:
        found = _get(url, "/api/v1/audit", {**filters, "since": since})
    else:
        filters["since"] = parse_since(since) if since else None
        with _log() as log:
            found = [entry.to_dict() for entry in log.entries(**filters)]
    if as_json:
        render.print_json(found)
        return
    rows = [
        [
            e["at"][:19].replace("T", " "),
            e["actor"],
            e["action"],
            e["target"] or "-",
            e["outcome"],
            e["address"] or "-",
        ]
        for e in found
    ]
    render.table(_COLUMNS, rows)


@app.command()
def verify(
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            help="A head hash an earlier verify printed: fail if it is gone (newest entries "
            "deleted).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check the audit log's hash chain: exit 0 when intact, else name the first bad entry."""
    url = remote_url()
    if url is not None:
        params = {"expect_head": expect_head} if expect_head else {}
        check = AuditCheck(**_get(url, "/api/v1/audit/verify", params))
    else:
        with _log() as log:
            check = log.verify(expect_head=expect_head)
    if as_json:
        render.print_json(check.to_dict())
    if not check.ok:
        raise VerificationFailed(f"{check.problem} ({check.checked} entries before it are intact)")
    if not as_json:
        render.console().print(
            f"audit log intact: {check.checked} entries; head {check.head} "
            "(keep it: `audit verify --expect-head` it later to detect deleted newest entries)"
        )


@contextlib.contextmanager
def _log() -> Iterator[AuditLog]:
    from modelport.registry.db import open_database

    engine = open_database(load_settings().resolved_db_url())
    try:
        yield AuditLog(engine)
    finally:
        engine.dispose()


def _get(url: str, path: str, params: dict[str, Any]) -> Any:
    from modelport.client.api import api_session
    from modelport.client.rest import error_of

    query = {key: str(value) for key, value in params.items() if value is not None}
    with api_session(url) as session:
        response = session.get(path, params=query)
    if response.status_code >= 400:
        # httpx's response has every field error_of reads (status, body, reason).
        raise error_of(response)  # type: ignore[arg-type]
    return response.json()

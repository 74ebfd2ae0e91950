"""``modelport keys create|ls|revoke``: API keys, in the local registry database or, with
``--remote URL``, on that server (which needs an admin key in ``MODELPORT_API_KEY``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modelport.cli import render
from modelport.cli.options import JsonFlag
from modelport.cli.state import remote_url
from modelport.config import load_settings
from modelport.errors import Internal, ModelportError, Unavailable, error_from_code

app = typer.Typer(
    name="keys",
    help="API keys for a server: create (shown once), ls, revoke.",
    no_args_is_help=True,
)


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", "-n", help="The key's name (ci, alice, ...).")],
    scope: Annotated[
        str, typer.Option("--scope", help="predict, read, write or admin (each includes the last).")
    ] = "predict",
    models: Annotated[
        list[str] | None,
        typer.Option("--models", help="Model name patterns it may use ('iris*'); repeatable."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime: 30d, 12h, 90m [default: never].")
    ] = None,
    rate: Annotated[
        str | None, typer.Option("--rate", help="Most requests: 100/s, 6000/m, 10/h.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a key and print it: the only time it is shown (only its hash is stored)."""
    patterns = [p for given in models or ["*"] for p in given.split(",") if p]
    if remote_url():
        body = {"name": name, "scope": scope, "models": patterns, "expires": expires, "rate": rate}
        made = _call("POST", "/api/v1/keys", body)
    else:
        from modelport.security.keys import KeyStore

        with _registry() as registry:
            record, key = KeyStore(registry.engine).create(name, scope, patterns, expires, rate)
        made = {"key": key, **record.to_dict()}
    if as_json:
        render.print_json(made)
        return
    typer.echo(made["key"])
    typer.echo(
        f"key {made['name']!r} (id {made['key_id']}, scope {made['scope']}, models "
        f"{', '.join(made['models'])}): copy it now, it is not shown again",
        err=True,
    )


@app.command("ls")
def list_keys(
    include_revoked: Annotated[bool, typer.Option("--all", help="Revoked keys too.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List keys (never their secrets)."""
    if remote_url():
        suffix = "?all=1" if include_revoked else ""
        rows: list[dict[str, Any]] = _call("GET", f"/api/v1/keys{suffix}")["keys"]
    else:
        from modelport.security.keys import KeyStore

        with _registry() as registry:
            found = KeyStore(registry.engine).list(include_revoked=include_revoked)
        rows = [k.to_dict() for k in found]
    if as_json:
        render.print_json(rows)
        return
    render.table(
        ["NAME", "KEY ID", "SCOPE", "MODELS", "RATE", "EXPIRES", "STATE"],
        [
            [
                r["name"],
                r["key_id"],
                r["scope"],
                ",".join(r["models"]),
                r["rate"] or "-",
                (r["expires_at"] or "never")[:19],
                "revoked" if r["revoked_at"] else "live",
            ]
            for r in rows
        ],
    )


@app.command()
def revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: servers refuse it within a second or two."""
    if remote_url():
        _call("DELETE", f"/api/v1/keys/{name}")
    else:
        from modelport.security.keys import KeyStore

        with _registry() as registry:
            KeyStore(registry.engine).revoke(name)
    typer.echo(f"revoked key {name!r}")


def _registry() -> Any:
    from modelport.registry import Registry

    return Registry(load_settings())


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The JSON answer of the remote server, or its error raised as the modelport error."""
    import httpx

    from modelport.client.api import api_session

    url = remote_url()
    assert url is not None
    try:
        with api_session(url) as session:
            response = session.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach {url}: {exc}") from None
    if response.status_code < 400:
        return response.json()
    try:
        answer = response.json()
        return_error: ModelportError = error_from_code(answer["code"], answer["error"])
    except (ValueError, KeyError, TypeError):
        return_error = Internal(f"{url} answered {response.status_code}: {response.text[:300]}")
    raise return_error

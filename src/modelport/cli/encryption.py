"""``modelport encryption ...``: generate, status, rotate, encrypt-existing
(docs/encryption.md).

These commands work on the registry's own machine, with its master key: a server never
hands its key out, so they refuse ``--remote``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from modelport.cli import render
from modelport.cli.options import JsonFlag
from modelport.cli.state import remote_url
from modelport.config import load_settings
from modelport.errors import InvalidInput, VerificationFailed
from modelport.registry import Registry
from modelport.security.crypto import MasterKey, generate_key, parse_key, read_key_file

app = typer.Typer(
    name="encryption",
    help="Encryption at rest: generate a master key, status, rotate it, encrypt old files.",
    no_args_is_help=True,
)


def _local_registry() -> Registry:
    if remote_url():
        raise InvalidInput(
            "`modelport encryption` works on the registry's own machine, with its master key; "
            "run it there without --remote (or MODELPORT_REMOTE)"
        )
    return Registry(load_settings())


@app.command()
def generate(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the key to this new file (mode 0600)."),
    ] = None,
) -> None:
    """Print a new random master key (base64 of 32 bytes), or write it to a new file."""
    key = generate_key()
    if output is None:
        typer.echo(key)
        return
    try:
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(
            f"{output} exists; a key file is never overwritten (the key in it may still "
            "be needed). Choose a new name"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot create {output}: {exc.strerror}") from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    typer.echo(
        f"wrote a new master key (id {parse_key(key, source='it').key_id}) to {output}",
        err=True,
    )


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """The master key id in use and how many blobs are encrypted (per key id) or plaintext."""
    from modelport.security.rotation import status as read_status

    with _local_registry() as registry:
        state = read_status(registry)
    if as_json:
        render.print_json(state.to_dict())
        return
    console = render.console()
    console.print(f"master key: {state.key_id or 'none (encryption at rest is off)'}")
    for key_id, count in state.encrypted.items():
        note = "" if key_id == state.key_id else "  (not the key set)"
        console.print(f"encrypted under {key_id}: {count} blob(s){note}")
    console.print(f"plaintext: {state.plaintext} blob(s)")


@app.command()
def rotate(
    new_key_file: Annotated[
        Path | None, typer.Option("--new-key-file", help="File holding the new master key.")
    ] = None,
    new_key_env: Annotated[
        str | None,
        typer.Option("--new-key-env", help="Environment variable holding the new master key."),
    ] = None,
) -> None:
    """Re-wrap every data key under a new master key (blobs are not rewritten)."""
    from modelport.security.rotation import rotate as rotate_keys

    new = _new_key(new_key_file, new_key_env)
    with _local_registry() as registry:
        moved = rotate_keys(registry, new)
    render.console().print(
        f"re-wrapped {moved} data key(s) under master key {new.key_id}; set "
        "MODELPORT_ENCRYPTION_KEY (or MODELPORT_ENCRYPTION_KEY_FILE) to the new key now, and "
        "restart servers with it"
    )


@app.command("encrypt-existing")
def encrypt_existing() -> None:
    """Encrypt the files stored before encryption was on, and remove their old checkouts."""
    from modelport.security.rotation import encrypt_existing as seal_all

    with _local_registry() as registry:
        done = seal_all(registry)
    render.console().print(
        f"encrypted {done.encrypted} blob(s); removed {done.cache_entries_removed} plaintext "
        "checkout(s) and cached file(s)"
    )
    if done.damaged:
        raise VerificationFailed(
            f"{len(done.damaged)} plaintext blob(s) no longer match their digest and were left "
            f"as they are ({', '.join(d[:12] + '…' for d in done.damaged)}); run "
            "`modelport verify --all` to see which versions are damaged"
        )


def _new_key(path: Path | None, variable: str | None) -> MasterKey:
    if (path is None) == (variable is None):
        raise InvalidInput("give the new master key with --new-key-file F or --new-key-env VAR")
    if path is not None:
        return read_key_file(path)
    assert variable is not None
    text = os.environ.get(variable)
    if not text:
        raise InvalidInput(f"the environment variable {variable} is not set")
    return parse_key(text, source=f"the environment variable {variable}")

"""The ``modelport`` command: thin commands over the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli import render
from modelport.cli.audit import app as audit_app
from modelport.cli.dataset import app as dataset_app
from modelport.cli.encryption import app as encryption_app
from modelport.cli.errors import fail
from modelport.cli.keys import app as keys_app
from modelport.cli.optimize import optimize as optimize_command
from modelport.cli.options import AliasOption, JsonFlag, NameOption
from modelport.cli.pull import pull as pull_command
from modelport.cli.serve import serve as serve_command
from modelport.cli.state import open_registry, refuse_local_only, remote_url, set_remote_url
from modelport.cli.tune import tune as tune_command
from modelport.config import load_settings
from modelport.errors import InvalidInput, ModelportError, VerificationFailed
from modelport.registry import Registry
from modelport.types import ModelRef, Tensors, parse_tags

app = typer.Typer(
    name="modelport",
    help="Turn trained models into production services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        from modelport import __version__

        typer.echo(f"modelport {__version__}")
        raise typer.Exit


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    remote: Annotated[
        str | None,
        typer.Option(
            "--remote",
            envvar="MODELPORT_REMOTE",
            help="Run registry commands against this server's registry (https://hub:8000); "
            "the key comes from MODELPORT_API_KEY.",
        ),
    ] = None,
) -> None:
    """Turn trained models into production services."""
    set_remote_url(remote)
    refuse_local_only(ctx.invoked_subcommand)


_registry = open_registry


@app.command()
def push(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Model file or directory (Caffe: the prototxt, then the weights)."),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    alias: AliasOption = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="key=value; repeatable.")
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    format_name: Annotated[
        str | None, typer.Option("--format", help="Skip detection and use this format.")
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Accept formats that can run code from the file "
            "(pickle/joblib, TorchScript, torch.export).",
        ),
    ] = False,
    example: Annotated[
        Path | None,
        typer.Option(
            "--example", help="Example input (.npz/.npy/.json) for formats without a signature."
        ),
    ] = None,
    signature: Annotated[
        Path | None, typer.Option("--signature", help="JSON file with the inputs and outputs.")
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="What the model does, e.g. text-classification.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Store a model file or directory as the next version of NAME."""
    from modelport.tensorio import read_signature, read_untyped_tensors

    tags = parse_tags(tag or [])
    declared = read_signature(signature) if signature else None
    example_inputs = read_untyped_tensors(example) if example else None
    with _registry() as registry:
        version = registry.push(
            paths,
            name,
            example=example_inputs,
            signature=declared,
            task=task,
            aliases=alias or [],
            tags=tags,
            description=description,
            format=format_name,
            trust_pickle=trust_pickle,
        )
    if as_json:
        render.print_json(version.to_dict())
        return
    aliases = f", alias {', '.join(version.aliases)}" if version.aliases else ""
    render.console().print(
        f"pushed [bold]{version.ref}[/bold] ({version.format}, "
        f"{render.human_size(version.size)}, {len(version.files)} file(s){aliases})"
    )


@app.command("ls")
def list_models(
    name: Annotated[str | None, typer.Argument(help="List this model's versions.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List models, or the versions of one model."""
    with _registry() as registry:
        if name is None:
            models = registry.list_models()
            if as_json:
                render.print_json([m.to_dict() for m in models])
            else:
                render.models_table(models)
            return
        versions = registry.list_versions(name)
    if as_json:
        render.print_json([v.to_dict() for v in versions])
    else:
        render.versions_table(versions)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="name, name@3 or name@alias.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a version: metadata, signature, files and digests, lineage, aliases."""
    with _registry() as registry:
        version = registry.get(ref)
    if as_json:
        render.print_json(version.to_dict())
    else:
        render.version_detail(version)


@app.command()
def alias(
    ref: Annotated[
        str,
        typer.Argument(help="The version to point at (name@3), or the model name with --delete."),
    ],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias instead.")] = False,
    expect: Annotated[
        int | None,
        typer.Option(
            "--expect",
            metavar="VERSION",
            help="Only if ALIAS points at this version now (0: if it does not exist); "
            "else fail, changing nothing (compare-and-set).",
        ),
    ] = None,
) -> None:
    """Point ALIAS at a version (or remove it with --delete)."""
    with _registry() as registry:
        if delete:
            registry.delete_alias(ModelRef.parse(ref).name, alias_name)
            render.console().print(f"removed alias {alias_name} of {ModelRef.parse(ref).name}")
            return
        version = registry.set_alias(ref, alias_name, expected_version=expect)
    render.console().print(f"{version.model}@{alias_name} → {version.ref}")


@app.command()
def predict(
    ref: Annotated[str, typer.Argument(help="name, name@3 or name@alias.")],
    input_data: Annotated[
        str, typer.Option("--input", "-i", help="JSON object, or a .json/.npy/.npz file.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Save outputs to this .npz file.")
    ] = None,
    output_name: Annotated[
        list[str] | None, typer.Option("--output-name", help="Only these outputs; repeatable.")
    ] = None,
    remote: Annotated[
        str | None,
        typer.Option(
            "--remote",
            help="Ask a running server instead (http://HOST:PORT or grpc://HOST:PORT; https:// "
            "and grpcs:// over TLS); REF is then name or name@3.",
        ),
    ] = None,
) -> None:
    """Run one prediction in-process (or on a server, with --remote) and print the outputs
    as JSON."""
    from modelport.tensorio import read_tensors, tensors_to_json, write_npz

    if remote is None and remote_url() is not None:
        # The global --remote: the server's registry names the version, the server runs it.
        with _registry() as registry:
            ref = registry.get(ref).ref
        remote = remote_url()
    if remote is not None:
        outputs = _predict_remote(remote, ref, input_data, output_name)
    else:
        with _registry() as registry:
            model = registry.load(ref)
            try:
                inputs = read_tensors(input_data, model.signature)
                outputs = model.predict(inputs, output_name or None)
            finally:
                model.close()
    if output is not None:
        if output.suffix != ".npz":
            raise InvalidInput(f"--output must name a .npz file, got {output}")
        write_npz(output, outputs)
    render.print_outputs(tensors_to_json(outputs))


def _predict_remote(url: str, ref: str, input_data: str, output_name: list[str] | None) -> Tensors:
    """``predict --remote``: the inputs typed by the signature the server reports, as local
    predict types them by the registry's."""
    from modelport.client import Client
    from modelport.tensorio import read_tensors

    parsed = ModelRef.parse(ref)
    if parsed.alias is not None:
        raise InvalidInput(
            f"--remote takes a model name or name@VERSION, not the alias in {ref!r}: a "
            "server serves versions; name the version, or the model for its default"
        )
    with Client(url, **_client_credentials(url)) as client:
        signature = client.model_metadata(parsed.name, parsed.version).signature
        inputs = read_tensors(input_data, signature)
        return client.predict(parsed.name, inputs, version=parsed.version, outputs=output_name)


def _client_credentials(url: str) -> dict[str, Any]:
    """``Client`` keywords from the environment: MODELPORT_API_KEY, and for https:// and
    grpcs:// MODELPORT_TLS_CA / MODELPORT_TLS_CLIENT_CERT / MODELPORT_TLS_CLIENT_KEY."""
    from modelport.client.tls import SECURE_SCHEMES

    settings = load_settings()
    found: dict[str, Any] = {}
    if settings.api_key is not None:
        found["api_key"] = settings.api_key.get_secret_value()
    if url.partition("://")[0].lower() in SECURE_SCHEMES:
        found["tls_ca"] = settings.tls_ca
        found["client_cert"] = settings.tls_client_cert
        found["client_key"] = settings.tls_client_key
    return found


@app.command()
def verify(
    ref: Annotated[str | None, typer.Argument(help="name@3; omit with --all.")] = None,
    all_versions: Annotated[bool, typer.Option("--all", help="Verify every version.")] = False,
) -> None:
    """Re-hash stored files against their manifest; exit non-zero on any mismatch.

    The copies derived from a version on this machine (optimized graphs, what is served)
    are re-hashed too; one that changed is removed, to be built again on the next load.
    """
    with _registry() as registry:
        if all_versions:
            refs = [v.ref for m in registry.list_models() for v in registry.list_versions(m.name)]
        elif ref is not None:
            refs = [registry.get(ref).ref]
        else:
            raise InvalidInput("name a version to verify (e.g. iris@1) or pass --all")
        damaged = 0
        for version_ref in refs:
            problems = registry.verify(version_ref)
            damaged += bool(problems)
            status = "ok" if not problems else "DAMAGED"
            render.console().print(f"{version_ref}: {status}")
            for problem in problems:
                render.console().print(f"  {problem}", markup=False)
            render.derived_checks(registry.verify_derived(version_ref))
    if damaged:
        raise VerificationFailed(f"{damaged} of {len(refs)} version(s) failed verification")


@app.command("rm")
def remove(
    ref: Annotated[str, typer.Argument(help="name@3, or a model name with --all.")],
    force: Annotated[
        bool, typer.Option("--force", help="Delete even if an alias points at it.")
    ] = False,
    whole_model: Annotated[
        bool, typer.Option("--all", help="Delete the model and every version.")
    ] = False,
) -> None:
    """Delete a version (or a whole model with --all)."""
    with _registry() as registry:
        if whole_model:
            removed = registry.delete_model(ModelRef.parse(ref).name, force=force)
            render.console().print(f"removed model {ref} ({len(removed)} version(s))")
        else:
            version = registry.delete(ref, force=force)
            render.console().print(f"removed {version.ref}")


@app.command()
def gc() -> None:
    """Remove stored files no version references (e.g. left by an interrupted push)."""
    with _registry() as registry:
        report = registry.gc()
    render.console().print(
        f"removed {report.blobs_removed} blob(s) ({render.human_size(report.bytes_freed)}), "
        f"{report.staging_removed} interrupted push(es), {report.checkouts_removed} checkout(s), "
        f"{report.derived_removed} derived cache(s)"
    )
    if remote_url() is None:
        _sweep_jobs()


def _sweep_jobs() -> None:
    from modelport.jobs.derive import scratch_root
    from modelport.jobs.scratch import sweep

    swept = sweep(scratch_root(load_settings()))
    if swept:
        render.console().print(f"removed the scratch of {swept} interrupted job(s)")


app.command()(serve_command)
app.command("pull")(pull_command)
app.add_typer(dataset_app)
app.add_typer(audit_app)
app.add_typer(encryption_app)
app.add_typer(keys_app)
app.command("optimize")(optimize_command)
app.command()(tune_command)


@app.command()
def convert(
    ref: Annotated[str, typer.Argument(help="The version to convert: name@3 or name@alias.")],
    to: Annotated[str, typer.Option("--to", help="The format to convert to.")] = "onnx",
    opset: Annotated[
        int | None, typer.Option("--opset", help="ONNX operator set; default: the converter's.")
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset", help="Parity inputs: .npz (one array per input) or .npy (one input)."
        ),
    ] = None,
    rows: Annotated[int, typer.Option("--rows", help="Dataset rows to compare on.")] = 256,
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance", help="Abs and rel tolerance of float outputs; default per datatype."
        ),
    ] = None,
    name: NameOption = None,
    alias: AliasOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Convert a version (e.g. to ONNX), check it computes the same, store it as a new version."""
    from modelport.conversion import convert as convert_version

    with Registry(load_settings()) as registry:  # local only (refused with --remote)
        report = convert_version(
            registry, ref, to=to, opset=opset, dataset=dataset, rows=rows,
            tolerance=tolerance, name=name, aliases=alias or [],
        )  # fmt: skip
    if as_json:
        render.print_json(report.to_dict())
        return
    made = report.parameters
    how = ", ".join(
        f"{key} {made[key]}" for key in ("exporter", "opset") if made.get(key) is not None
    )
    render.console().print(
        f"converted {report.source.ref} → [bold]{report.version.ref}[/bold] "
        f"({report.version.format}, {made['converter']} {made['converter_version']}"
        f"{', ' + how if how else ''}); parity on {report.parity.rows} {report.parity.inputs} rows:"
    )
    render.table(*report.table())


def run(argv: list[str] | None = None) -> None:
    """Console entry point: every modelport error becomes one line on stderr and an exit code.

    Usage errors are Typer's own (exit 2); anything else escaping is a bug and keeps its
    traceback.
    """
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="modelport")
    except ModelportError as exc:
        sys.exit(fail(exc))

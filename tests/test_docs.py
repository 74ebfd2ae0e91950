"""The docs never lie: every ``python`` and ``bash`` block of the README and of ``docs/`` runs.

Each page runs on its own, its blocks in order, Python blocks in one namespace (in this
process) and bash blocks in a shell, in a fresh ``MODELPORT_HOME`` and a fresh working
directory holding ``iris.onnx`` (the README's quick-start model). The first block that
talks to ``127.0.0.1:8000`` (REST) or ``127.0.0.1:8001`` (gRPC) starts a real
``modelport serve`` of every model in that registry on free ports, and every block after
it has those addresses rewritten to the live ones. A block preceded by
``<!-- not-run: reason -->`` is skipped; they are counted and kept few.

Besides: the CLI reference against the commands themselves, ``--version``, links between
pages, the README's length, the serve config example, and what ``make demo`` installs.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

import modelport
from modelport import Registry, Settings
from tests.conftest import run_cli
from tests.onnx_models import save_model
from tests.serving_fixtures import Server, running_server

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
RUNNABLE = ("python", "bash")
FENCE = re.compile(
    r"^(?:<!-- not-run: (?P<reason>[^\n]+?) -->\n)?(?P<indent>[ ]*)```(?P<lang>[\w-]*)\n"
    r"(?P<body>.*?)^(?P=indent)```$",
    re.MULTILINE | re.DOTALL,
)
REST, GRPC = "127.0.0.1:8000", "127.0.0.1:8001"
MOST_NOT_RUN = 6

# Names a page may use before the branch that adds them is merged: a block using one that
# is missing here is not run, and its page is an expected failure until it lands.
# Drop an entry (and, when empty, this rule) once its branch is on main.
PENDING_NAMES: dict[str, Callable[[], bool]] = {}
# Pages other branches write, linked from here before they land.
PENDING_PAGES: set[str] = set()


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    body: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(
            page,
            text.count("\n", 0, match.start("body")) + 1,
            match["lang"],
            textwrap.dedent(match["body"]),
            match["reason"],
        )
        for match in FENCE.finditer(text)
    ]


def runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang in RUNNABLE and not b.not_run for b in blocks(p))]


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's model: iris logistic regression, input ``float_input`` FP32 [-1, 4]."""
    import numpy as np
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), labels)
    model = convert_sklearn(
        classifier,
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        options={id(classifier): {"zipmap": False}},
    )
    return save_model(model, tmp_path_factory.mktemp("docs") / "iris.onnx")


class PageRun:
    """One page's blocks, run in order against one home, one directory, one server."""

    def __init__(self, home: Path, work: Path, stack: contextlib.ExitStack) -> None:
        self.home, self.work, self.stack = home, work, stack
        self.namespace: dict[str, object] = {"__name__": "__docs__"}
        self.server: Server | None = None
        self.env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"

    def run(self, block: Block) -> None:
        body = block.body
        if REST in body or GRPC in body:
            server = self.serve()
            grpc_port = server.grpc_target.rsplit(":", 1)[1]
            body = body.replace(REST, server.http_url.removeprefix("http://"))
            body = body.replace(GRPC, f"127.0.0.1:{grpc_port}")
        if block.lang == "python":
            code = compile(body, block.where, "exec")
            # What a reader's Python does with a third-party warning, not pytest's `error`.
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                exec(code, self.namespace)
            return
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body], cwd=self.work, env=self.env,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, (
            f"{block.where}: bash block failed ({result.returncode}):\n{body}\n"
            f"{result.stdout}\n{result.stderr}"
        )

    def serve(self) -> Server:
        if self.server is None:
            with Registry(Settings(home=self.home)) as registry:
                if not registry.list_models():
                    registry.push(self.work / "iris.onnx", "iris", aliases=["production"])
                refs = [model.name for model in registry.list_models()]
            self.server = self.stack.enter_context(running_server(self.home, refs))
        return self.server


@pytest.mark.slow
@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_of_the_page_runs(
    page: Path, iris_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    shutil.copy(iris_model, work / "iris.onnx")
    monkeypatch.setenv("MODELPORT_HOME", str(home))
    for variable in ("MODELPORT_DB_URL", "MODELPORT_STORE_PATH", "MODELPORT_VERIFY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(work)
    pending = []
    with contextlib.ExitStack() as stack:
        run = PageRun(home, work, stack)
        for block in blocks(page):
            if block.lang not in RUNNABLE or block.not_run:
                continue
            missing = [n for n, here in PENDING_NAMES.items() if n in block.body and not here()]
            if missing:
                pending.append(f"{block.where} uses {', '.join(missing)}")
                continue
            run.run(block)
    if pending:
        pytest.xfail("not on this branch yet: " + "; ".join(pending))


def test_blocks_that_do_not_run_are_few_and_say_why() -> None:
    skipped = [b for page in PAGES for b in blocks(page) if b.not_run]
    assert len(skipped) <= MOST_NOT_RUN, [f"{b.where}: {b.not_run}" for b in skipped]
    assert all(b.lang in RUNNABLE for b in skipped), "mark only blocks that would run"
    for page in PAGES:
        marks = len(re.findall(r"^<!-- not-run:", page.read_text(), re.MULTILINE))
        assert marks == sum(1 for b in blocks(page) if b.not_run), f"{page}: a mark not on a block"


def test_no_block_that_runs_installs_packages() -> None:
    # An install belongs in ```text: run here, it would change the environment under test.
    for page in PAGES:
        for block in blocks(page):
            if block.lang in RUNNABLE and not block.not_run:
                assert "pip install" not in block.body, block.where


def test_the_readme_is_short_and_every_page_is_reachable() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    index = (DOCS / "index.md").read_text()
    linked = {
        (DOCS / target).resolve()
        for target in re.findall(r"\]\(([^)#]+\.md)\)", index)
        if not target.startswith("http")
    }
    for page in DOCS.rglob("*.md"):
        assert page == DOCS / "index.md" or page.resolve() in linked, f"{page} not in the index"


def test_relative_links_resolve() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            resolved = (page.parent / target).resolve()
            if not resolved.exists() and resolved.name not in PENDING_PAGES:
                raise AssertionError(f"{page.relative_to(ROOT)} links to missing {target}")


def _reference(groups: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    """The commands of docs/cli.md's reference block, each with the options it names; a
    command of a group (``modelport dataset push``) is named by both words."""
    (block,) = [b for b in blocks(DOCS / "cli.md") if b.lang == "text"]
    documented: dict[str, set[str]] = {}
    command = ""
    for line in block.body.splitlines():
        words = line.split("#", 1)[0].split()
        if line.startswith("modelport "):
            command = "" if words[1].startswith("-") else words[1]
            if command in groups and len(words) > 2 and words[2][0].isalpha():
                command = f"{command} {words[2]}"  # else the group's own options (`audit`)
        documented.setdefault(command, set()).update(re.findall(r"--[a-z][\w-]*", " ".join(words)))
    return documented


def test_the_cli_reference_names_every_command_and_option_there_is() -> None:
    from modelport.cli.main import app

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    actual = {"": {o for p in group.params for o in p.opts if o.startswith("--")} - {"--help"}}
    commands = dict(group.commands.items())
    groups = frozenset(n for n, c in commands.items() if isinstance(c, typer.core.TyperGroup))
    for name in groups:
        subgroup = commands.pop(name)
        assert isinstance(subgroup, typer.core.TyperGroup)
        own = {o for p in subgroup.params for o in p.opts if o.startswith("--")} - {"--help"}
        if own:  # a group that does something itself (`modelport audit --since 1h`)
            actual[name] = own
        commands.update({f"{name} {sub}": c for sub, c in subgroup.commands.items()})
    for name, command in commands.items():
        # A parameter is documented by its first long name; later ones are old spellings
        # still accepted (``--cache-size`` for ``--response-cache-size``).
        options = {
            o
            for p in command.params
            for o in ([o for o in p.opts if o.startswith("--")][:1] + list(p.secondary_opts))
        }
        actual[name] = {o for o in options if o.startswith("--")} - {"--help"}
    assert _reference(groups) == actual


def test_version() -> None:
    result = run_cli("--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"modelport {modelport.__version__}\n"
    assert modelport.__version__ == importlib.metadata.version("modelport")


def test_the_serve_config_example_parses(tmp_path: Path) -> None:
    from modelport.serving.config import load_config

    (toml,) = [b.body for b in blocks(DOCS / "serving.md") if b.lang == "toml"]
    path = tmp_path / "serve.toml"
    path.write_text(toml)
    config = load_config(path)
    assert config.max_models == 4
    assert config.memory_budget == 8 * 2**30
    assert config.models["iris"].instances == 2
    assert config.model_settings("iris").response_cache_size == 10000
    assert config.models["resnet"].traffic == {2: 90, 3: 10}
    assert config.model_settings("resnet").max_batch_size == 32


def test_make_demo_installs_only_what_the_demo_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    demo = project["optional-dependencies"]["demo"]
    assert sorted(re.split(r"[<>=\[ ]", d, maxsplit=1)[0] for d in demo) == [
        "scikit-learn", "skl2onnx"
    ]  # fmt: skip
    imported = set()
    for node in ast.walk(ast.parse((ROOT / "examples" / "demo.py").read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= {"numpy", "sklearn", "skl2onnx", "modelport"}, third_party
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\n$(DEMO_STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "'.[demo]'" in recipe and "dev" not in recipe

"""The docs cannot rot: every code block in README.md and docs/*.md is executed or checked here.

- `mm ...` command lines are parsed by the real CLI (every flag must exist and every value must parse);
- `bash scripts/x` / `python scripts/x` lines must name existing scripts;
- curl bodies (`-d '...'`) and ```json blocks must be valid JSON;
- ```python blocks must compile, and every name they import from swiftlite must exist;
- docs/models.md must equal what the registry generates.
The examples/ scripts are run against a live server in tests/test_deploy_examples.py, and the README's two
commands by tests/test_quickstart.py and CI itself.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(language_names: set[str]):
    for path in DOCS:
        for match in FENCE.finditer(path.read_text()):
            if match.group(1).lower() in language_names:
                line = path.read_text()[: match.start()].count("\n") + 1
                yield f"{path.relative_to(ROOT)}:{line}", match.group(2)


def shell_commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


SHELL = {"bash", "sh", "shell", "console", ""}
MM_LINES = [
    (where, command)
    for where, text in blocks(SHELL)
    for command in shell_commands(text)
    if re.match(r"^(\w+=\S+\s+)*mm\s", command.lstrip("$ "))
]


def test_docs_have_mm_commands():
    assert len(MM_LINES) >= 20  # the subcommand pages document their flags with examples


@pytest.mark.parametrize("where,command", MM_LINES, ids=[w for w, _ in MM_LINES])
def test_mm_command_lines_parse(where, command):
    from typer.main import get_command

    from swiftlite.cli import app
    from swiftlite.options import normalise_argv

    words = shlex.split(command.lstrip("$ ").split(" | ")[0].split(" > ")[0].split(" && ")[0], comments=True)
    while "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)  # CUDA_VISIBLE_DEVICES=0 NPROC_PER_NODE=2 ...
    assert words[0] == "mm", where
    group = get_command(app)
    if len(words) == 1 or words[1] in ("-h", "--help"):
        return
    assert words[1] in group.commands, f"{where}: unknown subcommand {words[1]!r}"
    command_object = group.commands[words[1]]
    args = normalise_argv(words[2:], command_object)
    if "--help" in args or "-h" in args:
        return
    command_object.make_context(f"mm {words[1]}", args)  # raises on an unknown flag or a bad value


def test_script_lines_name_existing_scripts():
    for where, text in blocks(SHELL):
        for command in shell_commands(text):
            for script in re.findall(r"(?:bash|python3?)\s+(scripts/\S+|examples/\S+)", command):
                assert (ROOT / script).is_file(), f"{where}: {script} does not exist"


def test_curl_bodies_and_json_blocks_are_valid_json():
    checked = 0
    for where, text in blocks(SHELL):
        for body in re.findall(r"-d\s+'(.*?)'", re.sub(r"\\\n", " ", text), re.S):
            json.loads(body)
            checked += 1
    for where, text in blocks({"json"}):
        try:
            json.loads(text)
        except json.JSONDecodeError:
            for line in text.splitlines():  # JSON Lines
                if line.strip():
                    json.loads(line)
        checked += 1
    assert checked >= 3


def test_python_blocks_compile_and_import_real_names():
    import importlib

    count = 0
    for where, text in blocks({"python", "py"}):
        tree = ast.parse(text, filename=where)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("swiftlite"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
        count += 1
    assert count >= 3


def test_models_doc_matches_the_registry():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_models_doc.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_doc_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"

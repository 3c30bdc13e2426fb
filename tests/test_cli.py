"""The `mm` entry point: commands, flag spellings, one-line errors, and a light import for --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from swiftlite.options import normalise_argv


def run_mm(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "swiftlite", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand():
    result = run_mm("--help")
    assert result.returncode == 0
    for command in ("sft", "infer", "export", "deploy", "list"):
        assert f"  {command} " in result.stdout


def test_help_imports_nothing_heavy():
    code = (
        "import sys, swiftlite.cli as cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for cmd in ('sft', 'infer', 'export', 'deploy', 'list'):\n"
        "    cli.main([cmd, '--help'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'modelscope', 'PIL', 'numpy') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout or result.stdout.strip().endswith("HEAVY=")


@pytest.mark.parametrize("command", ["sft", "infer", "export", "deploy"])
def test_every_flag_is_documented_in_both_spellings(command):
    from typer.main import get_command

    from swiftlite.cli import app

    click_command = get_command(app).commands[command]
    for param in click_command.params:
        if getattr(param, "param_type_name", "") != "option" or param.name == "help":
            continue
        assert param.help, f"mm {command} {param.opts[0]} has no help text"
        underscored = [o for o in param.opts if "_" in o]
        for option in underscored:
            assert option.replace("_", "-") in param.opts, f"{option} has no dash spelling"


def test_list_shows_both_families():
    result = run_mm("list")
    assert result.returncode == 0
    assert "qwen2-vl-2b-instruct" in result.stdout and "Qwen/Qwen2-VL-2B-Instruct" in result.stdout
    assert "llava1_5-7b-instruct" in result.stdout and "llava-hf/llava-1.5-7b-hf" in result.stdout
    families = run_mm("list", "families").stdout
    assert "qwen2-vl" in families and "llava1_5" in families and "tested offline" in families


def test_wrong_flag_is_one_line_naming_it():
    result = run_mm("list", "--famly", "x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--famly" in lines[0] and "Traceback" not in result.stderr


def test_unknown_model_type_suggests_close_names(tmp_path):
    result = run_mm("infer", "--model_type", "qwen2-vl-2b-instruc", "--val_dataset", str(tmp_path / "x.jsonl"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "unknown model type 'qwen2-vl-2b-instruc'" in result.stderr and "qwen2-vl-2b-instruct" in result.stderr


def test_normalise_argv_accepts_ms_swift_spellings():
    from typer.main import get_command

    from swiftlite.cli import app

    export = get_command(app).commands["export"]
    merge = [o for o in export.params if "--merge_lora" in getattr(o, "opts", [])][0]
    assert normalise_argv(["--merge_lora", "true"], export) == ["--merge_lora"]
    assert normalise_argv(["--merge_lora", "False"], export) == [merge.secondary_opts[0]]
    assert normalise_argv(["--merge-lora=true"], export) == ["--merge-lora"]
    assert normalise_argv(["--merge_lora", "--ckpt_dir", "x"], export) == ["--merge_lora", "--ckpt_dir", "x"]

    sft = get_command(app).commands["sft"]
    assert normalise_argv(["--dataset", "a.json", "b.jsonl#5", "--seed", "1"], sft) == [
        "--dataset", "a.json", "--dataset", "b.jsonl#5", "--seed", "1"]


def test_bad_boolean_value_is_a_usage_error():
    result = run_mm("export", "--ckpt_dir", "x", "--merge_lora", "maybe")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "maybe" in result.stderr

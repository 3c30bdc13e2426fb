"""OMP_WAIT_POLICY=PASSIVE for every `mm` command on a CPU-only machine, set before torch's OpenMP runtime starts
(GOMP_SPINCOUNT 0 in libgomp's own report of its settings), and a value the user set is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from swiftlite.cpu_defaults import gpu_visible

def environment(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OMP_", "GOMP_"))}
    # CUDA_VISIBLE_DEVICES="": a CPU-only run on any machine (on a GPU machine the policy is left alone)
    env.update(PYTHONPATH=os.pathsep.join(sys.path), TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="", **extra)
    return env


@pytest.mark.parametrize("command", ["sft", "infer", "export", "deploy", "list"])
def test_every_command_sets_the_policy_before_torch_loads(command):
    code = ("import os, sys\nfrom swiftlite.cli import main\nmain([%r, '--help'])\n"
            "print('POLICY', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)" % command)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment(),
                            timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "POLICY PASSIVE False", result.stdout + result.stderr


@pytest.fixture(scope="module")
def one_row(tmp_path_factory, shape_images):
    path = tmp_path_factory.mktemp("omp") / "rows.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>what colour"}],
                                "images": [str(shape_images["red"])]}) + "\n")
    return path


@pytest.mark.parametrize("user_value,policy,spin", [(None, "PASSIVE", "0"), ("ACTIVE", "ACTIVE", None)])
def test_mm_infer_runs_torch_with_the_policy(qwen2_vl_dir, one_row, tmp_path, user_value, policy, spin):
    env = environment(OMP_DISPLAY_ENV="VERBOSE", OMP_NUM_THREADS="1",
                      **({"OMP_WAIT_POLICY": user_value} if user_value else {}))
    result = subprocess.run([sys.executable, "-m", "swiftlite", "infer", "--model", str(qwen2_vl_dir), "--val_dataset",
                             str(one_row), "--max_new_tokens", "1", "--result_dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"OMP_WAIT_POLICY = '{policy}'" in result.stderr  # libgomp's report, printed when torch starts it
    if spin is not None:
        assert f"GOMP_SPINCOUNT = '{spin}'" in result.stderr  # idle threads sleep at once instead of spinning


def test_hidden_devices_count_as_cpu_and_the_users_value_wins():
    from swiftlite.cpu_defaults import apply_cpu_defaults

    environ = {"CUDA_VISIBLE_DEVICES": ""}
    assert not gpu_visible(environ)
    apply_cpu_defaults(environ)
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    apply_cpu_defaults(environ)
    assert environ["OMP_WAIT_POLICY"] == "ACTIVE"

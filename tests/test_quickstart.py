"""The README's first command: the whole loop on the offline demo, checked on its answers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop_and_answers_right(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--output_dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in ("=== 1/5", "=== 2/5", "=== 3/5", "=== 4/5", "=== 5/5"):
        assert step in out
    right, total = map(int, re.search(r"accuracy: (\d+)/(\d+)", out).groups())
    assert total == 36 and right / total >= 0.9
    # Every held-out row is printed with its answer and expected answer.
    assert len(re.findall(r"answer: \S+\s+expected: \S+", out)) == total
    assert re.search(r"answer: blue\n", out)  # the served merged model, asked through the openai SDK
    assert "server stopped (exit code 0)" in out
    merged = next((tmp_path / "demo" / "runs").glob("*/v*/checkpoint-*-merged"))
    assert (merged / "model.safetensors").is_file() and (merged / "preprocessor_config.json").is_file()

"""Reliability of `mm sft` (issue 11, training): a SIGKILL in the middle of a checkpoint save leaves only complete
checkpoints, `--resume_from_checkpoint true` continues from the newest one exactly (same losses and final weights
as a run that was never interrupted), and runs with one seed repeat while another seed differs.

All runs train the tiny LLaVA checkpoint in fp32 on CPU with one thread: 8 steps of 2 rows over 12 rows (so the
run crosses an epoch boundary and reshuffles), a checkpoint at every step, LoRA dropout on (an RNG consumer).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import solid_colour_dataset

from swiftlite.errors import UserError

STEPS = 8


def sft_flags(model_dir: Path, dataset: Path, output_dir: Path, *extra) -> list[str]:
    flags = ["--model", model_dir, "--dataset", dataset, "--max_steps", STEPS, "--batch_size", 2,
             "--gradient_accumulation_steps", 1, "--learning_rate", 1e-2, "--lora_dropout", 0.1, "--dtype", "fp32",
             "--save_steps", 1, "--logging_steps", 1, "--dataset_test_ratio", 0, "--dataloader_num_workers", 0,
             "--output_dir", output_dir, *extra]
    return [str(flag) for flag in flags]


def mm_sft(capsys, *argv) -> tuple[int, str]:
    """The real CLI, in this process: (exit code, stderr)."""
    from swiftlite.cli import main

    code = main(["sft", *argv])
    return code, capsys.readouterr().err


def losses(run_dir: Path) -> dict[int, float]:
    """logging.jsonl's training losses by step (each step must be logged once)."""
    steps = {}
    for line in (run_dir / "logging.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            step = int(record["global_step/max_steps"].split("/")[0])
            assert step not in steps, f"step {step} logged twice in {run_dir}"
            steps[step] = record["loss"]
    return steps


def adapter(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(checkpoint / "adapter_model.safetensors")


def assert_same_adapter(a: Path, b: Path, tolerance: float = 1e-4) -> None:
    first, second = adapter(a), adapter(b)
    assert first.keys() == second.keys() and first
    assert max(float((first[key] - second[key]).abs().max()) for key in first) <= tolerance


# Runs in this process use one thread, as the subprocess does (OMP_NUM_THREADS=1): same arithmetic.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def colour_rows(tmp_path_factory) -> Path:
    """12 rows: an image of one colour, and its name as the answer."""
    return solid_colour_dataset(tmp_path_factory.mktemp("reliability_data"), 12)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, llava_dir, colour_rows) -> Path:
    """The run that is never interrupted (seed 42): its run directory."""
    import torch

    from swiftlite.cli import main

    output = tmp_path_factory.mktemp("straight")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["sft", *sft_flags(llava_dir, colour_rows, output)]) == 0
    finally:
        torch.set_num_threads(previous)
    (run_dir,) = (output / "llava1_5").iterdir()
    assert sorted(losses(run_dir)) == list(range(1, STEPS + 1))
    return run_dir


def kill_during_a_save(command: list[str], output: Path, log: Path) -> tuple[Path, Path]:
    """Start `mm sft`, wait until one checkpoint is complete and the next one is being written into .staging/,
    and SIGKILL it right then. Returns (run dir, the staged checkpoint that was being written)."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=environment)
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None, f"mm sft ended before a save was caught: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint save seen in 180 s"
            if any(output.glob("llava1_5/v*/checkpoint-*")):
                staged = list(output.glob("llava1_5/v*/.staging/checkpoint-*"))
                if staged:
                    os.kill(process.pid, signal.SIGKILL)
                    break
            time.sleep(0.0005)
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return staged[0].parent.parent, staged[0]


def test_sigkill_during_a_save_then_resume_true_matches_the_uninterrupted_run(capsys, tmp_path, llava_dir,
                                                                               colour_rows, straight):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "swiftlite.cli", "sft", *sft_flags(llava_dir, colour_rows, output)]
    killed_run, staged = kill_during_a_save(command, output, tmp_path / "killed.log")

    # Killed mid-save: the half-written checkpoint is only in .staging/, every checkpoint-<step> is complete.
    killed_step = int(staged.name.split("-")[1])
    assert staged.is_dir() and not (killed_run / staged.name).exists()
    checkpoints = sorted(killed_run.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert checkpoints and int(checkpoints[-1].name.split("-")[1]) == killed_step - 1
    for checkpoint in checkpoints:
        for name in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt",
                     "rng_state.pth", "trainer_state.json", "sft_args.json"):
            assert (checkpoint / name).is_file(), f"{checkpoint.name}/{name}"
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == int(checkpoint.name[11:])
    # Same seed, same losses, in another process, up to the kill.
    expected = losses(straight)
    for step, loss in losses(killed_run).items():
        assert loss == pytest.approx(expected[step], abs=1e-4)

    # `true` looks at the newest run under --output_dir/<model_type>/, skips the leftover and says so.
    code, err = mm_sft(capsys, *sft_flags(llava_dir, colour_rows, output, "--resume_from_checkpoint", "true"))
    assert code == 0, err
    assert f"mm sft: ignoring the leftovers of an interrupted save in {killed_run / '.staging'}: {staged.name}" in err
    assert f"mm sft: resuming from {checkpoints[-1]}" in err
    resumed_run = Path(re.search(r"mm sft: output: (\S+)", err).group(1))
    assert resumed_run.parent == killed_run.parent and resumed_run != killed_run
    resumed = losses(resumed_run)
    assert sorted(resumed) == list(range(killed_step, STEPS + 1))  # continues right after the checkpoint
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], abs=1e-4), step
    assert_same_adapter(resumed_run / f"checkpoint-{STEPS}", straight / f"checkpoint-{STEPS}")
    recorded = json.loads((resumed_run / "sft_args.json").read_text())
    assert recorded["resume_from_checkpoint"] == str(checkpoints[-1])

    # --output_dir naming the killed run itself: continues in place, and its log reads as one run. A dataloader
    # worker prepares the rows this time: the losses do not depend on it, before or after the epoch boundary.
    code, err = mm_sft(capsys, *sft_flags(llava_dir, colour_rows, killed_run, "--resume_from_checkpoint", "auto",
                                          "--dataloader_num_workers", 1))
    assert code == 0, err
    assert f"mm sft: output: {killed_run}\n" in err and not list(killed_run.glob("llava1_5"))
    in_place = losses(killed_run)
    assert sorted(in_place) == list(range(1, STEPS + 1))
    for step, loss in in_place.items():
        assert loss == pytest.approx(expected[step], abs=1e-4), step
    assert_same_adapter(killed_run / f"checkpoint-{STEPS}", straight / f"checkpoint-{STEPS}")
    assert not (killed_run / ".staging").exists()  # the first save cleared the leftover


def test_one_seed_repeats_with_a_worker_and_another_seed_differs(capsys, tmp_path, llava_dir, colour_rows, straight):
    expected = losses(straight)
    # Same seed, rows prepared in a dataloader worker process instead of this one: the very same losses.
    code, err = mm_sft(capsys, *sft_flags(llava_dir, colour_rows, tmp_path / "again", "--dataloader_num_workers", 1))
    assert code == 0, err
    (again,) = (tmp_path / "again" / "llava1_5").iterdir()
    assert losses(again) == expected
    assert_same_adapter(again / f"checkpoint-{STEPS}", straight / f"checkpoint-{STEPS}", tolerance=0.0)

    # Another seed: another LoRA initialisation, shuffling and dropout, so other losses.
    code, err = mm_sft(capsys, *sft_flags(llava_dir, colour_rows, tmp_path / "other", "--seed", 7))
    assert code == 0, err
    (other,) = (tmp_path / "other" / "llava1_5").iterdir()
    other_losses = losses(other)
    assert sorted(other_losses) == sorted(expected)
    assert max(abs(other_losses[step] - expected[step]) for step in expected) > 1e-3
    first, second = adapter(other / f"checkpoint-{STEPS}"), adapter(straight / f"checkpoint-{STEPS}")
    assert any(float((first[key] - second[key]).abs().max()) > 1e-4 for key in first)


def test_lora_initialisation_follows_the_seed(llava_dir):
    """The adapter is created before the Trainer seeds anything: `mm sft` seeds first (swiftlite.api)."""
    import torch

    from swiftlite.api import seed_everything
    from swiftlite.models.loading import load_model, resolve_model
    from swiftlite.training.lora import apply_lora, resolve_target_modules

    def lora_a(seed: int) -> torch.Tensor:
        resolved = resolve_model(None, str(llava_dir))
        model = load_model(resolved.model_dir, resolved.family, torch.float32, device="cpu")
        seed_everything(seed)
        model = apply_lora(model, resolved.family, resolve_target_modules(model, resolved.family, ["DEFAULT"]),
                           rank=4, alpha=8, dropout=0.0)
        return torch.cat([p.detach().flatten() for name, p in model.named_parameters() if "lora_A" in name])

    assert torch.equal(lora_a(3), lora_a(3))
    assert not torch.equal(lora_a(3), lora_a(4))


def test_resume_true_finds_the_newest_complete_checkpoint_and_ignores_leftovers(tmp_path):
    from swiftlite.training.launch import find_resume_checkpoint

    def checkpoint(path: Path) -> Path:
        path.mkdir(parents=True)
        (path / "trainer_state.json").write_text("{}")
        return path

    runs = tmp_path / "out" / "llava1_5"
    checkpoint(runs / "v2-20250101-000000" / "checkpoint-3")
    newest = checkpoint(runs / "v2-20250101-000000" / "checkpoint-10")  # steps compare as numbers
    (runs / "v2-20250101-000000" / "checkpoint-12").mkdir()  # no trainer_state.json: not resumable
    (runs / "v2-20250101-000000" / ".staging" / "checkpoint-14").mkdir(parents=True)
    checkpoint(runs / "v1-20250101-000000" / "checkpoint-20")  # an older run
    (runs / "v10-20250101-000000" / ".staging" / "checkpoint-1").mkdir(parents=True)  # killed in its first save

    said: list[str] = []
    assert find_resume_checkpoint(str(tmp_path / "out"), "llava1_5", True, said.append) == (newest, False)
    assert said == [
        f"ignoring the leftovers of an interrupted save in {runs / 'v10-20250101-000000' / '.staging'}: checkpoint-1",
        f"{runs / 'v10-20250101-000000'}: no complete checkpoint, looking at older runs",
        f"ignoring the leftovers of an interrupted save in {runs / 'v2-20250101-000000' / '.staging'}: checkpoint-14",
    ]
    # --output_dir naming a run directory: that run, continued in place.
    assert find_resume_checkpoint(str(runs / "v1-20250101-000000"), "llava1_5", True, said.append) == (
        runs / "v1-20250101-000000" / "checkpoint-20", True)
    with pytest.raises(UserError, match=r"--resume_from_checkpoint true: no complete checkpoint-<step> in .*v10-"):
        find_resume_checkpoint(str(runs / "v10-20250101-000000"), "llava1_5", False, said.append)
    with pytest.raises(UserError, match=r"no complete checkpoint-<step> in .*nothing"):
        find_resume_checkpoint(str(tmp_path / "nothing"), "llava1_5", True, said.append)


def test_resume_true_without_a_checkpoint_is_one_line_before_loading_the_model(capsys, tmp_path, llava_dir,
                                                                               colour_rows):
    code, err = mm_sft(capsys, *sft_flags(llava_dir, colour_rows, tmp_path, "--resume_from_checkpoint", "true"))
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"mm sft: error: --resume_from_checkpoint true: no complete "
                                            f"checkpoint-<step> in {tmp_path.resolve()}/llava1_5/v*")
    assert "trainable parameters" not in err  # the model was never loaded
    assert not (tmp_path / "llava1_5").exists()


def test_resume_is_exact_with_evaluation_on(capsys, tmp_path, llava_dir, colour_rows):
    """Issue 17: `--eval_steps 10 --save_steps 10`, killed after checkpoint-20 and resumed from it: steps 21-40 equal
    the uninterrupted run's. They used to differ from step 31 on (by up to 5.6e-2): with persistent dataloader
    workers the evaluation loader's iterator starts once, at the run's first evaluation (step 10, or step 30 when
    resumed from checkpoint-20), drawing a seed from torch's global generator, which dropout also draws from."""
    validation = colour_rows.with_name("val.jsonl")  # beside the images
    validation.write_text("".join(colour_rows.read_text().splitlines(keepends=True)[:4]))
    extra = ["--max_steps", 40, "--eval_steps", 10, "--save_steps", 10, "--save_total_limit", 10,
             "--dataloader_num_workers", 1, "--val_dataset", validation]

    def run_flags(output: Path, *more) -> list[str]:
        flags = sft_flags(llava_dir, colour_rows, output)
        for name in ("--max_steps", "--save_steps", "--dataloader_num_workers"):  # replaced by `extra`
            index = flags.index(name)
            del flags[index:index + 2]
        return flags + [str(value) for value in [*extra, *more]]

    code, err = mm_sft(capsys, *run_flags(tmp_path / "straight"))
    assert code == 0, err
    (straight_run,) = (tmp_path / "straight" / "llava1_5").iterdir()
    expected = losses(straight_run)
    assert sorted(expected) == list(range(1, 41))

    # The same run in another process, SIGKILLed once checkpoint-20 is complete.
    output = tmp_path / "killed"
    environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    with open(tmp_path / "killed.log", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "swiftlite.cli", "sft", *run_flags(output)],
                                   stdout=subprocess.DEVNULL, stderr=stderr, env=environment)
    deadline = time.monotonic() + 300
    try:
        while not list(output.glob("llava1_5/v*/checkpoint-20")):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "checkpoint-20 not written in 300 s"
            time.sleep(0.0005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    (checkpoint,) = output.glob("llava1_5/v*/checkpoint-20")

    code, err = mm_sft(capsys, *run_flags(tmp_path / "resumed", "--resume_from_checkpoint", checkpoint))
    assert code == 0, err
    (resumed_run,) = (tmp_path / "resumed" / "llava1_5").iterdir()
    resumed = losses(resumed_run)
    assert sorted(resumed) == list(range(21, 41))
    differences = {step: abs(resumed[step] - expected[step]) for step in resumed}
    assert max(differences.values()) <= 1e-4, differences
    assert_same_adapter(resumed_run / "checkpoint-40", straight_run / "checkpoint-40")

"""Every failure of `mm` is one line and a non-zero exit (issue 17, CLI): Ctrl-C and SIGTERM of a real `mm sft`
process tree, the torchrun relaunch's failure, hyperparameters that would train into NaN, and runs that diverge.

The signal tests start `python -m swiftlite.cli sft` as its own process group with two dataloader worker
processes, wait until it has logged a training step, and signal it the way a terminal (Ctrl-C: the whole group)
or a scheduler (SIGTERM: the main process) does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import solid_colour_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return solid_colour_dataset(tmp_path_factory.mktemp("failure_rows"), 12)


def flags(model_dir: Path, dataset: Path, output: Path, *extra) -> list[str]:
    return [str(flag) for flag in ["--model", model_dir, "--dataset", dataset, "--batch_size", 2,
                                   "--gradient_accumulation_steps", 1, "--dtype", "fp32", "--logging_steps", 1,
                                   "--dataset_test_ratio", 0, "--dataloader_num_workers", 0, "--output_dir", output,
                                   *extra]]


def mm_sft(capsys, *argv) -> tuple[int, str]:
    from swiftlite.cli import main

    code = main(["sft", *argv])
    return code, capsys.readouterr().err


# ---- signals: a real process tree ------------------------------------------------------------------------------
def start_training(model_dir: Path, dataset: Path, output: Path, log: Path) -> subprocess.Popen:
    """`mm sft` for 100000 steps with 2 dataloader workers, in its own process group; returns once a step is logged."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "swiftlite.cli", "sft",
               *flags(model_dir, dataset, output, "--max_steps", 100000, "--save_steps", 100000,
                      "--dataloader_num_workers", 2)]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=environment,
                                   start_new_session=True)
    deadline = time.monotonic() + 300
    while not any("loss" in path.read_text() for path in output.glob("llava1_5/v*/logging.jsonl")):
        assert process.poll() is None, f"mm sft ended early: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no training step logged in 300 s"
        time.sleep(0.2)
    return process


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    """Running (a zombie has finished; reparented ones are reaped by init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("how", ["sigint_to_the_group", "sigterm_to_the_main_process"])
def test_a_signal_ends_mm_sft_with_one_line_its_code_and_no_worker_left(how, tmp_path, llava_dir, rows):
    log = tmp_path / "stderr.log"
    process = start_training(llava_dir, rows, tmp_path / "out", log)
    try:
        workers = children(process.pid)
        assert len(workers) == 2, workers  # the two dataloader workers
        if how == "sigint_to_the_group":  # Ctrl-C in a terminal: every process of the foreground group
            os.killpg(process.pid, signal.SIGINT)
        else:  # kill, docker stop, a scheduler
            os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
        left = [pid for pid in workers if alive(pid)]
    finally:
        stop(process)
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    err = log.read_text()
    expected = (130, "mm sft: interrupted") if how == "sigint_to_the_group" else (143, "mm sft: terminated (SIGTERM)")
    assert (process.returncode, err.strip().splitlines()[-1]) == expected, err[-3000:]
    for word in ("Traceback", "Error", "EOFError", "ConnectionResetError"):
        assert word not in err, err[-3000:]
    assert left == [], f"dataloader workers still running after mm sft exited: {left}"
    (run_dir,) = (tmp_path / "out" / "llava1_5").iterdir()
    assert not list(run_dir.glob("checkpoint-*")) and not list(run_dir.glob(".staging/*"))  # nothing half saved


def test_a_failed_torchrun_relaunch_is_the_exit_code(capsys, monkeypatch, tmp_path, llava_dir, rows):
    """`NPROC_PER_NODE=1 mm sft ...` runs the training under torchrun; the children's failure (here a bad row,
    found when they load the dataset) must be mm's exit code, so that `mm sft ... && mm export ...` stops."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(rows.read_text() + '{"messages": "not a list"}\n')
    monkeypatch.setenv("NPROC_PER_NODE", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, err = mm_sft(capsys, *flags(llava_dir, bad, tmp_path / "out", "--max_steps", 1))
    assert code == 1, err[-3000:]


def test_the_interrupt_code_comes_back_from_main():
    """click (not standalone) returns what `typer.Exit(code)` carried: main must hand it on, not 0."""
    import typer

    from swiftlite import cli

    @cli.app.command("fail-for-test", hidden=True)
    def fail_for_test() -> None:
        raise typer.Exit(7)

    try:
        assert cli.main(["fail-for-test"]) == 7
    finally:
        cli.app.registered_commands.pop()


# ---- hyperparameters that train into NaN: refused before the model loads ----------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "inf"], "--learning_rate inf: must be a finite number"),
    (["--learning_rate", "nan"], "--learning_rate nan: must be a finite number"),
    (["--learning_rate", "-1"], "--learning_rate -1.0: expected a positive number"),
    (["--learning_rate", "0"], "--learning_rate 0.0: expected a positive number"),
    (["--weight_decay", "nan"], "--weight_decay nan: must be a finite number"),
    (["--weight_decay", "-0.1"], "--weight_decay -0.1: expected a number >= 0"),
    (["--max_grad_norm", "inf"], "--max_grad_norm inf: must be a finite number"),
    (["--lora_dropout", "1.5"], "--lora_dropout 1.5: expected a number in [0, 1)"),
    (["--num_train_epochs", "nan"], "--num_train_epochs nan: must be a finite number"),
    (["--warmup_ratio", "nan"], "--warmup_ratio nan: must be a finite number"),
    (["--lora_alpha", "0"], "--lora_alpha 0: expected a positive number"),
    # inf passed `> 0`; with --freeze_vit false the vision tower would train at an infinite rate.
    (["--vit_lr", "inf", "--freeze_vit", "false"], "--vit_lr inf: must be a finite number"),
    (["--aligner_lr", "nan"], "--aligner_lr nan: must be a finite number"),
    # The Trainer took -5 as "off" and trained whole epochs; TrainingArguments refused -3 after the dataset was read.
    (["--max_steps", "-5"], "--max_steps -5: expected a positive number of steps, or -1"),
    (["--warmup_steps", "-3"], "--warmup_steps -3: expected a number of steps >= 0"),
    (["--seed", str(2 ** 64)], f"--seed {2 ** 64}: expected a whole number in [0, 2**32)"),
    (["--seed", "-1"], "--seed -1: expected a whole number in [0, 2**32)"),
])
def test_hyperparameters_are_checked_before_the_model_loads(capsys, tmp_path, llava_dir, rows, argv, message):
    code, err = mm_sft(capsys, *flags(llava_dir, rows, tmp_path, "--max_steps", 1, *argv))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mm sft: error: {message}"), err
    assert not (tmp_path / "llava1_5").exists()  # stopped before anything was loaded or created


# ---- runs that diverge stop, and save no non-finite weights -----------------------------------------------------
def test_a_diverging_run_stops_at_the_first_non_finite_loss(capsys, tmp_path, llava_dir, rows):
    """--learning_rate 1e30 is finite, and the first step's weights are too (huge); the next loss is NaN. The
    Trainer alone would log averages that skip NaN losses, save NaN weights and exit 0."""
    code, err = mm_sft(capsys, *flags(llava_dir, rows, tmp_path, "--max_steps", 6, "--learning_rate", 1e30,
                                      "--warmup_ratio", 0, "--save_steps", 100))
    assert code == 1
    assert err.strip().splitlines()[-1] == ("mm sft: error: step 2: the training loss is nan: the run diverged and "
                                            "was stopped; no checkpoint was saved. Try a lower --learning_rate or "
                                            "--max_grad_norm")
    assert "Traceback" not in err
    (run_dir,) = (tmp_path / "llava1_5").iterdir()
    assert not list(run_dir.glob("checkpoint-*"))


def test_non_finite_weights_are_never_saved(capsys, tmp_path, llava_dir, rows):
    """--learning_rate 1e39 overflows fp32 in the first update: the loss of step 1 was finite, its weights are not,
    and step 1 is a save step. The save is refused; no checkpoint (not even a staged one) holds them."""
    code, err = mm_sft(capsys, *flags(llava_dir, rows, tmp_path, "--max_steps", 4, "--learning_rate", 1e39,
                                      "--warmup_ratio", 0, "--save_steps", 1))
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("mm sft: error: step 1: the trained weight ") and "holds NaN or inf" in last, err
    assert "no checkpoint was saved" in last
    (run_dir,) = (tmp_path / "llava1_5").iterdir()
    assert not list(run_dir.glob("checkpoint-*")) and not list(run_dir.glob(".staging/*"))


# ---- rows that cannot be decoded: file:row, not a traceback -----------------------------------------------------
def test_bytes_that_are_not_utf8_are_a_file_row_error(capsys, tmp_path, llava_dir, rows):
    good = rows.read_bytes().splitlines(keepends=True)
    jsonl = rows.with_name("latin1.jsonl")  # beside the images its rows name
    jsonl.write_bytes(good[0] + good[1].replace(b"what colour", b"what col\xffour") + good[2])
    code, err = mm_sft(capsys, *flags(llava_dir, jsonl, tmp_path, "--max_steps", 1))
    assert (code, err.strip().splitlines()) == (1, [
        f"mm sft: error: {jsonl}:2: not UTF-8 text (byte 0xff at column 59); save the file as UTF-8 "
        "(pass --strict false to skip bad rows)"])
    code, err = mm_sft(capsys, *flags(llava_dir, jsonl, tmp_path, "--max_steps", 1, "--strict", "false"))
    assert code == 0 and "1 bad rows skipped" in err, err

    # .csv and .json files are decoded whole: the line and column of the first bad byte.
    for name, data, where in (("latin1.csv", b"query,response\nhi,hello\nh\xe9llo,there\n", "3: not UTF-8 text "
                               "(byte 0xe9 at column 2)"),
                              ("latin1.json", b'[{"query": "hi", "response": "hello"},\n {"query": "\xe9"}]',
                               "2: not UTF-8 text (byte 0xe9 at column 13)")):
        path = tmp_path / "files" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        code, err = mm_sft(capsys, *flags(llava_dir, path, tmp_path / "files", "--max_steps", 1))
        assert (code, err.strip().splitlines()) == (1, [f"mm sft: error: {path}:{where}; save the file as UTF-8"])
    assert not (tmp_path / "files" / "llava1_5").exists()  # refused before anything was loaded


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_the_processor_rejects_is_a_file_row_error(capsys, tmp_path, qwen2_vl_dir, rows, workers):
    """A 400x1 image: Qwen2-VL's processor refuses aspect ratios over 200 with a ValueError, raised while the row
    is encoded, in a dataloader worker when there is one."""
    from PIL import Image

    Image.new("RGB", (400, 1), (220, 30, 30)).save(rows.with_name("thin.png"))
    dataset = rows.with_name("thin.jsonl")
    dataset.write_text(rows.read_text().splitlines(keepends=True)[0] + json.dumps(
        {"messages": [{"role": "user", "content": "<image>what colour is it"},
                      {"role": "assistant", "content": "red"}], "images": ["thin.png"]}) + "\n")
    code, err = mm_sft(capsys, *flags(qwen2_vl_dir, dataset, tmp_path, "--max_steps", 1,
                                      "--dataloader_num_workers", workers))
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"mm sft: error: {dataset}:2: absolute aspect ratio must be smaller than "
                                            "200, got 400.0 (pass --strict false to skip bad rows)"), err


# ---- a full disk: one line naming the disk and the directory, nothing half written -----------------------------
def in_a_full_disk(directory: Path, size: str, command: list[str], tmp_path: Path) -> tuple[int, str]:
    """Run `command` with `directory` on a tmpfs of `size` (a real filesystem that fills up: writes fail with
    ENOSPC), mounted in a private mount namespace (`unshare --user --map-root-user --mount`), so that nothing
    outside the command sees it and no privilege is needed where user namespaces are allowed. Returns
    (exit code, stderr) and leaves a listing of the directory in tmp_path/listing (the tmpfs goes with the
    namespace)."""
    directory.mkdir(parents=True, exist_ok=True)
    listing = tmp_path / "listing"
    script = (f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && "$@" 2>"$0.err"; code=$?; '
              f'find "{directory}" -mindepth 1 > "{listing}"; exit $code')
    environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                           str(tmp_path / "command"), str(directory), *command], env=environment, timeout=600)
    return done.returncode, (tmp_path / "command.err").read_text()


def test_a_full_disk_is_one_line_for_sft_and_export(capsys, tmp_path, llava_dir, rows):
    disk = tmp_path / "disk"
    cli = [sys.executable, "-m", "swiftlite.cli"]
    # sft: the run directory's small files fit in 64 KiB, checkpoint-1 (about 160 KB) does not.
    code, err = in_a_full_disk(disk, "64k", [*cli, "sft", *flags(llava_dir, rows, disk, "--max_steps", 2,
                                                                 "--save_steps", 1, "--add_output_dir_suffix",
                                                                 "false")], tmp_path)
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"mm sft: error: no space left on the disk mounted at {disk} (0 bytes free), which holds {disk}: "
        "checkpoint-1 was not saved (its partial files are removed); free some space or choose another directory")
    assert sorted(Path(line).name for line in (tmp_path / "listing").read_text().split()) == [
        "logging.jsonl", "sft_args.json"]  # no checkpoint, no .staging leftovers

    # export: the merged weights (about 350 KB) do not fit; the target never appears, the temp dir is removed.
    code, err = mm_sft(capsys, *flags(llava_dir, rows, tmp_path / "trained", "--max_steps", 1))
    assert code == 0, err
    (checkpoint,) = (tmp_path / "trained").glob("llava1_5/v*/checkpoint-1")
    target = disk / "merged"
    code, err = in_a_full_disk(disk, "64k", [*cli, "export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true",
                                             "--output_dir", str(target)], tmp_path)
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(
        f"mm export: error: no space left on the disk mounted at {disk} (")
    assert err.strip().splitlines()[-1].endswith(
        f"which holds {disk}: merged was not written (its partial files are removed); free some space or choose "
        "another directory")
    assert (tmp_path / "listing").read_text() == ""  # neither the target nor its temp dir


def test_mm_infer_skips_or_stops_at_an_image_the_processor_rejects(capsys, tmp_path, qwen2_vl_dir, rows):
    from PIL import Image

    from swiftlite.cli import main

    Image.new("RGB", (400, 1), (220, 30, 30)).save(rows.with_name("thin.png"))
    dataset = rows.with_name("thin_infer.jsonl")
    dataset.write_text(rows.read_text().splitlines(keepends=True)[0] + json.dumps(
        {"messages": [{"role": "user", "content": "<image>what colour is it"}], "images": ["thin.png"]}) + "\n")
    common = ["infer", "--model", str(qwen2_vl_dir), "--val_dataset", str(dataset), "--max_new_tokens", "2",
              "--result_dir", str(tmp_path)]
    assert main(common) == 0
    err = capsys.readouterr().err
    assert f"skipped {dataset}:2: absolute aspect ratio must be smaller than 200, got 400.0" in err and (
        "Traceback" not in err)
    assert main([*common, "--strict", "true"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mm infer: error: {dataset}:2: absolute aspect ratio must be smaller than 200, got 400.0")


def test_mm_infer_names_each_row_it_cannot_read(capsys, tmp_path, llava_dir, rows):
    """Without --strict, mm infer skips the rows it cannot read; it used to say only "1 row(s) skipped"."""
    from swiftlite.cli import main

    good = rows.read_bytes().splitlines(keepends=True)
    jsonl = rows.with_name("latin1_infer.jsonl")  # beside the images its rows name
    jsonl.write_bytes(good[0] + good[1].replace(b"what colour", b"what col\xffour") + good[2])
    common = ["infer", "--model", str(llava_dir), "--val_dataset", str(jsonl), "--max_new_tokens", "2",
              "--result_dir", str(tmp_path)]
    assert main(common) == 0
    err = capsys.readouterr().err
    assert f"[WARNING:swiftlite] skipped {jsonl}:2: not UTF-8 text (byte 0xff at column 59)" in err, err
    assert "Traceback" not in err
    (results,) = (tmp_path / "infer_result").glob("*.jsonl")
    assert len(results.read_text().splitlines()) == 2  # rows 1 and 3
    assert main([*common, "--strict", "true"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"mm infer: error: {jsonl}:2: not UTF-8 text (byte 0xff at column 59)")

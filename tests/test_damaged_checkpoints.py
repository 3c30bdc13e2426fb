"""A damaged checkpoint is one line naming the file, a non-zero exit and no traceback, for `mm infer --ckpt_dir`,
`mm export --ckpt_dir` and `mm sft --resume_from_checkpoint` (issue 17); nothing damaged is used silently.

One real LoRA run of the tiny LLaVA checkpoint (2 steps, a checkpoint at step 2 with optimizer, scheduler and
random state) and its merged export are built once; each case copies one of them, damages one file the way
the hostile battery did, and runs the real CLI in this process.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
from builders import solid_colour_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return solid_colour_dataset(tmp_path_factory.mktemp("damage_rows"), 6, growing=False)


def sft_flags(model_dir: Path, dataset: Path, output: Path, *extra) -> list[str]:
    return [str(flag) for flag in ["--model", model_dir, "--dataset", dataset, "--batch_size", 2,
                                   "--gradient_accumulation_steps", 1, "--dtype", "fp32", "--logging_steps", 1,
                                   "--dataset_test_ratio", 0, "--dataloader_num_workers", 0, "--output_dir", output,
                                   "--save_steps", 2, *extra]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llava_dir, rows) -> dict[str, Path]:
    """{"lora": checkpoint-2 of a LoRA run, "merged": its `mm export` output}."""
    import torch

    from swiftlite.cli import main

    output = tmp_path_factory.mktemp("trained")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["sft", *sft_flags(llava_dir, rows, output, "--max_steps", 2)]) == 0
        (checkpoint,) = output.glob("llava1_5/v*/checkpoint-2")
        assert main(["export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true"]) == 0
    finally:
        torch.set_num_threads(previous)
    return {"lora": checkpoint, "merged": checkpoint.with_name("checkpoint-2-merged")}


# ---- the damage ---------------------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write(data: bytes):
    return lambda path: path.write_bytes(data)


def header_not_json(path: Path) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"\xff" * length + data[8 + length:])


def header_length(value: int):
    return lambda path: path.write_bytes(struct.pack("<Q", value) + path.read_bytes()[8:])


def edit_json(change):
    def edit(path: Path) -> None:
        value = json.loads(path.read_text())
        path.write_text(json.dumps(change(value)))
    return edit


def replace_tensors(change):
    def edit(path: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(path)
        save_file({key: change(key, value) for key, value in tensors.items()}, path, metadata={"format": "pt"})
    return edit


def nan_weights(key, value):
    import torch

    return torch.full_like(value, float("nan"))


def wrong_shape(key, value):
    import torch

    return torch.zeros(value.shape[0], value.shape[1] + 3) if "lora_A" in key else value


def remove(path: Path) -> None:
    path.unlink()


def another_runs_optimizer(path: Path) -> None:
    """A whole optimizer.pt, of an optimizer over other parameters: only loading it into this run's fails."""
    import torch

    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([parameter])
    parameter.grad = torch.ones(3)
    optimizer.step()
    torch.save(optimizer.state_dict(), path)


RANDOM = bytes((index * 7919 + 13) % 251 for index in range(4096))
ADAPTER = "adapter_model.safetensors"

# (case id, which checkpoint, file, damage, the words the one line must hold besides the file's path)
DAMAGE = [
    ("adapter-truncated", "lora", ADAPTER, truncate, "truncated"),
    ("adapter-zero-bytes", "lora", ADAPTER, write(b""), "0 bytes"),
    ("adapter-random-bytes", "lora", ADAPTER, write(RANDOM), "not a safetensors file"),
    ("adapter-header-not-json", "lora", ADAPTER, header_not_json, "header is not JSON"),
    ("adapter-header-length-2**60", "lora", ADAPTER, header_length(2 ** 60), "truncated"),
    ("adapter-missing", "lora", ADAPTER, remove, "missing"),
    ("adapter-nan-weights", "lora", ADAPTER, replace_tensors(nan_weights), "NaN or inf"),
    ("adapter-wrong-shape", "lora", ADAPTER, replace_tensors(wrong_shape), "size mismatch"),
    ("adapter-config-invalid", "lora", "adapter_config.json", write(b'{"r": 8, "target_'), "not valid JSON"),
    ("adapter-config-wrong-rank", "lora", "adapter_config.json", edit_json(lambda c: dict(c, r=16)), "r=16"),
    ("adapter-config-no-such-modules", "lora", "adapter_config.json",
     edit_json(lambda c: dict(c, target_modules=["no_such_module"])), "target_modules names no module"),
    ("sft-args-a-list", "lora", "sft_args.json", write(b"[1, 2, 3]"), "expected a JSON object"),
    ("merged-weights-truncated", "merged", "model.safetensors", truncate, "truncated"),
    ("merged-weights-missing", "merged", "model.safetensors", remove, "missing"),
    ("merged-generation-config-invalid", "merged", "generation_config.json", write(b'{"do_sample": tr'),
     "not valid JSON"),
    ("merged-tokenizer-truncated", "merged", "tokenizer.json", truncate, "not valid JSON"),
]
# Files only `--resume_from_checkpoint` reads.
RESUME_DAMAGE = [
    ("optimizer-garbage", "lora", "optimizer.pt", write(RANDOM), "not a file written by torch.save"),
    ("optimizer-truncated", "lora", "optimizer.pt", truncate, "truncated"),
    ("optimizer-of-another-run", "lora", "optimizer.pt", another_runs_optimizer,
     "does not load into this run's optimizer"),
    ("scheduler-garbage", "lora", "scheduler.pt", write(RANDOM), "not a file written by torch.save"),
    ("scheduler-truncated", "lora", "scheduler.pt", truncate, "truncated"),
    ("rng-state-garbage", "lora", "rng_state.pth", write(RANDOM), "not a file written by torch.save"),
    ("rng-state-truncated", "lora", "rng_state.pth", truncate, "truncated"),
    ("trainer-state-invalid", "lora", "trainer_state.json", write(b'{"global_step": 2, "log_hi'), "not valid JSON"),
    ("trainer-state-step-a-string", "lora", "trainer_state.json",
     edit_json(lambda s: dict(s, global_step="2")), "global_step='2'"),
    ("trainer-state-step-negative", "lora", "trainer_state.json",
     edit_json(lambda s: dict(s, global_step=-5)), "global_step=-5"),
    ("training-args-garbage", "lora", "training_args.bin", write(RANDOM), "not a file written by torch.save"),
]


def damaged_copy(trained: dict, tmp_path: Path, which: str, file_name: str, damage) -> Path:
    source = trained[which]
    copy = tmp_path / "run" / source.name
    shutil.copytree(source, copy)
    if which == "lora":  # the run's own sft_args.json beside the checkpoint, as `mm sft` leaves it
        shutil.copy2(source.parent / "sft_args.json", copy.parent / "sft_args.json")
    damage(copy / file_name)
    return copy


def one_line(code: int, err: str, path: Path, words: str, prog: str) -> None:
    lines = [line for line in err.strip().splitlines() if not re.match(r"(Loading weights|\[\S+ \S+\] \[WARNING\])", line)]
    assert code != 0, err
    assert "Traceback" not in err, err
    assert lines[-1].startswith(f"{prog}: error: "), err
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], err
    assert str(path) in lines[-1] or path.name in lines[-1], err
    assert words in lines[-1], err


def run(capsys, *argv) -> tuple[int, str]:
    from swiftlite.cli import main

    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, which, file_name, damage, words", DAMAGE, ids=[case[0] for case in DAMAGE])
def test_mm_infer(capsys, tmp_path, trained, rows, case, which, file_name, damage, words):
    checkpoint = damaged_copy(trained, tmp_path, which, file_name, damage)
    code, err = run(capsys, "infer", "--ckpt_dir", checkpoint, "--val_dataset", rows, "--max_new_tokens", 2,
                    "--result_dir", tmp_path / "results")
    one_line(code, err, checkpoint / file_name, words, "mm infer")


@pytest.mark.parametrize("case, which, file_name, damage, words", DAMAGE, ids=[case[0] for case in DAMAGE])
def test_mm_export(capsys, tmp_path, trained, case, which, file_name, damage, words):
    checkpoint = damaged_copy(trained, tmp_path, which, file_name, damage)
    code, err = run(capsys, "export", "--ckpt_dir", checkpoint, "--merge_lora", "true")
    one_line(code, err, checkpoint / file_name, words, "mm export")
    assert [path.name for path in checkpoint.parent.iterdir() if path.is_dir()] == [checkpoint.name]  # nothing written


RESUMABLE = [case for case in DAMAGE if case[1] == "lora"] + RESUME_DAMAGE


@pytest.mark.parametrize("case, which, file_name, damage, words", RESUMABLE, ids=[case[0] for case in RESUMABLE])
def test_mm_sft_resume(capsys, tmp_path, trained, llava_dir, rows, case, which, file_name, damage, words):
    checkpoint = damaged_copy(trained, tmp_path, which, file_name, damage)
    output = tmp_path / "resumed"
    code, err = run(capsys, "sft", *sft_flags(llava_dir, rows, output, "--max_steps", 4,
                                              "--resume_from_checkpoint", checkpoint))
    one_line(code, err, checkpoint / file_name, words, "mm sft")
    assert not list(output.glob("llava1_5/v*/checkpoint-*"))


def test_resume_with_another_lora_rank_is_refused_before_loading(capsys, tmp_path, trained, llava_dir, rows):
    code, err = run(capsys, "sft", *sft_flags(llava_dir, rows, tmp_path, "--max_steps", 4, "--lora_rank", 4,
                                              "--resume_from_checkpoint", trained["lora"]))
    assert (code, err.strip().splitlines()) == (1, [
        f"mm sft: error: --lora_rank 4: the checkpoint {trained['lora']} was trained with r=8 "
        f"({trained['lora'] / 'adapter_config.json'}); pass --lora_rank 8 to resume it"])


def test_resume_without_optimizer_state_says_so_and_continues(capsys, tmp_path, trained, llava_dir, rows):
    checkpoint = damaged_copy(trained, tmp_path, "lora", "optimizer.pt", remove)
    code, err = run(capsys, "sft", *sft_flags(llava_dir, rows, tmp_path / "out", "--max_steps", 4,
                                              "--resume_from_checkpoint", checkpoint))
    assert code == 0, err
    assert (f"mm sft: warning: {checkpoint / 'optimizer.pt'} is missing: the optimizer's moments start from zero, "
            "so the resumed run will not match an uninterrupted one") in err
    assert list((tmp_path / "out").glob("llava1_5/v*/checkpoint-4"))


def test_an_undamaged_checkpoint_still_loads_everywhere(capsys, tmp_path, trained, llava_dir, rows):
    """The checks refuse nothing whole: the same commands succeed on the untouched checkpoints."""
    checkpoint = damaged_copy(trained, tmp_path, "lora", "sft_args.json", lambda path: None)
    code, err = run(capsys, "infer", "--ckpt_dir", checkpoint, "--val_dataset", rows, "--max_new_tokens", 2,
                    "--result_dir", tmp_path / "results")
    assert code == 0, err
    code, err = run(capsys, "infer", "--ckpt_dir", trained["merged"], "--val_dataset", rows, "--max_new_tokens", 2,
                    "--result_dir", tmp_path / "results")
    assert code == 0, err
    code, err = run(capsys, "export", "--ckpt_dir", checkpoint, "--merge_lora", "true")
    assert code == 0, err
    code, err = run(capsys, "sft", *sft_flags(llava_dir, rows, tmp_path / "out", "--max_steps", 4,
                                              "--resume_from_checkpoint", checkpoint))
    assert code == 0 and "warning" not in err, err


def test_a_chat_template_that_does_not_parse_is_one_line(capsys, tmp_path, trained, rows):
    """A merged checkpoint's own template (an adapter's infer uses the base model's): it failed only at the
    first row, as a jinja2 TemplateSyntaxError traceback."""
    checkpoint = damaged_copy(trained, tmp_path, "merged", "chat_template.jinja", write(b"{% if %}hello"))
    code, err = run(capsys, "infer", "--ckpt_dir", checkpoint, "--val_dataset", rows, "--max_new_tokens", 2,
                    "--result_dir", tmp_path / "results")
    one_line(code, err, checkpoint / "chat_template.jinja", "the chat template does not parse", "mm infer")

"""`mm sft` end to end on tiny real-architecture checkpoints (CPU): formats, labels, LoRA targets, freezing,
learning a toy task, resuming, torchrun, output layout, and errors in rows and flags."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from builders import COLOURS, write_jsonl

# Small, quick runs: one optimiser step per batch, batches prepared in the training process.
QUICK = ["--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0", "--logging_steps", "1",
         "--dataset_test_ratio", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def mm_sft(capsys, *argv) -> tuple[int, str]:
    """Run the real CLI in-process: (exit code, stderr)."""
    from swiftlite.cli import main

    code = main(["sft", *map(str, argv)])
    return code, capsys.readouterr().err


def checkpoint_from(stderr: str, which: str = "last") -> Path:
    match = re.search(rf"mm sft: {which}_model_checkpoint: (\S+)", stderr)
    assert match, stderr[-2000:]
    return Path(match.group(1))


def shape_image(path: Path, colour: str, rng: random.Random) -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (56, 56), (255, 255, 255))
    x, y, size = rng.randint(0, 18), rng.randint(0, 18), rng.randint(22, 36)
    ImageDraw.Draw(image).ellipse((x, y, x + size, y + size), fill=COLOURS[colour])
    image.save(path)
    return path.name


def colour_rows(folder: Path, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        colour = list(COLOURS)[index % 3]
        name = shape_image(folder / f"shape{seed}_{index}.png", colour, rng)
        rows.append({"messages": [{"role": "user", "content": "<image>what colour is it"},
                                  {"role": "assistant", "content": colour}], "images": [name]})
    return rows


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> dict:
    """48 training rows (a coloured circle: which colour?) and 9 held-out images of new circles."""
    folder = tmp_path_factory.mktemp("colours")
    train = write_jsonl(folder / "train.jsonl", colour_rows(folder, 48, seed=1))
    held_out = colour_rows(folder, 9, seed=2)
    return {"train": train, "held_out": [(folder / row["images"][0], row["messages"][1]["content"]) for row in held_out]}


def read_logs(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


# ---- labels ----------------------------------------------------------------------------------------------
def labelled_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Contiguous runs of labelled tokens, checking token by token that each label is its input token."""
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        if label == -100:
            if current:
                runs.append(current)
                current = []
            continue
        assert label == token
        current.append(token)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("family, end", [("qwen2-vl", "<|im_end|>"), ("llava1_5", "</s>")])
def test_labels_on_multi_turn_multi_image_row(tmp_path, tiny_checkpoints, shape_images, family, end):
    from swiftlite.data import load_dataset_rows
    from swiftlite.models.loading import load_tokenizer, resolve_model
    from swiftlite.templates import get_template
    from swiftlite.training.dataset import Collator, EncodedDataset

    row = {"conversations": [
        {"from": "user", "value": f"Picture 1:<img>{shape_images['red']}</img>\nPicture 2:<img>{shape_images['green']}</img>\nwhat colours"},
        {"from": "assistant", "value": "red and green"},
        {"from": "user", "value": "and no picture now?"},
        {"from": "assistant", "value": "yes"},
        {"from": "user", "value": f"<img>{shape_images['blue']}</img>this one"},
        {"from": "assistant", "value": "blue"},
    ]}
    rows, _ = load_dataset_rows([str(write_jsonl(tmp_path / "t.jsonl", [row]))])
    resolved = resolve_model(None, str(tiny_checkpoints[family]))
    tokenizer = load_tokenizer(resolved.model_dir)
    template = get_template(resolved.template_type, tokenizer)
    batch = Collator(template)([EncodedDataset(rows, template, max_length=4096)[0]])
    input_ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    runs = labelled_runs(input_ids, labels)
    # Each reply is labelled with its end-of-turn token (LLaVA's template closes no turn: </s> is appended).
    assert [run[-1] for run in runs] == [tokenizer.convert_tokens_to_ids(end)] * 3
    assert [tokenizer.decode(run[:-1]).strip() for run in runs] == ["red and green", "yes", "blue"]
    # Nothing before a reply is labelled: the token just before each run is the prompt's last token.
    starts = [input_ids.index(run[0], i) for i, run in zip([0] * 3, runs)]
    assert all(labels[start - 1] == -100 for start in starts)
    image_id = template.token_id(template.meta.image_token)
    image_positions = [i for i, token in enumerate(input_ids) if token == image_id]
    assert all(labels[i] == -100 for i in image_positions)
    if family == "qwen2-vl":  # one token per merged 2x2 patch group of each image
        assert len(image_positions) == int(batch["image_grid_thw"].prod(dim=1).sum()) // 4
        assert batch["image_grid_thw"].shape[0] == 3
    else:
        assert batch["pixel_values"].shape[0] == 3
    assert batch["swiftlite_stats"]["samples"] == 1


def test_max_length_drops_or_truncates(tmp_path, llava_dir, shape_images):
    from swiftlite.data import load_dataset_rows
    from swiftlite.models.loading import load_tokenizer, resolve_model
    from swiftlite.templates import get_template
    from swiftlite.training.dataset import EncodedDataset

    long_text = {"query": "describe " * 40, "response": "a red circle"}
    short = {"query": "hi", "response": "hello"}
    image_row = {"query": "<image>" + "what colour " * 10, "response": "red", "images": [str(shape_images["red"])]}
    rows, _ = load_dataset_rows([str(write_jsonl(tmp_path / "t.jsonl", [long_text, short, image_row]))])
    template = get_template("llava1_5", load_tokenizer(resolve_model(None, str(llava_dir)).model_dir))
    full_lengths = [len(template.encode(row.conversation)["input_ids"]) for row in rows]
    limit = full_lengths[1] + 5
    assert full_lengths[0] > limit and full_lengths[2] > limit

    eager = EncodedDataset(rows, template, max_length=limit, lazy=False)
    assert len(eager) == 1 and set(eager.dropped) == {rows[0].source, rows[2].source}
    lazy = EncodedDataset(rows, template, max_length=limit)
    first = lazy[0]  # too long: replaced by the next row that fits, and reported
    assert first["input_ids"] == eager[0]["input_ids"] and [s for s, _ in first["_dropped"]] == [rows[0].source]

    truncated = EncodedDataset(rows, template, max_length=limit, truncation_strategy="truncation_left", lazy=False)
    kept = truncated.cache[0]
    assert len(kept["input_ids"]) == limit and len(kept["labels"]) == limit
    full = template.encode(rows[0].conversation)
    assert kept["input_ids"] == full["input_ids"][-limit:]  # the oldest tokens go, the reply stays
    assert list(truncated.dropped) == [rows[2].source]  # cutting would have split the image: dropped


# ---- what trains -----------------------------------------------------------------------------------------
def test_lora_targets_default_all_and_names(tiny_family):
    import torch
    from peft.tuners.lora import LoraLayer

    from swiftlite.models.loading import load_model, resolve_model
    from swiftlite.training.lora import apply_lora, resolve_target_modules

    family_name, model_dir = tiny_family
    resolved = resolve_model(None, str(model_dir))
    family = resolved.family
    model = load_model(resolved.model_dir, family, torch.float32, device="cpu")

    def under(name, prefixes):
        return any(name.startswith(prefix + ".") for prefix in prefixes)

    default = resolve_target_modules(model, family, ["DEFAULT"])
    assert default and all(under(name, family.language_model) for name in default)
    everything = resolve_target_modules(model, family, ["ALL"])
    assert any(under(name, family.vision_tower) for name in everything)
    assert any(under(name, family.aligner) for name in everything)
    assert not any(name == "lm_head" or name.startswith("lm_head.") for name in everything)
    assert set(default) < set(everything)
    named = resolve_target_modules(model, family, ["q_proj,v_proj"])
    assert named and all(name.endswith(("q_proj", "v_proj")) and under(name, family.language_model) for name in named)

    wrapped = apply_lora(model, family, default, rank=4, alpha=8, dropout=0.0)
    lora_modules = [name for name, module in wrapped.named_modules() if isinstance(module, LoraLayer)]
    assert lora_modules and not any(".visual." in name or ".vision_tower." in name for name in lora_modules)
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_full_with_frozen_vit_changes_only_the_language_model(capsys, tmp_path, llava_dir, colour_data):
    from safetensors.torch import load_file

    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", f"{colour_data['train']}#8", "--sft_type", "full",
                       "--max_steps", 3, "--batch_size", 2, "--learning_rate", 1e-2, "--output_dir", tmp_path, *QUICK)
    assert code == 0, err
    checkpoint = checkpoint_from(err)
    base, trained = load_file(llava_dir / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    vision = [key for key in base if "vision_tower" in key]
    projector = [key for key in base if "multi_modal_projector" in key]
    language = [key for key in base if "language_model" in key]
    assert vision and projector and language
    assert all((base[key] == trained[key]).all() for key in vision + projector)  # frozen: bit for bit
    assert sum(not (base[key] == trained[key]).all() for key in language) > len(language) // 2
    # A full checkpoint stands alone: tokenizer, processor and chat template files, and its description.
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                 "chat_template.jinja", "sft_args.json", "config.json"):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / "sft_args.json").read_text())["sft_type"] == "full"


def test_tiny_model_learns_colours_and_answers_held_out_images(capsys, tmp_path, llava_dir, colour_data):
    from swiftlite.conversation import Conversation
    from swiftlite.engine.generate import SamplingParams, generate
    from swiftlite.models.checkpoint import load_for_inference

    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", colour_data["train"], "--sft_type", "full",
                       "--max_steps", 100, "--batch_size", 4, "--learning_rate", 5e-3, "--warmup_ratio", 0,
                       "--save_steps", 100, "--output_dir", tmp_path, *QUICK)
    assert code == 0, err
    checkpoint = checkpoint_from(err)
    losses = [log["loss"] for log in read_logs(checkpoint.parent) if "loss" in log]
    assert losses[0] > 4.0
    assert sum(losses[-5:]) / 5 < 0.1 * losses[0]

    loaded = load_for_inference(ckpt_dir=str(checkpoint))  # nothing but the checkpoint directory
    rows = [loaded.template.encode(Conversation([{"role": "user", "content": "<image>what colour is it"}], [str(path)]))
            for path, _ in colour_data["held_out"]]
    results = generate(loaded.model, loaded.template, rows, [SamplingParams(max_new_tokens=4, temperature=0) for _ in rows])
    answers = [result.text.strip() for result in results]
    assert answers == [colour for _, colour in colour_data["held_out"]]


# ---- formats, layout, reloading --------------------------------------------------------------------------
def format_rows(kind: str, image: str) -> list[dict]:
    """Two rows in the given format: one with images (where the format has them), one text-only."""
    if kind == "conversations":
        return [{"conversations": [{"from": "user", "value": f"Picture 1:<img>{image}</img>\nPicture 2:<img>{image}</img>\nsame?"},
                                   {"from": "assistant", "value": "yes"}, {"from": "user", "value": "colour?"},
                                   {"from": "assistant", "value": "red"}]},
                {"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hello world"}]}]
    if kind == "messages":
        return [{"messages": [{"role": "system", "content": "answer in one word"},
                              {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                           {"type": "text", "text": "colour?"}]},
                              {"role": "assistant", "content": "red"}]},
                {"messages": [{"role": "user", "content": "a dog?"}, {"role": "assistant", "content": "no"}]}]
    if kind == "query":
        return [{"query": "<image>what shape", "response": "a circle", "history": [["hi", "hello"]], "images": [image]},
                {"query": "one two", "response": "three"}]
    return [{"instruction": "count", "input": "one two", "output": "three"}, {"instruction": "say yes", "output": "yes"}]


@pytest.mark.parametrize("kind, family", [("conversations", "qwen2-vl"), ("messages", "llava1_5"),
                                          ("query", "qwen2-vl"), ("alpaca", "llava1_5")])
def test_each_format_trains_with_mixed_batches(capsys, tmp_path, tiny_checkpoints, shape_images, kind, family):
    dataset = write_jsonl(tmp_path / f"{kind}.jsonl", format_rows(kind, str(shape_images["red"])))
    code, err = mm_sft(capsys, "--model", tiny_checkpoints[family], "--dataset", dataset, "--max_steps", 2,
                       "--batch_size", 2, "--output_dir", tmp_path / "out", *QUICK)
    assert code == 0, err
    run_dir = checkpoint_from(err).parent
    logs = read_logs(run_dir)
    assert [log["global_step/max_steps"] for log in logs if "loss" in log] == ["1/2", "2/2"]
    assert all(0 < log["loss"] < 20 for log in logs if "loss" in log)
    assert logs[-1]["train_samples"] == 4  # both rows (image and text-only) in each batch of two


def test_lora_run_layout_and_reload(capsys, tmp_path, qwen2_vl_dir, colour_data):
    from swiftlite.data import load_train_val
    from swiftlite.models.checkpoint import load_for_inference

    code, err = mm_sft(capsys, "--model_type", "qwen2-vl-2b-instruct", "--model_id_or_path", qwen2_vl_dir,
                       "--dataset", f"{colour_data['train']}#12", "--dataset_test_ratio", 0.25, "--max_steps", 4,
                       "--eval_steps", 2, "--save_steps", 2, "--save_total_limit", 1, "--batch_size", 2,
                       "--gradient_accumulation_steps", 1, "--logging_steps", 1, "--system", "be brief",
                       "--lora_target_modules", "ALL", "--output_dir", tmp_path)
    assert code == 0, err
    last, best = checkpoint_from(err, "last"), checkpoint_from(err, "best")
    run_dir = last.parent
    assert re.fullmatch(r"v0-\d{8}-\d{6}", run_dir.name) and run_dir.parent.name == "qwen2-vl-2b-instruct"
    assert last.name == "checkpoint-4" and best.name in ("checkpoint-2", "checkpoint-4")
    assert not (run_dir / ".staging").exists()
    for name in ("adapter_config.json", "adapter_model.safetensors", "sft_args.json", "trainer_state.json"):
        assert (last / name).is_file(), name
    assert (run_dir / "images" / "train_loss.png").stat().st_size > 1000
    assert (run_dir / "images" / "eval_loss.png").stat().st_size > 1000

    args = json.loads((last / "sft_args.json").read_text())
    assert args["model_type"] == "qwen2-vl-2b-instruct" and args["template_type"] == "qwen2-vl"
    assert args["model_id_or_path"] == str(qwen2_vl_dir.resolve()) and Path(args["model_id_or_path"]).is_absolute()
    assert args["system"] == "be brief" and args["sft_type"] == "lora" and args["dtype"] == "auto"
    assert args["lora_target_modules"] == ["ALL"] and args["lora_rank"] == 8 and args["seed"] == 42
    assert args["dataset"] == [f"{colour_data['train'].resolve()}#12"]

    logs = read_logs(run_dir)
    train_logs = [log for log in logs if "loss" in log]
    assert {"loss", "learning_rate", "epoch", "global_step/max_steps", "elapsed_time", "remaining_time"} <= set(train_logs[0])
    assert [log["global_step/max_steps"] for log in logs if "eval_loss" in log] == ["2/4", "4/4"]
    assert logs[-1]["last_model_checkpoint"] == str(last) and logs[-1]["best_model_checkpoint"] == str(best)

    # `mm infer --load_dataset_config true` finds the same held-out rows from the recorded arguments.
    _, val_rows, _ = load_train_val(**args)
    assert len(val_rows) == 3
    loaded = load_for_inference(ckpt_dir=str(last))
    assert loaded.adapters == {"default": str(last)}
    assert loaded.template.default_system == "be brief"
    vision_lora = [name for name, _ in loaded.model.named_modules() if "visual.blocks" in name and "lora_A" in name]
    assert vision_lora  # ALL adapted the vision tower too


def test_resume_continues_at_its_step_and_matches_uninterrupted_run(capsys, tmp_path, llava_dir, colour_data):
    from safetensors.torch import load_file

    common = ["--model", llava_dir, "--dataset", f"{colour_data['train']}#12", "--max_steps", 6, "--batch_size", 2,
              "--save_steps", 3, "--learning_rate", 1e-2, "--output_dir", tmp_path, *QUICK]
    code, err = mm_sft(capsys, *common)
    assert code == 0, err
    straight = checkpoint_from(err)
    code, err = mm_sft(capsys, *common, "--resume_from_checkpoint", straight.parent / "checkpoint-3")
    assert code == 0, err
    resumed = checkpoint_from(err)
    assert resumed.parent != straight.parent and resumed.name == "checkpoint-6"

    straight_losses = {log["global_step/max_steps"]: log["loss"] for log in read_logs(straight.parent) if "loss" in log}
    resumed_losses = {log["global_step/max_steps"]: log["loss"] for log in read_logs(resumed.parent) if "loss" in log}
    assert sorted(resumed_losses) == ["4/6", "5/6", "6/6"]  # continues at step 3
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(straight_losses[step], rel=1e-5)
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert all((a[key] - b[key]).abs().max() < 1e-6 for key in a)


# ---- errors ----------------------------------------------------------------------------------------------
def test_bad_row_is_one_line_naming_file_and_row_and_strict_false_skips(capsys, tmp_path, llava_dir):
    good = {"query": "hi", "response": "hello"}
    dataset = write_jsonl(tmp_path / "train.jsonl", [good, {"query": "<image>x", "response": "y", "images": ["gone.png"]}, good, good])
    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", dataset, "--max_steps", 1, "--output_dir", tmp_path, *QUICK)
    assert code == 1
    assert err.strip() == (f"mm sft: error: {dataset}:2: image file not found: gone.png (looked beside the dataset file "
                           "and in the working directory) (pass --strict false to skip bad rows)")

    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", dataset, "--strict", "false", "--max_steps", 1,
                       "--output_dir", tmp_path, *QUICK)
    assert code == 0, err
    assert "3 training rows, 0 validation rows, 1 bad rows skipped (--strict false)" in err
    assert read_logs(checkpoint_from(err).parent)[-1]["skipped_rows"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--sft_type", "qlora"], "mm sft: error: --sft_type qlora: expected lora or full"),
    (["--lora_target_modules", "no_such_layer"], "mm sft: error: --lora_target_modules no_such_layer: matches no linear layer"),
    (["--truncation_strategy", "right"], "mm sft: error: --truncation_strategy right: expected delete or truncation_left"),
    (["--freeze_vit", "maybe"], "mm sft: error: Got unexpected extra argument(s) (maybe)"),
    (["--max_steps", "ten"], "mm sft: error: Invalid value for '--max_steps'"),
    (["--no_such_flag", "1"], "mm sft: error: No such option: --no_such_flag"),
    (["--deepspeed", "default-zero2"], "mm sft: error: --deepspeed default-zero2: the deepspeed package is not installed"),
    (["--resume_from_checkpoint", "/nonexistent/checkpoint-3"], "mm sft: error: --resume_from_checkpoint /nonexistent/checkpoint-3: not a checkpoint"),
])
def test_bad_flags_give_one_line(capsys, tmp_path, llava_dir, argv, message):
    dataset = write_jsonl(tmp_path / "t.jsonl", [{"query": "hi", "response": "hello"}] * 2)
    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", dataset, "--output_dir", tmp_path, *QUICK,
                       "--max_steps", 1, *argv)
    assert code in (1, 2)
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if "error" in line.lower()] == lines[-1:], err
    assert lines[-1].startswith(message), err
    if "--lora_target_modules" not in argv:  # checked once the model's layers are known; the rest up front
        assert len(lines) == 1, err
    assert not list(tmp_path.glob("llava1_5/v*"))  # no run directory is left behind


def test_missing_dataset_and_model_are_one_line(capsys, tmp_path, llava_dir):
    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", tmp_path / "nope.jsonl")
    assert (code, err.strip()) == (1, f"mm sft: error: --dataset {tmp_path / 'nope.jsonl'}: no such file")
    code, err = mm_sft(capsys, "--dataset", tmp_path / "nope.jsonl")
    assert code == 1 and "--model_type" in err and len(err.strip().splitlines()) == 1


# ---- several processes -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_nproc_per_node_2_on_cpu_writes_a_checkpoint(tmp_path, llava_dir, colour_data):
    environment = dict(os.environ, NPROC_PER_NODE="2", OMP_NUM_THREADS="1")
    environment.pop("LOCAL_RANK", None)
    command = [sys.executable, "-m", "swiftlite.cli", "sft", "--model", str(llava_dir), "--dataset",
               f"{colour_data['train']}#12", "--max_steps", "3", "--batch_size", "2", "--output_dir", str(tmp_path),
               *QUICK]
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    checkpoint = checkpoint_from(finished.stderr)
    assert checkpoint.name == "checkpoint-3" and (checkpoint / "adapter_model.safetensors").is_file()
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    args = json.loads((checkpoint / "sft_args.json").read_text())
    assert args["world_size"] == 2
    summary = read_logs(checkpoint.parent)[-1]
    assert summary["train_samples"] == 12  # 3 steps x 2 processes x batch 2
    assert len(list(tmp_path.glob("llava1_5/v*"))) == 1  # both processes wrote to one run directory

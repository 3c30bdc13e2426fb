"""`mm infer` batch mode and checkpoints, through the real CLI entry (`swiftlite.cli.main`) on the tiny checkpoints.

LoRA checkpoints are built with peft directly (get_peft_model, lora_B perturbed so the adapter matters,
save_pretrained, an sft_args.json like `mm sft` writes); merged ones with merge_and_unload + save_pretrained +
the tokenizer/processor files, as `mm export` writes them. The tiny Qwen2-VL gets an untied random output head
(see test_inference_api.py) so that its answers depend on its weights and prompts.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swiftlite.cli import main

FAMILIES = ("qwen2-vl", "llava1_5")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from several threads, and on a shared 2-core machine OpenMP's spinning
    threads make them many times slower; restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_mm(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def result_rows(base: Path) -> list[dict]:
    files = sorted((Path(base) / "infer_result").glob("*.jsonl"))
    assert files, f"no results under {base}"
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?\.jsonl", files[-1].name)
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


# ---- data --------------------------------------------------------------------------------------------------
def write_dataset(folder: Path, shape_images, count: int = 20, prompts: bool = True) -> tuple[Path, list[dict]]:
    """A .jsonl of `count` rows in the formats users bring, and the record each row must produce.

    Every 4th row is a bare prompt with no reference answer, unless `prompts` is false (`mm sft` data)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(shape_images["green"], folder / "green.png")  # referenced relative to the dataset file
    red, green = str(shape_images["red"]), str(folder / "green.png")
    rows, expected = [], []
    for i in range(count):
        kind = i % 4 if prompts else i % 3
        if kind == 0:
            rows.append({"query": f"<image>what is in this image {i}", "response": f"a red circle {i}", "images": [red]})
            expected.append(dict(system=None, query=f"<image>what is in this image {i}", label=f"a red circle {i}",
                                 history=[], images=[red]))
        elif kind == 1:
            rows.append({"messages": [
                {"role": "system", "content": "answer in one word"},
                {"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": "hello world"},
                {"role": "user", "content": f"what shape {i}"}, {"role": "assistant", "content": f"a square {i}"}]})
            expected.append(dict(system="answer in one word", query=f"what shape {i}", label=f"a square {i}",
                                 history=[[f"hello {i}", "hello world"]], images=[]))
        elif kind == 2:
            rows.append({"conversations": [{"from": "user", "value": f"Picture 1:<img>green.png</img>\ndescribe {i}"},
                                           {"from": "assistant", "value": f"one green shape {i}"}]})
            expected.append(dict(system=None, query=f"Picture 1:<image>\ndescribe {i}", label=f"one green shape {i}",
                                 history=[], images=[green]))
        else:  # a prompt with no reference answer
            rows.append({"query": f"which colour do you see {i}"})
            expected.append(dict(system=None, query=f"which colour do you see {i}", label=None, history=[], images=[]))
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, expected


@pytest.fixture(scope="module")
def dataset(shape_images, tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), shape_images)


@pytest.fixture(scope="module")
def model_dirs(tiny_checkpoints, tmp_path_factory):
    from test_inference_api import untie_qwen_head

    untied = untie_qwen_head(tiny_checkpoints["qwen2-vl"], tmp_path_factory.mktemp("untied") / "qwen2-vl")
    return {"qwen2-vl": untied, "llava1_5": tiny_checkpoints["llava1_5"]}


# ---- batch -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_writes_every_row_with_its_label(family, model_dirs, dataset, tmp_path):
    path, expected = dataset
    code, _, err = run_mm("infer", "--model", model_dirs[family], "--val_dataset", path, "--max_new_tokens", 6,
                          "--max_batch_size", 8, "--result_dir", tmp_path)
    assert code == 0, err
    rows = result_rows(tmp_path)
    assert len(rows) == 20
    for row, want in zip(rows, expected):
        assert {key: row[key] for key in want} == want
        assert isinstance(row["response"], str) and row["response"]
    assert f"saved 20 result(s) to {tmp_path / 'infer_result'}" in err
    assert "20/20" in err  # the progress bar ran to the end

    # Batching changes nothing: the same rows one at a time give the same greedy answers.
    code, _, err = run_mm("infer", "--model", model_dirs[family], "--val_dataset", path, "--max_new_tokens", 6,
                          "--max_batch_size", 1, "--show_dataset_sample", 5, "--seed", 3, "--result_dir", tmp_path / "one")
    assert code == 0, err
    alone = result_rows(tmp_path / "one")
    assert len(alone) == 5
    batched = {row["query"]: row["response"] for row in rows}
    assert all(row["response"] == batched[row["query"]] for row in alone)


def test_unreadable_image_row_is_skipped_or_stops_with_strict(llava_dir, tmp_path, shape_images):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [
        {"query": "<image>what is this", "images": [str(shape_images["red"])]},
        {"query": "<image>and this", "images": [str(tmp_path / "broken.png")]},
        {"query": "hello"},
    ]) + "\n")
    code, _, err = run_mm("infer", "--model", llava_dir, "--val_dataset", path, "--max_new_tokens", 3,
                          "--result_dir", tmp_path)
    assert code == 0, err
    assert [row["query"] for row in result_rows(tmp_path)] == ["<image>what is this", "hello"]
    assert f"skipped {path}:2: cannot decode image" in err
    assert "1 row(s) skipped" in err

    code, _, err = run_mm("infer", "--model", llava_dir, "--val_dataset", path, "--strict", "true",
                          "--max_new_tokens", 3, "--no_save_result")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"mm infer: error: {path}:2: cannot decode image")
    assert "Traceback" not in err


# ---- checkpoints -------------------------------------------------------------------------------------------
def sft_args(base_dir: Path, family: str, dataset_path: Path, **extra) -> dict:
    template = {"qwen2-vl": "qwen2-vl", "llava1_5": "llava1_5"}[family]
    args = dict(model_type=family, model_id_or_path=str(base_dir), template_type=template, system=None,
                sft_type="lora", dtype="auto", dataset=[str(dataset_path)], val_dataset=None, dataset_test_ratio=0.2,
                seed=7, max_length=2048, max_pixels=None, strict=True)
    args.update(extra)
    return args


def build_lora_run(base_dir: Path, family: str, run_dir: Path, dataset_path: Path):
    """A LoRA checkpoint as `mm sft` leaves it, plus its merged export; returns (ckpt, merged, peft model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj|o_proj)")
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero: make the adapter change the model's answers
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    ckpt = run_dir / "checkpoint-10"
    peft_model.save_pretrained(ckpt)
    args = json.dumps(sft_args(base_dir, family, dataset_path), indent=2)
    (ckpt / "sft_args.json").write_text(args)
    (run_dir / "sft_args.json").write_text(args)
    peft_model.eval()
    return ckpt, peft_model


def export_merged(peft_model, base_dir: Path, ckpt: Path) -> Path:
    import copy

    merged_dir = ckpt.with_name(ckpt.name + "-merged")
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(merged_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                 "processor_config.json", "generation_config.json"):
        if (base_dir / name).is_file():
            shutil.copy(base_dir / name, merged_dir / name)
    shutil.copy(ckpt / "sft_args.json", merged_dir / "sft_args.json")
    return merged_dir


def reference_answers(model, base_dir: Path, expected: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy answers of `model` (peft's own forward) for each expected row, one at a time, with transformers."""
    from swiftlite import get_model_tokenizer, get_template
    from swiftlite.conversation import conversation_from_query
    from swiftlite.engine.generate import move_batch

    _, tokenizer = get_model_tokenizer(model_id_or_path=str(base_dir), load_model_weights=False)
    template = get_template(tokenizer.swiftlite_template_type, tokenizer)
    stops = set(template.stop_token_ids(model.generation_config))
    answers = []
    for want in expected:
        conversation = conversation_from_query(want["query"], want["history"], want["system"], want["images"])
        batch = move_batch(template.collate([template.encode(conversation)], padding_side="left"), model)
        with torch.no_grad():
            output = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens)
        tokens = output[0, batch["input_ids"].shape[1]:].tolist()
        cut = next((i for i, token in enumerate(tokens) if token in stops), len(tokens))
        answers.append(tokenizer.decode(tokens[:cut], skip_special_tokens=False))
    return answers


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_checkpoint_gives_the_adapters_outputs_and_merged_the_same(family, model_dirs, shape_images, tmp_path):
    base = model_dirs[family]
    path, expected = write_dataset(tmp_path / "data", shape_images, count=6)
    ckpt, peft_model = build_lora_run(base, family, tmp_path / "output" / family / "v0-20240101-000000", path)
    flags = ("--val_dataset", path, "--max_new_tokens", 8)

    code, _, err = run_mm("infer", "--ckpt_dir", ckpt, *flags)  # results go beside the checkpoint
    assert code == 0, err
    adapter = [row["response"] for row in result_rows(ckpt)]
    assert adapter == reference_answers(peft_model, base, expected, 8)

    code, _, err = run_mm("infer", "--model", base, *flags, "--result_dir", tmp_path / "base")
    assert code == 0, err
    base_answers = [row["response"] for row in result_rows(tmp_path / "base")]
    assert sum(a != b for a, b in zip(adapter, base_answers)) >= 3  # the adapter really changes the model

    merged_dir = export_merged(peft_model, base, ckpt)
    code, _, err = run_mm("infer", "--ckpt_dir", merged_dir, *flags)
    assert code == 0, err
    assert [row["response"] for row in result_rows(merged_dir)] == adapter


def test_merge_lora_true_merges_then_infers(llava_dir, shape_images, tmp_path):
    path, expected = write_dataset(tmp_path / "data", shape_images, count=4)
    ckpt, peft_model = build_lora_run(llava_dir, "llava1_5", tmp_path / "output" / "llava1_5" / "v0-1", path)
    code, _, err = run_mm("infer", "--ckpt_dir", ckpt, "--merge_lora", "true", "--val_dataset", path,
                          "--max_new_tokens", 8)
    assert code == 0, err
    merged_dir = ckpt.with_name(ckpt.name + "-merged")
    assert (merged_dir / "config.json").is_file() and not (merged_dir / "adapter_config.json").exists()
    assert [row["response"] for row in result_rows(merged_dir)] == reference_answers(peft_model, llava_dir, expected, 8)
    # A second run re-uses the merged directory instead of failing on it.
    code, _, err = run_mm("infer", "--ckpt_dir", ckpt, "--merge_lora", "true", "--val_dataset", path,
                          "--max_new_tokens", 2, "--no_save_result")
    assert code == 0, err


def test_load_dataset_config_runs_the_sft_runs_held_out_rows(llava_dir, shape_images, tmp_path):
    from swiftlite.data import load_train_val

    path, _ = write_dataset(tmp_path / "data", shape_images, count=20, prompts=False)
    ckpt, _ = build_lora_run(llava_dir, "llava1_5", tmp_path / "output" / "llava1_5" / "v0-1", path)
    code, _, err = run_mm("infer", "--ckpt_dir", ckpt, "--load_dataset_config", "true", "--max_new_tokens", 4)
    assert code == 0, err
    rows = result_rows(ckpt)
    train, held_out, _ = load_train_val([str(path)], None, 0.2, 7, True)
    assert len(rows) == len(held_out) == 4  # ceil(0.2 * 20)
    assert [(r["query"], r["label"]) for r in rows] == [
        (row.conversation.messages[-2]["content"], row.conversation.messages[-1]["content"]) if
        row.conversation.messages[-1]["role"] == "assistant" else (row.conversation.messages[-1]["content"], None)
        for row in held_out
    ]
    trained_on = {tuple(m["content"] for m in row.conversation.messages) for row in train}
    assert not any(tuple(m["content"] for m in row.conversation.messages) in trained_on for row in held_out)


@pytest.mark.slow
def test_load_dataset_config_after_a_real_sft_run(llava_dir, shape_images, tmp_path):
    path, _ = write_dataset(tmp_path / "data", shape_images, count=20, prompts=False)
    code, _, err = run_mm("sft", "--model", llava_dir, "--dataset", path, "--dataset_test_ratio", 0.2, "--seed", 11,
                          "--max_steps", 1, "--output_dir", tmp_path / "output")
    assert code == 0, err
    ckpt = next((tmp_path / "output").glob("*/v*/checkpoint-*"))
    code, _, err = run_mm("infer", "--ckpt_dir", ckpt, "--load_dataset_config", "true", "--max_new_tokens", 2)
    assert code == 0, err
    from swiftlite.data import load_train_val

    _, held_out, _ = load_train_val([str(path)], None, 0.2, 11, True)
    assert [row["label"] for row in result_rows(ckpt)] == [r.conversation.messages[-1]["content"] for r in held_out]


# ---- user mistakes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--model", "/no/such/model"], "--model /no/such/model: no such directory"),
    (["--model_type", "qwen2-vl-2b-instrukt"], "unknown model type 'qwen2-vl-2b-instrukt'. Did you mean: qwen2-vl-2b-instruct"),
    (["--ckpt_dir", "/no/such/checkpoint-100"], "--ckpt_dir /no/such/checkpoint-100: no such directory"),
    (["--model", "{llava}", "--val_dataset", "/no/such/rows.jsonl"], "--val_dataset /no/such/rows.jsonl: no such file"),
    (["--model", "{llava}", "--temperature", "-1"], "--temperature -1.0: expected a finite number >= 0"),
    # inf passes `>= 0`: these sampled garbage with exit 0, and a seed past int64 was a traceback after loading.
    (["--model", "{llava}", "--temperature", "inf"], "--temperature inf: expected a finite number >= 0"),
    (["--model", "{llava}", "--repetition_penalty", "inf"], "--repetition_penalty inf: expected a finite number > 0"),
    (["--model", "{llava}", "--seed", str(2 ** 64 - 1)], f"--seed {2 ** 64 - 1}: expected a whole number in "
     "[-2**63, 2**63)"),
    (["--model", "{llava}", "--load_dataset_config", "true"], "--load_dataset_config true needs --ckpt_dir"),
    (["--model", "{llava}", "--merge_lora", "true"], "--merge_lora true needs --ckpt_dir"),
    (["--model", "{llava}", "--dtype", "int3"], "--dtype int3: expected auto, bf16, fp16 or fp32"),
])
def test_mistakes_give_one_clear_line(argv, message, llava_dir):
    argv = [a.replace("{llava}", str(llava_dir)) for a in argv]
    code, out, err = run_mm("infer", *argv)
    assert code == 1
    assert err.strip() == f"mm infer: error: {err.strip().removeprefix('mm infer: error: ')}"
    assert message in err and "\n" not in err.strip()


def test_mistake_from_the_real_command_line_exits_1_without_traceback():
    # A missing model must fail before torch is imported: fast, and one line.
    completed = subprocess.run([sys.executable, "-m", "swiftlite", "infer", "--model", "/no/such/model"],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 1
    assert completed.stderr.strip() == "mm infer: error: --model /no/such/model: no such directory"

"""ms-swift 3.x/4.x spellings next to the 2.x ones: `--help` lists both, values that changed are translated,
two spellings of one flag with different values are refused naming both, and a benchmark harness's ms-swift
4.x command lines drive `mm sft`, `mm infer`, `mm export` and `mm deploy` unchanged (tiny Qwen2-VL, CPU)."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from swiftlite.cli import main
from test_deploy_cli import free_port, start_deploy

# (command, 2.x spelling, 3.x/4.x spellings) as docs/flags.md lists them
PAIRS = [
    ("sft", "--sft_type", ["--train_type", "--tuner_type"]),
    ("sft", "--lora_target_modules", ["--target_modules"]),
    ("sft", "--batch_size", ["--per_device_train_batch_size"]),
    ("sft", "--eval_batch_size", ["--per_device_eval_batch_size"]),
    ("sft", "--dataset_test_ratio", ["--split_dataset_ratio"]),
    ("sft", "--template_type", ["--template"]),
    ("sft", "--dtype", ["--torch_dtype"]),
    ("sft", "--quantization_bit", ["--quant_bits"]),
    ("sft", "--add_output_dir_suffix", ["--add_version"]),
    ("sft", "--model_id_or_path", ["--model"]),
    ("infer", "--ckpt_dir", ["--adapters"]),
    ("infer", "--load_dataset_config", ["--load_data_args"]),
    ("infer", "--show_dataset_sample", ["--val_dataset_sample"]),
    ("infer", "--result_dir", ["--result_path", "--infer_backend"]),
    ("infer", "--template_type", ["--template", "--torch_dtype"]),
    ("export", "--ckpt_dir", ["--adapters"]),
    ("export", "--model_id_or_path", ["--model"]),
    ("export", "--overwrite", ["--exist_ok"]),
    ("export", "--dtype", ["--torch_dtype", "--device_map"]),
    ("deploy", "--ckpt_dir", ["--adapters", "--infer_backend"]),
    ("deploy", "--lora_modules", ["--adapters"]),
    ("deploy", "--limit_mm_per_prompt", ["--vllm_limit_mm_per_prompt"]),
    ("deploy", "--tensor_parallel_size", ["--vllm_tensor_parallel_size"]),
    ("deploy", "--gpu_memory_utilization", ["--vllm_gpu_memory_utilization"]),
    ("deploy", "--max_model_len", ["--vllm_max_model_len"]),
    ("deploy", "--enforce_eager", ["--vllm_enforce_eager"]),
    ("infer", "--tensor_parallel_size", ["--vllm_tensor_parallel_size"]),
    ("infer", "--gpu_memory_utilization", ["--vllm_gpu_memory_utilization"]),
    ("infer", "--max_model_len", ["--vllm_max_model_len"]),
    ("infer", "--limit_mm_per_prompt", ["--vllm_limit_mm_per_prompt"]),
    ("infer", "--enforce_eager", ["--vllm_enforce_eager"]),
    ("deploy", "--template_type", ["--template", "--torch_dtype"]),
]


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    texts = {}
    for command in ("sft", "infer", "export", "deploy"):
        result = subprocess.run([sys.executable, "-m", "swiftlite", command, "--help"], capture_output=True,
                                text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin",
                                                            "PYTHONPATH": ":".join(sys.path)})
        assert result.returncode == 0, result.stderr
        texts[command] = result.stdout
    return texts


@pytest.mark.parametrize("command,old,new", PAIRS)
def test_help_lists_both_spellings(helps, command, old, new):
    for spelling in [old, *new]:
        assert f"{spelling}," in helps[command] or f"{spelling} " in helps[command], (command, spelling)


@pytest.mark.parametrize("argv,both", [
    (["sft", "--sft_type", "lora", "--train_type", "full"], ("--sft_type lora", "--train_type full")),
    (["sft", "--batch_size", "2", "--per_device_train_batch_size", "4"],
     ("--batch_size 2", "--per_device_train_batch_size 4")),
    (["sft", "--dataset_test_ratio", "0.1", "--split-dataset-ratio", "0.2"],
     ("--dataset_test_ratio 0.1", "--split-dataset-ratio 0.2")),
    (["sft", "--lora_target_modules", "ALL", "--target_modules", "all-linear"],
     ("--lora_target_modules ALL", "--target_modules DEFAULT")),
    (["infer", "--ckpt_dir", "a", "--adapters", "b"], ("--ckpt_dir a", "--adapters b")),
    (["infer", "--load_dataset_config", "true", "--load_data_args", "false"],
     ("--load_dataset_config true", "--load_data_args false")),
    (["export", "--overwrite", "--exist_ok", "false"], ("--overwrite true", "--exist_ok false")),
    (["deploy", "--tensor_parallel_size", "1", "--vllm_tensor_parallel_size", "2"],
     ("--tensor_parallel_size 1", "--vllm_tensor_parallel_size 2")),
    (["infer", "--max_model_len", "512", "--vllm-max-model-len", "1024"],
     ("--max_model_len 512", "--vllm-max-model-len 1024")),
])
def test_conflicting_spellings_are_one_error_naming_both(argv, both):
    code, _, err = run(*argv, "--model", "/nowhere")
    assert code == 2, err
    assert both[0] in err and both[1] in err and "two spellings of the same flag" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_same_value_in_both_spellings_is_fine(tmp_path):
    # It gets past the flags: the error is about the (missing) dataset file, not the spellings.
    code, _, err = run("sft", "--model", "/nowhere", "--sft_type", "lora", "--train_type", "lora",
                       "--dataset", tmp_path / "missing.jsonl")
    assert code == 1 and "two spellings" not in err and "missing.jsonl" in err


def test_quantization_bit_is_quant_bits(dataset):
    # ms-swift 2.x's --quantization_bit (default 0: not quantized) is 3.x/4.x's --quant_bits
    code, _, err = run("sft", "--model", "/nowhere", "--quantization_bit", "3", "--dataset", dataset)
    assert code == 1 and "--quant_bits 3: expected 4 or 8 (also when spelled --quantization_bit)" in err, err
    code, _, err = run("sft", "--model", "/nowhere", "--quantization_bit", "0", "--sft_type", "full",
                       "--dataset", dataset)
    assert code == 1 and "--quant_bits" not in err and "/nowhere" in err, err  # past the flags, to the model


@pytest.mark.parametrize("command", ["infer", "deploy"])
@pytest.mark.parametrize("backend", ["sglang", "lmdeploy"])
def test_accelerated_backends_are_a_clear_error(command, backend):
    code, _, err = run(command, "--model", "/nowhere", "--infer_backend", backend)
    assert code == 1
    assert f"--infer_backend {backend}: not available in swiftlite yet; use --infer_backend pt" in err


@pytest.mark.parametrize("command", ["infer", "deploy"])
def test_vllm_without_vllm_is_one_line_with_the_install_command(command):
    # The system python of the main lane has no vLLM (scripts/test_vllm.sh runs the vLLM lane in its own venv).
    code, _, err = run(command, "--model", "/nowhere", "--infer_backend", "vllm")
    assert code == 1
    assert "--infer_backend vllm: vLLM is not installed; install it with: pip install vllm" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_values_that_changed_are_translated():
    from swiftlite.cli import app
    import typer

    from swiftlite.options import normalise_argv

    sft = typer.main.get_command(app).commands["sft"]
    assert normalise_argv(["--target_modules", "all-linear", "--deepspeed", "zero3", "--truncation_strategy=left"],
                          sft) == ["--target_modules", "DEFAULT", "--deepspeed", "default-zero3",
                                   "--truncation_strategy", "truncation_left"]
    assert normalise_argv(["--add_version", "false", "--no-strict"], sft) == ["--no_add_version", "--no-strict"]


# ---- a harness's ms-swift 4.x command lines, end to end ---------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory, shape_images) -> Path:
    folder = tmp_path_factory.mktemp("msswift4")
    rows = [{"messages": [{"role": "user", "content": f"<image>what colour is shape {index}"},
                          {"role": "assistant", "content": colour}], "images": [str(shape_images[colour])]}
            for index, colour in enumerate(["red", "green", "blue", "red", "green", "blue", "red", "green"])]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def trained(qwen2_vl_dir, dataset, tmp_path_factory) -> Path:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    try:
        code, _, err = run(
            "sft", "--model", qwen2_vl_dir, "--dataset", dataset, "--tuner_type", "lora", "--target_modules",
            "all-linear", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
            "--split_dataset_ratio", "0.25", "--torch_dtype", "float32", "--max_steps", "2", "--save_steps", "2",
            "--eval_steps", "2", "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0",
            "--warmup_ratio", "0", "--output_dir", out, "--add_version", "false", "--lora_rank", "4",
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err[-3000:]
    return out / "checkpoint-2"


@pytest.mark.slow
def test_sft_with_ms_swift_4_flags(trained, qwen2_vl_dir):
    recorded = json.loads((trained / "sft_args.json").read_text())
    assert recorded["sft_type"] == "lora" and recorded["lora_target_modules"] == ["DEFAULT"]
    assert recorded["batch_size"] == 2 and recorded["eval_batch_size"] == 2
    assert recorded["dataset_test_ratio"] == 0.25 and recorded["add_output_dir_suffix"] is False
    targets = json.loads((trained / "adapter_config.json").read_text())["target_modules"]
    targets = targets if isinstance(targets, list) else targets.split("|")
    # all-linear on a multimodal model: the language model's linear layers, not the vision tower (ms-swift 4.x)
    assert targets and not any("visual" in name for name in targets)


@pytest.mark.slow
def test_infer_export_deploy_with_ms_swift_4_flags(trained, qwen2_vl_dir, tmp_path):
    # swift infer --model BASE --adapters CKPT --load_data_args true --infer_backend transformers --result_path ...
    result = tmp_path / "results" / "infer.jsonl"
    code, _, err = run("infer", "--model", qwen2_vl_dir, "--adapters", trained, "--load_data_args", "true",
                       "--infer_backend", "transformers", "--result_path", result, "--max_new_tokens", "2",
                       "--temperature", "0", "--torch_dtype", "float32", "--max_batch_size", "2", "--stream", "false")
    assert code == 0, err[-3000:]
    assert "ignored" not in err  # --model names the adapter's own base model
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    assert len(rows) == 2 and all(row["label"] in ("red", "green", "blue") for row in rows)  # 25% of 8 held out
    code, _, err = run("infer", "--adapters", trained, "--load_data_args", "true", "--result_path", result,
                       "--max_new_tokens", "2", "--temperature", "0", "--val_dataset_sample", "1")
    assert code == 0, err[-3000:]
    assert len(result.read_text().splitlines()) == 3  # appended to, as ms-swift does

    # swift export --adapters CKPT --merge_lora true --output_dir DIR --exist_ok true
    merged = tmp_path / "merged"
    for _ in range(2):  # the second run replaces the first: --exist_ok true
        code, out, err = run("export", "--adapters", trained, "--merge_lora", "true", "--output_dir", merged,
                             "--exist_ok", "true", "--torch_dtype", "float32")
        assert code == 0, err[-3000:]
    assert (merged / "config.json").is_file() and "merged" in out
    code, _, err = run("export", "--adapters", trained, "--merge_lora", "true", "--output_dir", merged)
    assert code != 0 and "exist" in err

    # swift deploy --model MERGED --adapters NAME=CKPT --infer_backend transformers --served_model_name ...
    port = free_port()
    process, _ = start_deploy("--model", str(merged), "--adapters", f"tuned={trained}", "--infer_backend",
                              "transformers", "--served_model_name", "merged", "--torch_dtype", "float32",
                              "--max_new_tokens", "2", port=port)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        assert [m["id"] for m in httpx.get(base + "/models").json()["data"]] == ["merged", "tuned"]
        body = {"messages": [{"role": "user", "content": "what colour"}], "max_tokens": 2, "temperature": 0}
        merged_answer = httpx.post(base + "/chat/completions", json={**body, "model": "merged"}, timeout=60)
        adapter_answer = httpx.post(base + "/chat/completions", json={**body, "model": "tuned"}, timeout=60)
        assert merged_answer.status_code == 200 and adapter_answer.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert "Traceback" not in process.stdout.read()


# ---- the Python API ----------------------------------------------------------------------------------------------
def test_get_model_tokenizer_takes_ms_swift_3_and_4_keywords(qwen2_vl_dir):
    from swiftlite import get_model_tokenizer

    # 3.x/4.x: get_model_tokenizer(model_id_or_path, load_model=False)
    model, tokenizer = get_model_tokenizer(str(qwen2_vl_dir), load_model=False)
    assert model is None and tokenizer.swiftlite_template_type == "qwen2-vl"
    model, _ = get_model_tokenizer(model_id_or_path=str(qwen2_vl_dir), load_model_weights=False)  # 2.x
    assert model is None
    with pytest.raises(TypeError, match="load_model=True and load_model_weights=False disagree"):
        get_model_tokenizer(model_id_or_path=str(qwen2_vl_dir), load_model=True, load_model_weights=False)
    model, _ = get_model_tokenizer(str(qwen2_vl_dir), "float32", load_model=True, device_map="cpu")
    assert model is not None and model.device.type == "cpu"


def test_sft_main_takes_ms_swift_3_and_4_keywords(tmp_path):
    from swiftlite.errors import UserError
    from swiftlite.options import python_keywords
    from swiftlite.sft import sft, sft_main

    assert python_keywords(sft, {"tuner_type": "lora", "target_modules": ["all-linear"], "split_dataset_ratio": 0.1,
                                 "per_device_train_batch_size": 2, "add_version": False, "torch_dtype": "bfloat16"}) \
        == {"sft_type": "lora", "lora_target_modules": ["DEFAULT"], "dataset_test_ratio": 0.1, "batch_size": 2,
            "add_output_dir_suffix": False, "dtype": "bfloat16"}
    with pytest.raises(TypeError, match="sft_type='lora' and train_type='full' are two spellings"):
        sft_main(sft_type="lora", train_type="full", model="x", dataset="y.jsonl")
    with pytest.raises(UserError, match=r"--sft_type lora_llm: expected lora or full \(also when spelled --train_type"):
        sft_main(tuner_type="lora_llm", model="x", dataset="y.jsonl")


# ---- adapters trained elsewhere: `--model BASE --adapters DIR` ----------------------------------------------------
@pytest.fixture(scope="module")
def foreign_adapters(qwen2_vl_dir, tmp_path_factory):
    """An adapter as ms-swift 4.x saves it (args.json naming a hub base that is not here) and a bare peft one."""
    from test_deploy_support import make_lora

    root = tmp_path_factory.mktemp("foreign")
    ms_swift = make_lora(qwen2_vl_dir, root / "ms-swift" / "checkpoint-50", seed=7)
    (ms_swift / "args.json").write_text(json.dumps({
        "model": "Qwen/Qwen2-VL-2B-Instruct", "model_type": "qwen2_vl", "template": "qwen2_vl",
        "tuner_type": "lora", "torch_dtype": "bfloat16", "system": "You are a test.", "split_dataset_ratio": 0.0}))
    bare = make_lora(qwen2_vl_dir, root / "peft", seed=8)
    assert json.loads((bare / "adapter_config.json").read_text())["base_model_name_or_path"] == str(qwen2_vl_dir)
    return ms_swift, bare


def test_adapters_from_ms_swift_and_peft_run_on_the_named_base(qwen2_vl_dir, foreign_adapters, tmp_path):
    ms_swift, bare = foreign_adapters
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "what colour"}]}) + "\n")
    answers = {}
    for name, argv in (("ms-swift", ["--model", qwen2_vl_dir, "--adapters", ms_swift]),
                       ("peft", ["--adapters", bare]), ("base", ["--model", qwen2_vl_dir])):
        result = tmp_path / f"{name}.jsonl"
        code, _, err = run("infer", *argv, "--val_dataset", rows, "--max_new_tokens", "3", "--temperature", "0",
                           "--result_path", result)
        assert code == 0, err[-2000:]
        assert "ignored" not in err
        answers[name] = json.loads(result.read_text())
    assert answers["ms-swift"]["system"] == "You are a test."  # read from ms-swift's args.json
    assert len({answers[name]["response"] for name in answers}) == 3  # each adapter changes the answer
    # Without --model the hub base of the ms-swift adapter is looked for (offline here): one line says what to do.
    code, _, err = run("infer", "--adapters", ms_swift, "--val_dataset", rows, "--use_hf", "true")
    assert code == 1 and "could not download 'Qwen/Qwen2-VL-2B-Instruct'" in err and "--model" in err
    assert "Traceback" not in err


def test_export_and_infer_merge_merge_an_ms_swift_adapter_onto_the_named_base(qwen2_vl_dir, foreign_adapters,
                                                                             tmp_path):
    # swift export --model BASE --adapters DIR --merge_lora true: the adapter's args.json names a hub base that is
    # not here (offline), so --model is the base, as in `mm infer --model BASE --adapters DIR`.
    ms_swift, _ = foreign_adapters
    code, _, err = run("export", "--adapters", ms_swift, "--merge_lora", "true", "--output_dir", tmp_path / "none",
                       "--use_hf", "true")
    assert code == 1 and "could not download 'Qwen/Qwen2-VL-2B-Instruct'" in err and "--model" in err, err[-2000:]
    merged = tmp_path / "merged"
    code, _, err = run("export", "--model", qwen2_vl_dir, "--adapters", ms_swift, "--merge_lora", "true",
                       "--output_dir", merged)
    assert code == 0, err[-2000:]
    recorded = json.loads((merged / "sft_args.json").read_text())
    assert recorded["base_model_id_or_path"] == str(qwen2_vl_dir) and recorded["system"] == "You are a test."

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "what colour"}]}) + "\n")
    answers = {}
    for name, argv in (("adapter", ["--model", qwen2_vl_dir, "--adapters", ms_swift]),
                       ("merged", ["--adapters", merged]), ("base", ["--model", qwen2_vl_dir]),
                       # ms-swift 4.x passes a full checkpoint as --model and reads its args (here the system)
                       ("merged_as_model", ["--model", merged]),
                       ("merge_lora", ["--model", qwen2_vl_dir, "--adapters", ms_swift, "--merge_lora", "true"])):
        result = tmp_path / f"{name}.jsonl"
        code, _, err = run("infer", *argv, "--val_dataset", rows, "--max_new_tokens", "3", "--temperature", "0",
                           "--result_path", result)
        assert code == 0, err[-2000:]
        answers[name] = json.loads(result.read_text())["response"]
    assert answers["merged"] == answers["merged_as_model"] == answers["adapter"] == answers["merge_lora"] \
        != answers["base"]
    assert (ms_swift.parent / (ms_swift.name + "-merged") / "config.json").is_file()  # mm infer --merge_lora's


@pytest.mark.parametrize("command, flag, value", [("deploy", "--tensor_parallel_size", "2"),
                                                  ("deploy", "--enforce_eager", "true"),
                                                  ("infer", "--gpu_memory_utilization", "0.5"),
                                                  ("infer", "--max_model_len", "512")])
@pytest.mark.parametrize("spelling", ["2.x", "4.x"])
def test_vllm_flags_on_pt_say_they_need_the_vllm_backend(command, flag, value, spelling):
    # ms-swift 4.x spells the vLLM flags --vllm_<name>: the same flag, and the error names both spellings.
    given = flag if spelling == "2.x" else "--vllm_" + flag[2:]
    code, _, err = run(command, "--model", "/nowhere", given, value)
    assert code == 1, err
    assert f"{flag} is a vLLM flag" in err and f"--vllm_{flag[2:]}" in err and "needs --infer_backend vllm" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_deploy_checks_vllm_max_model_len_as_its_context_limit():
    # On deploy --max_model_len is the context limit on either backend; 4.x's --vllm_max_model_len is that flag.
    code, _, err = run("deploy", "--model", "/nowhere", "--vllm_max_model_len", "1")
    assert code == 1 and "--max_model_len 1: expected at least 2 tokens" in err, err


@pytest.mark.parametrize("command", ["sft", "infer", "export", "deploy"])
def test_docs_list_every_second_spelling(command):
    """Each flag declared with more than one name has all of them in its command's section of docs/flags.md."""
    import typer

    from swiftlite.cli import app
    from swiftlite.options import _spelling

    text = (Path(__file__).parents[1] / "docs" / "flags.md").read_text()
    section = text.split(f"## mm {command}\n")[1].split("\n## ")[0]
    click_command = typer.main.get_command(app).commands[command]
    for param in click_command.params:
        names = {_spelling(option) for option in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]}
        if len(names) > 1:
            missing = [name for name in sorted(names) if f"`--{name}" not in section]
            assert not missing, (command, param.name, missing)

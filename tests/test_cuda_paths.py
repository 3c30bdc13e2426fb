"""What the CUDA paths of `mm sft` decide, shown on the CPU: dtype and autocast selection, upcasting trainable
weights under autocast, building the training arguments before loading (ZeRO-3 partitions while loading),
processes vs visible GPUs, --attn_impl, per-part learning rates in the optimizer, QLoRA with bitsandbytes,
and the one list of tokenizer files full checkpoints copy. scripts/gpu_check.sh runs the rest on a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swiftlite.errors import UserError
from swiftlite.training.precision import Precision, plan_precision

QUICK = ["--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0", "--logging_steps", "1",
         "--dataset_test_ratio", "0"]
ROOT = Path(__file__).resolve().parents[1]


def mm_sft(capsys, *argv) -> tuple[int, str]:
    from swiftlite.cli import main

    code = main(["sft", *map(str, argv)])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory, shape_images) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"query": "<image>what colour?", "response": colour, "images": [str(shape_images[colour])]}
            for colour in ("red", "green", "blue", "red")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---- dtype selection: plain logic ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype, gpu, pure, deepspeed, fsdp, expected", [
    ("bfloat16", True, False, False, False, Precision("bfloat16", "bf16", True)),  # fp32 master weights
    ("bfloat16", True, True, False, False, Precision("bfloat16", None, False)),  # --pure_bf16
    ("float16", True, False, False, False, Precision("float16", "fp16", True)),  # the scaler needs fp32 grads
    ("float32", True, False, False, False, Precision("float32", None, False)),
    ("bfloat16", True, False, True, False, Precision("bfloat16", "bf16", False)),  # DeepSpeed keeps fp32 masters
    ("float16", True, False, True, False, Precision("float16", "fp16", False)),
    ("bfloat16", True, False, False, True, Precision("float32", "bf16", False)),  # FSDP: one dtype per unit
    ("float32", False, False, False, False, Precision("float32", None, False)),
    ("bfloat16", False, False, False, False, Precision("bfloat16", "bf16", True)),  # CPU autocast
    ("float16", False, False, False, False, Precision("float16", None, False)),  # no fp16 AMP on CPUs
])
def test_plan_precision(dtype, gpu, pure, deepspeed, fsdp, expected):
    assert plan_precision(dtype, on_gpu=gpu, pure_bf16=pure, deepspeed=deepspeed, fsdp=fsdp) == expected


def test_plan_precision_refuses_contradictions():
    with pytest.raises(UserError, match="--pure_bf16 true trains bf16 weights, but the dtype is float16"):
        plan_precision("float16", on_gpu=True, pure_bf16=True)
    with pytest.raises(UserError, match="DeepSpeed and FSDP keep fp32 master weights"):
        plan_precision("bfloat16", on_gpu=True, pure_bf16=True, deepspeed=True)


def test_choose_dtype_auto_on_cpu_and_old_gpus():
    from swiftlite.models.loading import choose_dtype

    assert choose_dtype("auto", "bfloat16", device="cpu") == torch.float32
    assert choose_dtype("bf16", "float16", device="cpu") == torch.bfloat16
    with pytest.raises(UserError, match="--dtype int4"):
        choose_dtype("int4")


@pytest.mark.parametrize("pure", [False, True])
def test_bf16_full_fine_tune_master_weights(capsys, tmp_path, llava_dir, rows_file, pure):
    """bf16 on the CPU takes the GPU's path: bf16 weights, bf16 autocast, trainable weights upcast to fp32
    (the frozen vision tower stays bf16), and the run trains. With --pure_bf16 true the bf16 weights
    themselves train, without autocast."""
    from safetensors.torch import load_file

    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", rows_file, "--sft_type", "full", "--dtype", "bf16",
                       "--pure_bf16", str(pure).lower(), "--max_steps", 2, "--batch_size", 2, "--learning_rate", 1e-3,
                       "--output_dir", tmp_path, *QUICK)
    assert code == 0, err[-2000:]
    precision = "no autocast\n" if pure else "bf16 autocast, trainable weights in fp32\n"
    assert "mm sft: precision: weights loaded in bfloat16, " + precision in err
    checkpoint = Path(re.search(r"last_model_checkpoint: (\S+)", err).group(1))
    weights = load_file(checkpoint / "model.safetensors")
    language = [key for key in weights if "language_model" in key]
    vision = [key for key in weights if "vision_tower" in key]
    assert {weights[key].dtype for key in language} == {torch.bfloat16 if pure else torch.float32}
    assert {weights[key].dtype for key in vision} == {torch.bfloat16}
    logs = [json.loads(line) for line in (checkpoint.parent / "logging.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs if "loss" in log)


def test_upcast_trainable_parameters_only_touches_trainable_half_weights():
    from swiftlite.training.precision import upcast_trainable_parameters

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.float16)
    model[0].requires_grad_(False)
    assert upcast_trainable_parameters(model) == 2
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32
    # the fp16 path: with fp32 trainable weights the gradient scaler can unscale (it refuses fp16 gradients)
    scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model[1](model[0](torch.ones(2, 4, dtype=torch.float16)).float()).sum()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model[1].parameters(), 1.0)
    # ... and without the upcast the first unscale fails, as the issue reports for fp16 full fine-tuning
    half = torch.nn.Linear(4, 4).to(torch.float16)
    optimizer = torch.optim.SGD(half.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(half(torch.ones(2, 4, dtype=torch.float16)).float().sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.unscale_(optimizer)


# ---- placement, processes, attention kernels ----------------------------------------------------------
def test_weights_load_straight_onto_the_processs_own_device(monkeypatch):
    from swiftlite.models.loading import default_device, placement

    monkeypatch.setenv("LOCAL_RANK", "2")
    assert default_device(cuda_available=True) == "cuda:2"  # DDP: each process its own GPU
    assert default_device(cuda_available=False) == "cpu"
    assert placement(device="cuda:2") == {"device_map": {"": "cuda:2"}}  # no CPU copy, no .to() after
    assert placement(device="cpu") == {}
    assert placement(device_map="auto", device="cuda:0") == {"device_map": "auto"}
    assert placement(device="cuda:2", placed_by_trainer=True) == {}  # ZeRO-3 / FSDP place the weights


def test_more_processes_than_gpus_is_one_clear_error():
    from swiftlite.training.launch import check_gpus_for_processes

    with pytest.raises(UserError, match=r"NPROC_PER_NODE=4: only 2 GPU\(s\) visible.*use NPROC_PER_NODE=2"):
        check_gpus_for_processes(4, visible=2)
    check_gpus_for_processes(2, visible=2)
    check_gpus_for_processes(4, visible=0)  # no GPUs: the processes train on the CPU (gloo)


@pytest.mark.parametrize("argv, message", [
    (["--attn_impl", "flash"], "--attn_impl flash: expected one of sdpa, eager, flash_attention_2"),
    (["--attn_impl", "flash_attention_2"], "--attn_impl flash_attention_2: "),
    (["--quant_bits", "3"], "--quant_bits 3: expected 4 or 8"),
    (["--quant_bits", "4", "--sft_type", "full"], "--quant_bits 4: quantized weights cannot train"),
    (["--vit_lr", "0"], "--vit_lr 0.0: expected a positive learning rate"),
    (["--pure_bf16", "true", "--dtype", "fp32"], "--pure_bf16 true trains bf16 weights, but the dtype is float32"),
])
def test_bad_cuda_flags_are_one_line(capsys, tmp_path, llava_dir, rows_file, argv, message):
    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", rows_file, "--output_dir", tmp_path, *argv)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.startswith("mm sft: error:")]
    assert len(lines) == 1 and message in lines[0], err[-1500:]
    assert "Traceback" not in err


def test_attn_impl_reaches_the_model(llava_dir):
    from swiftlite.models.loading import load_model, resolve_model

    resolved = resolve_model(model_id_or_path=str(llava_dir))
    model = load_model(resolved.model_dir, resolved.family, torch.float32, device="cpu", attn_impl="eager")
    assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "eager"


# ---- per-part learning rates --------------------------------------------------------------------------
def test_vit_and_aligner_lr_reach_the_optimizer(tmp_path, llava_dir):
    from transformers import TrainingArguments

    from swiftlite.models.loading import load_model, resolve_model
    from swiftlite.training.lora import freeze_parts
    from swiftlite.training.optim import part_learning_rates
    from swiftlite.training.trainer import SftTrainer

    resolved = resolve_model(model_id_or_path=str(llava_dir))
    family = resolved.family
    model = load_model(resolved.model_dir, family, torch.float32, device="cpu")
    freeze_parts(model, family, freeze_vit=False, freeze_aligner=False)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-5, weight_decay=0.1, use_cpu=True,
                             report_to="none")
    trainer = SftTrainer(model=model, args=args, sft_args={}, base_model_dir=str(llava_dir), full_checkpoint=True,
                         part_learning_rates=part_learning_rates(family, vit_lr=2e-6, aligner_lr=3e-4))
    optimizer = trainer.create_optimizer()
    by_id = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        group = by_id[id(parameter)]
        expected = 2e-6 if name.startswith("model.vision_tower.") else \
            3e-4 if name.startswith("model.multi_modal_projector.") else 1e-5
        assert group["lr"] == expected, name
        assert group["weight_decay"] == (0.0 if "bias" in name or "norm" in name else 0.1), name
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
    # the schedule scales every group alike: after warm-up the ratios are those of the flags
    trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert len(rates) == 3


def test_part_learning_rate_of_a_frozen_part_is_refused(capsys, tmp_path, llava_dir, rows_file):
    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", rows_file, "--vit_lr", "1e-5", "--max_steps", 1,
                       "--output_dir", tmp_path, *QUICK)
    assert code != 0
    assert "mm sft: error: --vit_lr: nothing trains in model.vision_tower (frozen" in err, err[-1500:]


def test_vit_lr_with_lora_on_the_vision_tower_trains(capsys, tmp_path, llava_dir, rows_file):
    """An `mm sft` run's optimizer (as its checkpoint saved it) trains the vision tower's LoRA weights at --vit_lr
    and the rest at --learning_rate."""
    from safetensors import safe_open

    code, err = mm_sft(capsys, "--model", llava_dir, "--dataset", rows_file, "--freeze_vit", "false",
                       "--vit_lr", "1e-5", "--max_steps", 1, "--output_dir", tmp_path, *QUICK)
    assert code == 0, err[-2000:]
    checkpoint = Path(re.search(r"last_model_checkpoint: (\S+)", err).group(1))
    groups = torch.load(checkpoint / "optimizer.pt")["param_groups"]
    by_rate = {}
    for group in groups:  # initial_lr: the rate before the schedule scaled it
        by_rate[group["initial_lr"]] = by_rate.get(group["initial_lr"], 0) + len(group["params"])
    with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt") as adapter:
        vision = sum("vision_tower" in key for key in adapter.keys())
        others = sum("vision_tower" not in key for key in adapter.keys())
    assert vision and others
    assert by_rate == {1e-5: vision, 1e-4: others}


# ---- ZeRO-3: training arguments before the model -----------------------------------------------------
def test_zero3_partitions_while_loading(tmp_path, llava_dir, rows_file):
    """Under --deepspeed default-zero3 the training arguments exist before the model loads, so
    HfDeepSpeedConfig is live and transformers loads through deepspeed.zero.Init: the weights arrive
    partitioned (on the CPU, as one process over gloo; DeepSpeed's CPU accelerator)."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0",
                       WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    script = (
        "import sys\n"
        "from swiftlite.sft import sft_main\n"
        f"sft_main(model={str(llava_dir)!r}, dataset=[{str(rows_file)!r}], deepspeed='default-zero3', max_steps=1,"
        f" output_dir={str(tmp_path)!r}, gradient_accumulation_steps=1, dataloader_num_workers=0,"
        " dataset_test_ratio=0, save_steps=1)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    if importlib.util.find_spec("deepspeed") is None:
        assert done.returncode != 0
        assert "--deepspeed default-zero3: the deepspeed package is not installed (pip install deepspeed)" \
            in done.stderr
        return
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mm sft: ZeRO-3: weights partitioned across 1 process(es) while loading" in done.stderr
    total = re.search(r"trainable parameters: [\d,]+ of ([\d,]+)", done.stderr).group(1)
    assert int(total.replace(",", "")) > 10_000  # counted from the partitions' full sizes, not the empty shards
    assert re.search(r"last_model_checkpoint: \S+checkpoint-1", done.stderr)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- QLoRA -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava64_dir(tmp_path_factory) -> Path:
    """bitsandbytes quantizes 4-bit weights in blocks of 64: the hidden size must be at least that."""
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("llava1_5", tmp_path_factory.mktemp("llava64") / "llava", hidden_size=64)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora(capsys, tmp_path, llava64_dir, rows_file, bits):
    code, err = mm_sft(capsys, "--model", llava64_dir, "--dataset", rows_file, "--quant_bits", bits,
                       "--max_steps", 2, "--learning_rate", 1e-2, "--output_dir", tmp_path, *QUICK)
    if importlib.util.find_spec("bitsandbytes") is None:
        assert code != 0
        assert f"mm sft: error: --quant_bits {bits}: the bitsandbytes package is not installed" in err
        return
    # bitsandbytes 0.50 runs both on the CPU: nf4 (4 bits) and LLM.int8 (8 bits)
    assert code == 0, err[-2000:]
    assert f"mm sft: QLoRA: base weights quantized to {bits} bits (bitsandbytes)" in err
    checkpoint = Path(re.search(r"last_model_checkpoint: (\S+)", err).group(1))
    assert (checkpoint / "adapter_model.safetensors").is_file()


# ---- the tokenizer files of a full checkpoint --------------------------------------------------------
def test_full_checkpoint_copies_every_tokenizer_file(capsys, tmp_path, llava_dir, rows_file):
    import shutil

    from swiftlite.models.checkpoint_files import is_processor_file

    base = tmp_path / "base"
    shutil.copytree(llava_dir, base)
    (base / "qwen.tiktoken").write_text("IQ== 0\n")  # a tiktoken vocabulary, as Qwen(-VL) ships
    (base / "tokenization_qwen.py").write_text("# a remote-code tokenizer class\n")
    code, err = mm_sft(capsys, "--model", base, "--dataset", rows_file, "--sft_type", "full", "--max_steps", 1,
                       "--output_dir", tmp_path / "out", *QUICK)
    assert code == 0, err[-2000:]
    checkpoint = Path(re.search(r"last_model_checkpoint: (\S+)", err).group(1))
    expected = sorted(path.name for path in base.iterdir() if is_processor_file(path.name))
    assert {"qwen.tiktoken", "tokenization_qwen.py", "tokenizer.json", "generation_config.json"} <= set(expected)
    for name in expected:
        assert (checkpoint / name).is_file(), name


# ---- scripts/gpu_check.sh ----------------------------------------------------------------------------
def test_gpu_check_without_cuda_says_so_and_exits_cleanly():
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this takes the no-CUDA path on every machine.
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        f"gpu_check: no CUDA GPU visible to {sys.executable} (torch.cuda.is_available() is false): nothing checked"]


def test_gpu_check_stops_a_check_when_its_budget_runs_out(tmp_path, llava_dir, rows_file):
    """Each check waits only for what is left of the budget, so the table is printed before gpu_check.sh's
    timeout would kill the script (and the table with it); the checks after it are skipped."""
    import time

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    gpu_check.START = time.time() - gpu_check.BUDGET_S + 2  # two seconds left
    long_run = ["sft", "--model", str(llava_dir), "--dataset", str(rows_file), "--max_steps", "1000",
                "--output_dir", str(tmp_path)]
    started = time.time()
    gpu_check.run_check("long sft", lambda: ("ok", gpu_check.mm(*long_run).stderr))
    assert time.time() - started < 30
    check, result, _, _, note = gpu_check.ROWS[-1]
    assert (check, result) == ("long sft", "FAIL")
    assert f"the {gpu_check.BUDGET_S} s budget ran out" in note
    gpu_check.run_check("next", lambda: ("ok", ""))
    assert gpu_check.ROWS[-1][:2] == ("next", "skip")

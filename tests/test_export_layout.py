"""export_layout: the merged checkpoint's tensor names are those both transformers and vLLM load.

(That vLLM loads them is the vLLM lane's test: tests/test_vllm.py, run by scripts/test_vllm.sh.)
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from swiftlite.export_layout import vllm_name, write_vllm_layout


def test_llava_vision_tower_gets_the_hub_layout_and_loads_the_same(llava_dir, tmp_path):
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "llava"
    shutil.copytree(llava_dir, out)
    before = load_file(out / "model.safetensors")
    assert any(name.startswith("vision_tower.embeddings.") for name in before)  # as transformers 5 saves it

    renamed = write_vllm_layout(out)
    after = load_file(out / "model.safetensors")
    tower = [name for name in before if name.startswith("vision_tower.")]
    assert renamed == len(tower) > 0
    assert all(name.startswith("vision_tower.vision_model.") for name in after if name.startswith("vision_tower."))
    assert {vllm_name(name, "llava"): value for name, value in before.items()}.keys() == after.keys()
    assert all(torch.equal(before[name], after[vllm_name(name, "llava")]) for name in before)  # bytes unchanged
    assert write_vllm_layout(out) == 0  # already in the layout: nothing to do

    original = LlavaForConditionalGeneration.from_pretrained(llava_dir).state_dict()
    reloaded = LlavaForConditionalGeneration.from_pretrained(out).state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[name], reloaded[name]) for name in original)


def test_qwen2_vl_is_left_as_saved(qwen2_vl_dir, tmp_path):
    out = tmp_path / "qwen2-vl"
    shutil.copytree(qwen2_vl_dir, out)
    assert write_vllm_layout(out) == 0
    assert (out / "model.safetensors").read_bytes() == (qwen2_vl_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision", "paligemma", "gemma3"])
def test_siglip_and_clip_towers_get_the_hub_layout_and_load_the_same(family, tmp_path):
    # vLLM wants these towers as vision_tower.vision_model.* too (tests/test_vllm_families.py); transformers 5
    # must still load the renamed directory to the same weights.
    import json

    import transformers

    from swiftlite.testing import build_tiny_checkpoint

    saved = build_tiny_checkpoint(family, tmp_path / "saved")
    out = tmp_path / "renamed"
    shutil.copytree(saved, out)
    before = load_file(out / "model.safetensors")
    assert any(name.startswith("vision_tower.embeddings.") for name in before)  # as transformers 5 saves it
    renamed = write_vllm_layout(out)
    after = load_file(out / "model.safetensors")
    assert renamed == sum(1 for name in before if name.startswith("vision_tower.")) > 0
    assert all(name.startswith("vision_tower.vision_model.") for name in after if name.startswith("vision_tower."))

    model_class = getattr(transformers, json.loads((saved / "config.json").read_text())["architectures"][0])
    original = model_class.from_pretrained(saved).state_dict()
    reloaded = model_class.from_pretrained(out).state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[name], reloaded[name]) for name in original)

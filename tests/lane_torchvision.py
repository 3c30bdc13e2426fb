"""The torchvision lane (scripts/test_torchvision.sh runs this file in a venv with torch + torchvision, the GPU
user's install): not collected by the default run, whose python has no torchvision.

With torchvision, transformers picks the fast (torchvision) image processors and the video processors load;
the fast and the PIL processors must give the same tokens and pixel values within tolerance, and swiftlite must
load the checkpoint's video processor and build the official processor through AutoProcessor itself.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from family_checks import BATTERY, check_generation_prompt
from swiftlite.models import FAMILIES
from swiftlite.models.loading import load_tokenizer, resolve_model
from swiftlite.templates import get_template
from swiftlite.testing.tiny import discover_builders

assert importlib.util.find_spec("torchvision") is not None, "run this file in the torchvision lane"

IMAGE_FAMILIES = sorted(name for name in discover_builders()
                        if "image" in FAMILIES[name].modalities and not FAMILIES[name].remote_code)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tv")
    return {name: build_tiny_checkpoint(name, root / name) for name in IMAGE_FAMILIES}


def bind(directory):
    resolved = resolve_model(model_id_or_path=str(directory))
    return get_template(resolved.template_type, load_tokenizer(resolved.model_dir, resolved.family))


@pytest.mark.parametrize("family_name", IMAGE_FAMILIES)
def test_fast_and_pil_image_processors_agree(checkpoints, family_name):
    from transformers import AutoImageProcessor

    directory = checkpoints[family_name]
    fast = AutoImageProcessor.from_pretrained(directory)
    pil = AutoImageProcessor.from_pretrained(directory, use_fast=False)
    assert type(fast).__name__ != type(pil).__name__, "expected a torchvision and a PIL backend"
    template = bind(directory)
    assert type(template.image_processor) is type(fast)  # swiftlite loads what transformers picks
    conversation = BATTERY["two images in one turn"]
    ours = template.encode(conversation)
    template.image_processor = pil
    template._processor = None
    with_pil = template.encode(conversation)
    assert ours["input_ids"] == with_pil["input_ids"]
    for key, value in ours.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert value.shape == with_pil[key].shape, key
            assert (value - with_pil[key]).abs().max() < 0.05, key  # resampling differs slightly


@pytest.mark.parametrize("family_name", ["qwen2-vl", "qwen2_5-vl", "llava_onevision", "internvl3", "glm4_1v"])
def test_video_processor_loads_and_autoprocessor_builds(checkpoints, family_name):
    from transformers import AutoProcessor

    template = bind(checkpoints[family_name])
    processor = AutoProcessor.from_pretrained(checkpoints[family_name])
    assert template.video_processor is not None
    assert type(template.processor).__name__ == type(processor).__name__
    check_generation_prompt(template, processor, "one image")

"""MiniCPM-V 4.6 and 4.7 (family minicpm_v): our encoding equals MiniCPMV4_6Processor / MiniCPMV4_7Processor
(ids with the image-id tags, overview and slice rows; NaViT-packed pixel_values; target_sizes; 4.7's
mm_token_type_ids) on the battery and on sliced images; labels; batches join the packed pixels along their last
dimension; a train step; batched generation; prefixes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from family_checks import (BATTERY, GREEN, RED, assert_same_tensor, check_generate_batch, check_generation_prompt,
                           check_labels, check_prefixes, check_tiny_checkpoint, check_train_step, official_encode,
                           official_processor)
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
from swiftlite.templates import get_template

FAMILY = FAMILIES["minicpm_v"]
MEDIA_KEYS = ("pixel_values", "target_sizes")
VERSIONS = ("4.6", "4.7")
# 4.7's processor also returns mm_token_type_ids (its canvas M-RoPE needs them); 4.6's returns none.
SEQUENCE_KEYS = {"4.6": (), "4.7": ("mm_token_type_ids",)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("minicpm_v")
    return {version: build_tiny_checkpoint("minicpm_v", root / version, version=version) for version in VERSIONS}


def minicpm_processor(version, checkpoint_dir):
    # The processors insist on a torchvision video processor, which this CPU environment cannot have, and read
    # its slice_mode and downsample_mode at construction; images never touch it otherwise, so a stand-in with
    # those two settings takes its place.
    video = SimpleNamespace(slice_mode=True, downsample_mode="16x")
    return official_processor(checkpoint_dir, f"MiniCPMV{version.replace('.', '_')}Processor", video_processor=video)


@pytest.fixture(scope="module")
def bounds(checkpoints):
    return {version: (get_template("minicpm_v", load_tokenizer(directory)),
                      minicpm_processor(version, directory))
            for version, directory in checkpoints.items()}


@pytest.fixture(scope="module")
def models(checkpoints):
    return {version: load_model(directory, FAMILY, torch.float32, device="cpu")
            for version, directory in checkpoints.items()}


def test_registry_entries(checkpoints):
    for name, hf_id, modelscope_id in (("minicpm-v-4_6", "openbmb/MiniCPM-V-4.6", "OpenBMB/MiniCPM-V-4.6"),
                                       ("minicpm-v-4_7-1b", "openbmb/MiniCPM-V-4.7-1B", "OpenBMB/MiniCPM-V-4.7-1B")):
        spec = get_model_type(name)
        assert (spec.hf_id, spec.modelscope_id) == (hf_id, modelscope_id)
        assert spec.family is FAMILY and spec.template_type == "minicpm_v" and spec.is_chat
    assert get_model_type("minicpm_v_4_6").name == "minicpm-v-4_6"
    # The remote-code MiniCPM-Llama3-V 2.5 keeps its own family.
    assert get_model_type("minicpm-v-v2_5-chat").family is not FAMILY
    for directory in checkpoints.values():
        resolved = resolve_model(model_id_or_path=str(directory))
        assert resolved.family is FAMILY and resolved.template_type == "minicpm_v"


@pytest.mark.parametrize("version", VERSIONS)
def test_tiny_checkpoint_carries_the_processor_facts(checkpoints, version):
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from swiftlite.testing.families.minicpm_v import MINICPM_TOKENS, NAMED_TOKENS, QWEN_SPECIAL_TOKENS

    checkpoint = checkpoints[version]
    check_tiny_checkpoint(checkpoint, f"MiniCPMV{version.replace('.', '_')}Config",
                          QWEN_SPECIAL_TOKENS + MINICPM_TOKENS, "<|image_pad|>")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    for name, token in NAMED_TOKENS.items():  # what MiniCPMV4_6Processor reads from the tokenizer
        assert getattr(tokenizer, name) == token
    # Qwen3.5's stop ids 248044 (<|endoftext|>) and 248046 (<|im_end|>) are two apart.
    first = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") - first == 248046 - 248044
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    config = AutoConfig.from_pretrained(checkpoint)
    assert config.text_config.model_type == "qwen3_5_text"
    assert set(config.text_config.layer_types) == {"linear_attention", "full_attention"}
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    # transformers picks the torchvision backend where torchvision is installed (the GPU user's lane), PIL here.
    from transformers.utils import is_torchvision_available

    expected = "MiniCPMV4_6ImageProcessor" + ("" if is_torchvision_available() else "Pil")
    assert type(processor).__name__ == expected
    assert (processor.slice_mode, processor.downsample_mode, processor.use_image_id) == (True, "16x", True)
    if version == "4.7":  # the canvas M-RoPE finds crops by these marker ids
        for key, token in (("image_start_id", "<image>"), ("image_end_id", "</image>"),
                           ("slice_start_id", "<slice>"), ("slice_end_id", "</slice>")):
            assert getattr(config, key) == tokenizer.convert_tokens_to_ids(token), key
        assert config.newline_id == tokenizer.encode("\n", add_special_tokens=False)[0]


@pytest.mark.parametrize("case", list(BATTERY))
@pytest.mark.parametrize("version", VERSIONS)
def test_generation_prompt_matches_official_processor(bounds, version, case):
    template, processor = bounds[version]
    check_generation_prompt(template, processor, case, media_keys=MEDIA_KEYS, sequence_keys=SEQUENCE_KEYS[version])


@pytest.mark.parametrize("size", [(240, 120), (240, 240), (120, 300)])
@pytest.mark.parametrize("version", VERSIONS)
def test_sliced_images_match_official_processor(bounds, version, size):
    # Larger than the slice resolution: an overview plus a grid of slices (several rows where tall/square).
    template, processor = bounds[version]
    conversation = Conversation([{"role": "user", "content": "<image>describe<image>"}],
                                [Image.new("RGB", size, (200, 30, 30)), RED])
    ours = template.encode(conversation)
    official = official_encode(processor, conversation, add_generation_prompt=True)
    assert ours["input_ids"] == official["input_ids"][0].tolist()
    for key in MEDIA_KEYS:
        assert_same_tensor(ours[key], official[key], key)
    for key in SEQUENCE_KEYS[version]:
        assert ours[key] == official[key][0].tolist()
    assert ours["target_sizes"].shape[0] > 2  # slices were made
    text = template.tokenizer.decode(ours["input_ids"])
    assert text.count("<slice>") == ours["target_sizes"].shape[0] - 2
    assert "<image_id>0</image_id><image>" in text and "<image_id>1</image_id><image>" in text


def test_prompt_layout(bounds):
    template, _ = bounds["4.6"]
    text = template.tokenizer.decode(template.encode(BATTERY["system prompt"])["input_ids"])
    assert text.startswith("<|im_start|>system\nanswer in one word<|im_end|>\n<|im_start|>user\n"
                           "<image_id>0</image_id><image><|image_pad|>")
    assert text.endswith("</image>what shape?<|im_end|>\n<|im_start|>assistant\n")
    raw = template.tokenizer.decode(template.encode_raw("<image>hi", [RED])["input_ids"])
    assert raw.startswith("<image_id>0</image_id><image><|image_pad|>") and raw.endswith("</image>hi")


@pytest.mark.parametrize("version", VERSIONS)
def test_labels_cover_exactly_the_assistant_replies(bounds, version):
    template, processor = bounds[version]
    row = check_labels(template, processor)
    assert row["target_sizes"].shape == (3, 2)
    pad = template.token_id("<|image_pad|>")
    if version == "4.7":
        assert row["mm_token_type_ids"] == [int(t == pad) for t in row["input_ids"]]
    else:
        assert "mm_token_type_ids" not in row  # MiniCPMV4_6ForConditionalGeneration takes none


def test_batches_join_the_packed_pixels(bounds):
    template, _ = bounds["4.7"]
    rows = [template.encode(BATTERY["two images in one turn"]), template.encode(BATTERY["text only"]),
            template.encode(BATTERY["one image"])]
    batch = template.collate(rows, padding_side="left")
    assert batch["pixel_values"].shape[:3] == rows[0]["pixel_values"].shape[:3]
    assert batch["pixel_values"].shape[-1] == rows[0]["pixel_values"].shape[-1] + rows[2]["pixel_values"].shape[-1]
    assert torch.equal(batch["target_sizes"], torch.cat([rows[0]["target_sizes"], rows[2]["target_sizes"]]))
    pad = template.token_id("<|image_pad|>")
    expected = sum(int(h) * int(w) // 16 for h, w in batch["target_sizes"].tolist())
    assert int((batch["input_ids"] == pad).sum()) == expected
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == pad).long())


@pytest.mark.parametrize("version", VERSIONS)
def test_train_step_generate_and_prefixes(bounds, models, version):
    template, _ = bounds[version]
    model = models[version]
    check_train_step(model, template, FAMILY)
    check_generate_batch(model, template, GREEN)
    check_prefixes(model, FAMILY)

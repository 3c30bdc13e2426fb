"""Model registry and resolution: types, hub ids, local directories, detection from config.json."""

from __future__ import annotations

import json
import shutil

import pytest

from swiftlite.errors import UserError
from swiftlite.models import FAMILIES, MODEL_TYPES, UnknownModelError, family_for_config, get_model_type
from swiftlite.models.loading import get_model_tokenizer, resolve_model


def test_every_model_type_is_complete():
    from swiftlite.templates import TEMPLATES

    for spec in MODEL_TYPES.values():
        assert spec.modelscope_id and spec.hf_id and "/" in spec.hf_id
        assert spec.template_type in TEMPLATES
        assert spec.family.language_model
        if set(spec.family.modalities) - {"text"}:  # text-only LLMs have no media encoder nor aligner
            assert spec.family.vision_tower and spec.family.aligner
        assert spec.torch_dtype in ("bfloat16", "float16", "float32")


def test_unknown_type_suggests_close_names():
    with pytest.raises(UnknownModelError, match="qwen2-vl-7b-instruct"):
        get_model_type("qwen2-vl-7b-instrct")
    assert get_model_type("qwen2_vl_2b_instruct").name == "qwen2-vl-2b-instruct"


def test_family_detected_from_config(tiny_checkpoints):
    for family, directory in tiny_checkpoints.items():
        config = json.loads((directory / "config.json").read_text())
        assert family_for_config(config) is FAMILIES[family]
        resolved = resolve_model(model_id_or_path=str(directory))
        assert resolved.family is FAMILIES[family] and resolved.model_dir == directory.resolve()
        assert resolved.template_type == FAMILIES[family].template


def test_model_type_and_directory_must_agree(qwen2_vl_dir):
    with pytest.raises(UserError, match="is a llava1_5 model"):
        resolve_model("llava1_5-7b-instruct", str(qwen2_vl_dir))
    assert resolve_model("qwen2-vl-2b-instruct", str(qwen2_vl_dir)).model_type == "qwen2-vl-2b-instruct"


def test_bad_directories_are_clear(tmp_path, qwen2_vl_dir):
    with pytest.raises(UserError, match="no such directory"):
        resolve_model(model_id_or_path=str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(model_id_or_path=str(tmp_path))
    alien = tmp_path / "alien"
    shutil.copytree(qwen2_vl_dir, alien)
    config = json.loads((alien / "config.json").read_text())
    config.update(architectures=["MysteryForCausalLM"], model_type="mystery")
    (alien / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="MysteryForCausalLM is not supported"):
        resolve_model(model_id_or_path=str(alien))


def test_get_model_tokenizer_loads_a_user_directory(tiny_family):
    family, directory = tiny_family
    model, tokenizer = get_model_tokenizer(model_id_or_path=str(directory), torch_dtype="fp32")
    assert type(model).__name__ == FAMILIES[family].architectures[0]
    assert tokenizer.swiftlite_processors.image_processor is not None and tokenizer.chat_template
    assert not model.training


def test_ms_swift_api_names():
    import swiftlite

    assert swiftlite.ModelType.qwen2_vl_7b_instruct == "qwen2-vl-7b-instruct"
    assert swiftlite.get_default_template_type(swiftlite.ModelType.llava1_5_7b_instruct) == "llava1_5"
    with pytest.raises(AttributeError):
        swiftlite.ModelType.not_a_model

"""The model registry: plain declarative data about the checkpoints swiftlite knows.

A *family* is one architecture (Qwen2-VL, LLaVA-1.5, ...): how to recognise its config.json, which template
encodes its conversations, and where its vision tower, aligner and language model live inside the module tree
(freezing and LoRA targeting read those prefixes, so "all linear layers" never catches the vision tower by
accident). A *model type* is one published checkpoint of a family (``qwen2-vl-2b-instruct``), named the way
ms-swift names it, with its ModelScope and Hugging Face ids.

Each family lives in its own file next to this one and registers itself when ``swiftlite.models`` is imported.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    name: str
    # `architectures[0]` of config.json, and/or its `model_type`, identify the family of any checkpoint.
    architectures: tuple[str, ...]
    config_model_types: tuple[str, ...]
    template: str
    modalities: tuple[str, ...]  # subset of ("text", "image", "audio", "video")
    # Dotted module-name prefixes inside the loaded model (transformers >= 4.52 layout).
    vision_tower: tuple[str, ...] = ()
    aligner: tuple[str, ...] = ()
    language_model: tuple[str, ...] = ()
    lm_head: tuple[str, ...] = ("lm_head",)
    # transformers Auto class that loads it (name only: no import here).
    auto_class: str = "AutoModelForImageTextToText"
    requires: tuple[str, ...] = ()
    multi_image: bool = True
    multi_turn: bool = True
    video: bool = False
    grounding: bool = False
    remote_code: bool = False
    tested_offline: bool = True
    notes: str = ""
    # Top-level config.json keys a checkpoint must have to belong to this family: several remote-code families
    # share one architecture name (QWenLMHeadModel is Qwen, Qwen-VL and Qwen-Audio; only `visual`/`audio` differ).
    config_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: ModelFamily
    modelscope_id: str
    hf_id: str
    torch_dtype: str = "bfloat16"
    template: str | None = None  # overrides family.template (e.g. a base model of a chat family)
    is_chat: bool = True

    @property
    def template_type(self) -> str:
        return self.template or self.family.template


FAMILIES: dict[str, ModelFamily] = {}
MODEL_TYPES: dict[str, ModelSpec] = {}


def register_family(family: ModelFamily, model_types: list[ModelSpec]) -> None:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    for model_type in model_types:
        if model_type.name in MODEL_TYPES:
            raise ValueError(f"model type {model_type.name!r} registered twice")
        MODEL_TYPES[model_type.name] = model_type


class UnknownModelError(ValueError):
    pass


def get_model_type(name: str) -> ModelSpec:
    """A registered model type by name; underscores and dashes are interchangeable (ms-swift's Python API spells
    types as attribute names: ModelType.qwen_vl_chat is 'qwen-vl-chat')."""
    name = name.strip()
    if name in MODEL_TYPES:
        return MODEL_TYPES[name]
    dashed = name.replace("_", "-")
    for candidate in MODEL_TYPES.values():
        if candidate.name.replace("_", "-") == dashed:
            return candidate
    close = difflib.get_close_matches(name, list(MODEL_TYPES), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model type {name!r}.{hint} Run `mm list` to see all model types.")


def family_for_config(config: dict) -> ModelFamily | None:
    """Detect the family of any checkpoint from its config.json."""
    architectures = config.get("architectures") or []
    candidates = [f for f in FAMILIES.values() if all(key in config for key in f.config_keys)]
    for family in candidates:
        if any(arch in family.architectures for arch in architectures):
            return family
    model_type = config.get("model_type")
    for family in candidates:
        if model_type in family.config_model_types:
            return family
    return None


def model_type_for_hub_id(hub_id: str) -> ModelSpec | None:
    lowered = hub_id.lower().rstrip("/")
    for model_type in MODEL_TYPES.values():
        if lowered in (model_type.modelscope_id.lower(), model_type.hf_id.lower()):
            return model_type
    return None

"""Qwen2-VL: dynamic resolution (any image size becomes a grid of 14-px patches merged 2x2) and M-RoPE."""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

QWEN2_VL = ModelFamily(
    name="qwen2-vl",
    architectures=("Qwen2VLForConditionalGeneration",),
    config_model_types=("qwen2_vl",),
    template="qwen2-vl",
    modalities=("text", "image"),
    video=True,  # through the official processor, with torchvision (swiftlite/video.py)
    vision_tower=("model.visual.patch_embed", "model.visual.blocks"),
    aligner=("model.visual.merger",),
    language_model=("model.language_model",),
    requires=("transformers>=4.45",),
    grounding=True,
    notes="several images per turn at native resolution; videos with torchvision (frames sampled at FPS)",
)

register_family(
    QWEN2_VL,
    [
        ModelSpec("qwen2-vl-2b-instruct", QWEN2_VL, "qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-2B-Instruct"),
        ModelSpec("qwen2-vl-7b-instruct", QWEN2_VL, "qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
        ModelSpec("qwen2-vl-72b-instruct", QWEN2_VL, "qwen/Qwen2-VL-72B-Instruct", "Qwen/Qwen2-VL-72B-Instruct"),
        ModelSpec("qwen2-vl-2b", QWEN2_VL, "qwen/Qwen2-VL-2B", "Qwen/Qwen2-VL-2B", is_chat=False),
        ModelSpec("qwen2-vl-7b", QWEN2_VL, "qwen/Qwen2-VL-7B", "Qwen/Qwen2-VL-7B", is_chat=False),
    ],
)

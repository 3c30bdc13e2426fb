"""Qwen2.5-VL: Qwen2-VL's dynamic resolution and M-RoPE, with a window-attention ViT (SwiGLU, RMSNorm).

The chat template and the placeholder rule are Qwen2-VL's (one `<|image_pad|>` per merged 2x2 group of
14-px patches); the vision tower's module tree is the same too.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

QWEN2_5_VL = ModelFamily(
    name="qwen2_5-vl",
    architectures=("Qwen2_5_VLForConditionalGeneration",),
    config_model_types=("qwen2_5_vl",),
    template="qwen2_5-vl",
    modalities=("text", "image"),
    video=True,  # through the official processor, with torchvision (swiftlite/video.py)
    vision_tower=("model.visual.patch_embed", "model.visual.blocks"),
    aligner=("model.visual.merger",),
    language_model=("model.language_model",),
    requires=("transformers>=4.49",),
    grounding=True,
    notes="several images per turn at native resolution; grounding with absolute pixel coordinates; "
          "videos with torchvision (frames sampled at FPS)",
)


def _spec(size: str) -> ModelSpec:
    return ModelSpec(f"qwen2_5-vl-{size.lower()}-instruct", QWEN2_5_VL, f"Qwen/Qwen2.5-VL-{size}-Instruct",
                     f"Qwen/Qwen2.5-VL-{size}-Instruct")


register_family(QWEN2_5_VL, [_spec(size) for size in ("3B", "7B", "32B", "72B")])

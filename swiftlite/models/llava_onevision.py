"""LLaVA-OneVision in the llava-hf layout: SigLIP-384 vision tower, 2-layer MLP projector, Qwen2 LLM.

Images use "anyres_max_9": LLaVA-NeXT's tiling over a 6x6 grid of 384-px tiles, with the un-padded tile
features pooled down when they exceed about nine tiles' worth. The token count depends on each image's size
(processor rule in templates/llava_onevision.py).
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

LLAVA_ONEVISION = ModelFamily(
    name="llava_onevision",
    architectures=("LlavaOnevisionForConditionalGeneration",),
    config_model_types=("llava_onevision",),
    template="llava-onevision-qwen",
    modalities=("text", "image"),
    video=True,  # through the official processor, with torchvision (swiftlite/video.py)
    vision_tower=("model.vision_tower",),
    # image_newline is a bare parameter (the row separator of the un-padded tile features), trained with the projector.
    aligner=("model.multi_modal_projector", "model.image_newline"),
    language_model=("model.language_model",),
    requires=("transformers>=4.45",),
    notes="anyres_max_9 tiling: token count depends on each image's size; videos with torchvision",
)

register_family(
    LLAVA_ONEVISION,
    [
        ModelSpec("llava-onevision-qwen2-0_5b-ov", LLAVA_ONEVISION, "AI-ModelScope/llava-onevision-qwen2-0.5b-ov-hf",
                  "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", torch_dtype="float16"),
        ModelSpec("llava-onevision-qwen2-7b-ov", LLAVA_ONEVISION, "AI-ModelScope/llava-onevision-qwen2-7b-ov-hf",
                  "llava-hf/llava-onevision-qwen2-7b-ov-hf", torch_dtype="float16"),
    ],
)

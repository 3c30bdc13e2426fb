"""InternVL3 in the transformers-native (-hf) layout: InternViT, pixel-shuffle MLP projector, Qwen2.5 LLM.

Each image is cut into 1..12 tiles of 448 px (GotOcr2 "crop to patches", plus a thumbnail when there are
several), and every tile becomes 256 `<IMG_CONTEXT>` tokens wrapped in `<img>`...`</img>`.
The original remote-code repos (OpenGVLab/InternVL3-*B without -hf) are a different module layout.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

INTERNVL3 = ModelFamily(
    name="internvl3",
    architectures=("InternVLForConditionalGeneration",),
    config_model_types=("internvl",),
    template="internvl3-hf",
    modalities=("text", "image"),
    video=True,  # through the official processor, with torchvision (swiftlite/video.py)
    vision_tower=("model.vision_tower",),
    aligner=("model.multi_modal_projector",),
    language_model=("model.language_model",),
    requires=("transformers>=4.52",),
    grounding=True,
    notes="the -hf checkpoints (transformers InternVL classes); videos with torchvision (frames as tiles)",
)

register_family(
    INTERNVL3,
    [
        ModelSpec("internvl3-1b-hf", INTERNVL3, "OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-1B-hf"),
        ModelSpec("internvl3-2b-hf", INTERNVL3, "OpenGVLab/InternVL3-2B-hf", "OpenGVLab/InternVL3-2B-hf"),
        ModelSpec("internvl3-8b-hf", INTERNVL3, "OpenGVLab/InternVL3-8B-hf", "OpenGVLab/InternVL3-8B-hf"),
    ],
)

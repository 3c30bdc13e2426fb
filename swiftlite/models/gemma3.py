"""Gemma 3 (vision checkpoints, 4B and up): SigLIP-896 vision tower, pooled multimodal projector, Gemma 3 LLM.

Every image becomes `<start_of_image>` + 256 soft tokens + `<end_of_image>` between blank lines, and the
image's soft tokens attend to each other bidirectionally, which the model reads from `token_type_ids`.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

GEMMA3 = ModelFamily(
    name="gemma3",
    architectures=("Gemma3ForConditionalGeneration",),
    config_model_types=("gemma3",),
    template="gemma3-vision",
    modalities=("text", "image"),
    vision_tower=("model.vision_tower",),
    aligner=("model.multi_modal_projector",),
    language_model=("model.language_model",),
    requires=("transformers>=4.50",),
    notes="fixed 256 tokens per image at 896 px; pan-and-scan crops follow the processor setting (off by default)",
)

register_family(
    GEMMA3,
    [
        ModelSpec("gemma3-4b-it", GEMMA3, "LLM-Research/gemma-3-4b-it", "google/gemma-3-4b-it"),
        ModelSpec("gemma3-12b-it", GEMMA3, "LLM-Research/gemma-3-12b-it", "google/gemma-3-12b-it"),
        ModelSpec("gemma3-27b-it", GEMMA3, "LLM-Research/gemma-3-27b-it", "google/gemma-3-27b-it"),
    ],
)

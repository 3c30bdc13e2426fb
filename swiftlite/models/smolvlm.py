"""SmolVLM (the Idefics3 architecture): SigLIP vision tower, pixel-shuffle connector, SmolLM2 (Llama) LLM.

Large images are split into a grid of 512-px tiles plus a downscaled global view; each becomes 64 `<image>`
tokens, introduced by `<fake_token_around_image>` and a `<row_r_col_c>` / `<global-img>` tag. The published
SmolVLM checkpoints are config `model_type` "idefics3" (transformers' newer "smolvlm" classes load the same layout).
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

SMOLVLM = ModelFamily(
    name="smolvlm",
    architectures=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
    config_model_types=("idefics3", "smolvlm"),
    template="smolvlm",
    modalities=("text", "image"),
    vision_tower=("model.vision_model",),
    aligner=("model.connector",),
    language_model=("model.text_model",),
    requires=("transformers>=4.46",),
    notes="split-image tiling: token count depends on each image's size; video inputs are not wired yet",
)

register_family(
    SMOLVLM,
    [
        ModelSpec("smolvlm-256m-instruct", SMOLVLM, "HuggingFaceTB/SmolVLM-256M-Instruct",
                  "HuggingFaceTB/SmolVLM-256M-Instruct"),
        ModelSpec("smolvlm-500m-instruct", SMOLVLM, "HuggingFaceTB/SmolVLM-500M-Instruct",
                  "HuggingFaceTB/SmolVLM-500M-Instruct"),
        ModelSpec("smolvlm-2b-instruct", SMOLVLM, "HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceTB/SmolVLM-Instruct"),
    ],
)

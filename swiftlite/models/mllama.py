"""Llama 3.2 Vision (Mllama): a tiled ViT (up to 4 tiles of 560 px per image) whose features enter a Llama 3.1
LLM through cross-attention layers. `<|image|>` stays ONE token in the text; cross_attention_mask says which
text tokens see which image's tiles, aspect_ratio_ids/aspect_ratio_mask describe the tiling.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

MLLAMA = ModelFamily(
    name="mllama",
    architectures=("MllamaForConditionalGeneration",),
    config_model_types=("mllama",),
    template="llama3_2-vision",
    modalities=("text", "image"),
    vision_tower=("model.vision_model",),
    aligner=("model.multi_modal_projector",),
    # The cross-attention layers live inside the language model (their gates and k/v projections train with it).
    language_model=("model.language_model",),
    requires=("transformers>=4.45",),
    notes="images enter through cross-attention: one <|image|> token each, up to 4 tiles of 560 px; the official "
          "template writes the dated system block only when the user gives a system prompt or there is no image",
)

register_family(
    MLLAMA,
    [
        ModelSpec("llama3_2-11b-vision-instruct", MLLAMA, "LLM-Research/Llama-3.2-11B-Vision-Instruct",
                  "meta-llama/Llama-3.2-11B-Vision-Instruct"),
        ModelSpec("llama3_2-90b-vision-instruct", MLLAMA, "LLM-Research/Llama-3.2-90B-Vision-Instruct",
                  "meta-llama/Llama-3.2-90B-Vision-Instruct"),
        ModelSpec("llama3_2-11b-vision", MLLAMA, "LLM-Research/Llama-3.2-11B-Vision",
                  "meta-llama/Llama-3.2-11B-Vision", template="llama3_2-vision-generation", is_chat=False),
    ],
)

"""LLaVA-1.5 in the llava-hf layout: a CLIP vision tower, a 2-layer MLP projector, a Llama/Vicuna LLM.

Every image becomes a fixed number of tokens ((image_size/patch)^2, 576 at 336 px), and the official chat
template puts a turn's images before its text.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

LLAVA_1_5 = ModelFamily(
    name="llava1_5",
    architectures=("LlavaForConditionalGeneration",),
    config_model_types=("llava",),
    template="llava1_5",
    modalities=("text", "image"),
    vision_tower=("model.vision_tower",),
    aligner=("model.multi_modal_projector",),
    language_model=("model.language_model",),
    requires=("transformers>=4.45",),
    notes="several images per turn are accepted, though LLaVA-1.5 was trained with one",
)

register_family(
    LLAVA_1_5,
    [
        ModelSpec("llava1_5-7b-instruct", LLAVA_1_5, "swift/llava-1.5-7b-hf", "llava-hf/llava-1.5-7b-hf",
                  torch_dtype="float16"),
        ModelSpec("llava1_5-13b-instruct", LLAVA_1_5, "swift/llava-1.5-13b-hf", "llava-hf/llava-1.5-13b-hf",
                  torch_dtype="float16"),
    ],
)

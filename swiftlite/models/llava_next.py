"""LLaVA-NeXT (LLaVA-1.6) in the llava-hf layout: CLIP-336 vision tower, 2-layer MLP projector, Mistral or Vicuna LLM.

"anyres": each image is resized to the best of a few grid resolutions (image_grid_pinpoints), cut into
336-px tiles plus a downscaled base tile, and the features of the tiles are un-padded back to the
image's aspect ratio with one learned newline embedding (`image_newline`) per row. The number of
`<image>` tokens therefore depends on each image's size (processor rule in templates/llava_next.py).
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

LLAVA_NEXT = ModelFamily(
    name="llava_next",
    architectures=("LlavaNextForConditionalGeneration",),
    config_model_types=("llava_next",),
    template="llava-mistral",
    modalities=("text", "image"),
    vision_tower=("model.vision_tower",),
    # image_newline is a bare parameter (the row separator of the un-padded tile features), trained with the projector.
    aligner=("model.multi_modal_projector", "model.image_newline"),
    language_model=("model.language_model",),
    requires=("transformers>=4.45",),
    notes="anyres tiling: token count depends on each image's size; Vicuna checkpoints use the llava-vicuna template",
)

register_family(
    LLAVA_NEXT,
    [
        ModelSpec("llava1_6-mistral-7b-instruct", LLAVA_NEXT, "swift/llava-v1.6-mistral-7b-hf",
                  "llava-hf/llava-v1.6-mistral-7b-hf", torch_dtype="float16"),
        ModelSpec("llava1_6-vicuna-7b-instruct", LLAVA_NEXT, "swift/llava-v1.6-vicuna-7b-hf",
                  "llava-hf/llava-v1.6-vicuna-7b-hf", torch_dtype="float16", template="llava-vicuna"),
        ModelSpec("llava1_6-vicuna-13b-instruct", LLAVA_NEXT, "swift/llava-v1.6-vicuna-13b-hf",
                  "llava-hf/llava-v1.6-vicuna-13b-hf", torch_dtype="float16", template="llava-vicuna"),
    ],
)

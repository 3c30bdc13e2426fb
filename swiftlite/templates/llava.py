"""LLaVA-1.5 (llava-hf): `USER: <image>\n... ASSISTANT:`; a fixed number of `<image>` tokens per image."""

from swiftlite.templates.base import TemplateMeta


def num_image_tokens(template, image_inputs: dict, index: int) -> int:
    # Official rule (LlavaProcessor.replace_image_token): patches of the processed image, plus the CLS token
    # unless the 'default' feature strategy drops it.
    settings = template.processor_config
    vision = template.model_config.get("vision_config", {})
    patch_size = settings.get("patch_size") or vision.get("patch_size", 14)
    additional = settings.get("num_additional_image_tokens", 1)
    strategy = settings.get("vision_feature_select_strategy") or template.model_config.get(
        "vision_feature_select_strategy", "default"
    )
    height, width = image_inputs["pixel_values"][index].shape[-2:]
    count = (height // patch_size) * (width // patch_size) + additional
    return count - 1 if strategy == "default" else count


LLAVA_1_5_TEMPLATE = TemplateMeta(
    name="llava1_5",
    image_token="<image>",
    raw_image_text="<image>\n",
    end_of_turn=None,  # the official template closes no turn: training appends </s> after each reply
    add_special_tokens=True,  # the official processor tokenizes the render with the tokenizer's <s>
    num_image_tokens=num_image_tokens,
)

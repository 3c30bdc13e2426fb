"""LLaVA-1.5 (llava-hf): `USER: <image>\n... ASSISTANT:`, encoded through LlavaProcessor (a fixed number of
`<image>` tokens per image: the patches of the processed image, plus CLS unless the 'default' strategy drops it)."""

from swiftlite.templates.meta import MediaExpansion, Rendering, TemplateMeta


def processor_defaults(template) -> dict:
    # Checkpoints saved before processors had settings of their own: the model config says the same.
    vision = template.model_config.get("vision_config", {})
    return {"patch_size": vision.get("patch_size", 14), "num_additional_image_tokens": 1,
            "vision_feature_select_strategy": template.model_config.get("vision_feature_select_strategy", "default")}


LLAVA_1_5_TEMPLATE = TemplateMeta(
    name="llava1_5",
    image_token="<image>",
    end_of_turn=None,  # the official template closes no turn: training appends </s> after each reply
    rendering=Rendering(
        raw_image_text="<image>\n",
        add_special_tokens=True,  # the official processor tokenizes the render with the tokenizer's <s>
    ),
    media=MediaExpansion(processor_call=True, processor_defaults=processor_defaults),
)

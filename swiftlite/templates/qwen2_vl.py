"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the checkpoint's ChatML template; each image is
`<|vision_start|><|image_pad|><|vision_end|>`. The three templates are one declaration apart from the name
(Qwen2.5-VL's chat template is byte-identical to Qwen2-VL's; Qwen3-VL's has no default system prompt, which
the checkpoint's own template decides).

Encoded through the family's processor itself (Qwen2VLProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor): it
expands `<|image_pad|>` to one token per merged 2x2 patch group (14-px patches, 16-px for Qwen3-VL) and returns
pixel values, image_grid_thw and the mm_token_type_ids M-RoPE needs (without which transformers' generate
silently falls back to 1-D positions; Qwen3-VL's interleaved M-RoPE reads them too).
"""

from dataclasses import replace

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta

QWEN2_VL_TEMPLATE = TemplateMeta(
    name="qwen2-vl",
    tool_parser="hermes",
    image_token="<|image_pad|>",
    end_of_turn="<|im_end|>",
    rendering=Rendering(raw_image_text="<|vision_start|><|image_pad|><|vision_end|>", add_special_tokens=False),
    media=MediaExpansion(processor_call=True),
    collation=Collation(sequence_keys={"mm_token_type_ids": 0}),
)

QWEN2_5_VL_TEMPLATE = replace(QWEN2_VL_TEMPLATE, name="qwen2_5-vl")

# Thinking checkpoints ship a template that, like Qwen3's, may render only the last reply differently.
QWEN3_VL_TEMPLATE = replace(QWEN2_VL_TEMPLATE, name="qwen3-vl",
                            rendering=replace(QWEN2_VL_TEMPLATE.rendering, reply_ends_at_end_of_turn=True))

"""GLM-4.1V: the checkpoint's own template, `[gMASK]<sop>` then `<|system|>`/`<|user|>`/`<|assistant|>` turns;
each image is `<|begin_of_image|><|image|><|end_of_image|>`.

Encoded through Glm4vProcessor: `<|image|>` x grid_t*grid_h*grid_w // merge_size**2 (14-px patches merged 2x2),
and the mm_token_type_ids (1 on image tokens) that drive M-RoPE.

The template prints system and assistant contents as raw strings (only user turns take content-part lists), so
those two roles are given plain strings.

The template closes no turn: a reply is followed directly by the next `<|user|>`. So end_of_turn is None and
training appends the tokenizer's eos (`<|endoftext|>`) after each reply (labelled, so the model learns to stop),
as the GLM-4.1V training data ends replies; at generation time the model may instead stop by starting a new
turn, so `<|user|>` and `<|observation|>` also end a reply (the hub generation_config lists the same three
ids: 151329, 151336, 151338). The Thinking checkpoint answers as `<think>...</think><answer>...</answer>`: that
text is the reply and is returned as generated.
"""

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta


GLM4V_TEMPLATE = TemplateMeta(
    name="glm4_1v",
    tool_parser="glm4",
    image_token="<|image|>",
    end_of_turn=None,
    rendering=Rendering(
        raw_image_text="<|begin_of_image|><|image|><|end_of_image|>",
        # The render starts with `[gMASK]<sop>` already; the tokenizer must not add them again.
        add_special_tokens=False,
        string_content_roles=("system", "assistant"),
        stop_tokens=("<|user|>", "<|observation|>"),
    ),
    media=MediaExpansion(
        processor_call=True,  # Glm4vProcessor expands `<|image|>` and returns grids and mm_token_type_ids
    ),
    collation=Collation(sequence_keys={"mm_token_type_ids": 0}),
)

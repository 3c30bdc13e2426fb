"""Hand-written templates for remote-code VLM checkpoints whose prompt format lives in their Python code.

None of these checkpoints ships a usable chat template, so each format is written here as jinja following
the official code (facts in /work/shared/fixtures/<name>/facts.json), and used as the fallback (or, where the
shipped one cannot train, the override):

- yi-vl (Yi/VL/llava/conversation.py mm_default): `{system}\\n\\n### Human: <image_placeholder>\\nQ\\n### Assistant: A`
- deepseek-vl (DeepSeek-VL conversation.py 'deepseek'): `{system}\\n\\nUser: Q\\n\\nAssistant: A<｜end▁of▁sentence｜>`,
  each `<image_placeholder>` expanded to 576.
- internvl2 (InternVL conversation.py 'internlm2-chat', MPT style: no newline after <|im_end|>):
  `<image>` -> `<img>` + `<IMG_CONTEXT>` x 256 per 448-px tile + `</img>` (model-card dynamic_preprocess).
- minicpm-v-v2_5 (Llama-3 turns; `<image>` + `<unk>` x query_num + `</image>` + slices, then `\\n`).
- glm4v (glm-4v-9b): `[gMASK]<sop><|user|>\\n<|begin_of_image|><|endoftext|><|end_of_image|>Q<|assistant|>\\nA`;
  the model replaces the span between the image markers with its 1600 image features itself.
- cogvlm2 (build_conversation_input_ids, template 'chat'): `<bos>` + image pads + `Question: Q Answer: A\\n...`.
"""

from __future__ import annotations

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta


def _content(image_text: str) -> str:
    """Jinja macro: a message's text with each image part written as `image_text`."""
    return (
        "{%- macro content_text(content) -%}"
        "{%- if content is string -%}{{ content }}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part['type'] == 'image' -%}" + image_text + "{%- else -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
    )


def _fixed(count: int):
    def num_image_tokens(template, image_inputs: dict, index: int) -> int:
        return count

    return num_image_tokens


# ---- Yi-VL ------------------------------------------------------------------------------------------------
YI_VL_SYSTEM = (
    "This is a chat between an inquisitive human and an AI assistant. Assume the role of the AI assistant. "
    "Read all the images carefully, and respond to the human's questions with informative, helpful, detailed "
    "and polite answers. 这是一个好奇的人类和一个人工智能助手之间的对话。假设你扮演这个AI助手的角色。"
    "仔细阅读所有的图像，并对人类的问题做出信息丰富、有帮助、详细的和礼貌的回答。"
)
YI_VL_CHAT_TEMPLATE = _content("<image_placeholder>{{ '\\n' }}") + (
    "{%- if messages[0]['role'] == 'system' -%}{{ content_text(messages[0]['content']) }}"
    "{%- set turns = messages[1:] -%}{%- else -%}" + YI_VL_SYSTEM + "{%- set turns = messages -%}{%- endif -%}"
    "{{ '\\n\\n' }}"
    "{%- for message in turns -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "### {{ 'Human' if message['role'] == 'user' else 'Assistant' }}: {{ content_text(message['content']) }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n' }}### Assistant:{%- endif -%}"
)

YI_VL_TEMPLATE = TemplateMeta(
    name="yi-vl",
    # LLaVA's tokenizer_image_token puts the IMAGE_TOKEN_INDEX sentinel (-200) where this text is; the model
    # code replaces it by the image features, so the prompt carries one position per image.
    image_token="<image_placeholder>",
    end_of_turn=None,  # turns are separated by "\n###": training appends </s> after each reply
    max_images=1,  # the dialogue revolves around one image (ms-swift seeds)
    rendering=Rendering(
        raw_image_text="<image_placeholder>\n",
        add_special_tokens=True,
        fallback_chat_template=YI_VL_CHAT_TEMPLATE,
    ),
    media=MediaExpansion(num_image_tokens=_fixed(1)),
)

# ---- DeepSeek-VL ------------------------------------------------------------------------------------------
DEEPSEEK_VL_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"
DEEPSEEK_VL_CHAT_TEMPLATE = _content("<image_placeholder>") + (
    "{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
    "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = '" + DEEPSEEK_VL_SYSTEM + "' -%}"
    "{%- set turns = messages -%}{%- endif -%}"
    "{%- if system -%}{{ system }}{{ '\\n\\n' }}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}User: {{ content_text(message['content']) }}{{ '\\n\\n' }}"
    "{%- else -%}Assistant: {{ content_text(message['content']) }}" + DEEPSEEK_EOS + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)

DEEPSEEK_VL_TEMPLATE = TemplateMeta(
    name="deepseek-vl",
    image_token="<image_placeholder>",
    end_of_turn=DEEPSEEK_EOS,
    rendering=Rendering(
        raw_image_text="<image_placeholder>",
        add_special_tokens=True,  # VLChatProcessor tokenizes with the tokenizer's BOS
        fallback_chat_template=DEEPSEEK_VL_CHAT_TEMPLATE,
    ),
    media=MediaExpansion(
        num_image_tokens=_fixed(576),  # processing_vlm.py num_image_tokens
    ),
)

# ---- InternVL2 --------------------------------------------------------------------------------------------
INTERNVL2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
INTERNVL2_CHAT_TEMPLATE = _content("<image>{{ '\\n' }}") + (
    "{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
    "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = '" + INTERNVL2_SYSTEM + "' -%}"
    "{%- set turns = messages -%}{%- endif -%}"
    "<|im_start|>system{{ '\\n' }}{{ system }}<|im_end|>"
    "{%- for message in turns -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}{{ content_text(message['content']) }}<|im_end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)
INTERNVL_MEAN, INTERNVL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def internvl_tile_grid(width: int, height: int, image_size: int, min_num: int = 1, max_num: int = 12) -> tuple[int, int]:
    """The model card's dynamic_preprocess: the (columns, rows) grid of tiles closest to the aspect ratio."""
    aspect = width / height
    ratios = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if min_num <= i * j <= max_num}, key=lambda r: r[0] * r[1])
    best, best_diff, area = (1, 1), float("inf"), width * height
    for ratio in ratios:  # find_closest_aspect_ratio
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best, best_diff = ratio, diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def _internvl_settings(template) -> tuple[int, int, bool]:
    config = template.model_config
    size = config.get("force_image_size") or config.get("vision_config", {}).get("image_size", 448)
    return size, config.get("max_dynamic_patch", 12), config.get("use_thumbnail", True)


def internvl_tiles(template, images: list) -> dict:
    """Official load_image: tiles of the image (plus a thumbnail when split), normalised; one row per tile."""
    import numpy as np
    import torch
    from PIL import Image

    size, max_num, thumbnail = _internvl_settings(template)
    tiles, counts = [], []
    for image in images:
        columns, rows = internvl_tile_grid(*image.size, size, 1, max_num)
        resized = image.convert("RGB").resize((size * columns, size * rows), Image.BICUBIC)
        crops = [resized.crop((c * size, r * size, (c + 1) * size, (r + 1) * size)) for r in range(rows) for c in range(columns)]
        if thumbnail and len(crops) != 1:
            crops.append(image.convert("RGB").resize((size, size), Image.BICUBIC))
        tiles += crops
        counts.append(len(crops))
    array = np.stack([np.asarray(t, dtype=np.float32) / 255.0 for t in tiles])
    array = (array - np.array(INTERNVL_MEAN, dtype=np.float32)) / np.array(INTERNVL_STD, dtype=np.float32)
    pixel_values = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return {"pixel_values": pixel_values, "image_flags": torch.ones(len(tiles), dtype=torch.long),
            "num_patches": torch.tensor(counts)}


def internvl_image_text(template, image_inputs: dict, index: int) -> str:
    size, _, _ = _internvl_settings(template)
    patch = template.model_config.get("vision_config", {}).get("patch_size", 14)
    per_tile = int((size // patch) ** 2 * template.model_config.get("downsample_ratio", 0.5) ** 2)  # 256
    return "<img>" + "<IMG_CONTEXT>" * (per_tile * int(image_inputs["num_patches"][index])) + "</img>"


INTERNVL2_TEMPLATE = TemplateMeta(
    name="internvl2",
    image_token="<image>",
    end_of_turn="<|im_end|>",
    rendering=Rendering(
        raw_image_text="<image>\n",
        add_special_tokens=True,  # model.chat tokenizes the query with the tokenizer's <s>
        fallback_chat_template=INTERNVL2_CHAT_TEMPLATE,
    ),
    media=MediaExpansion(
        image_processor_call=internvl_tiles,
        expand_image_text=internvl_image_text,
        unused_image_keys=("num_patches",),
    ),
)

# ---- MiniCPM-Llama3-V 2.5 ---------------------------------------------------------------------------------
# The tokenizer's own template always appends the assistant header (so a conversation ending with a reply
# cannot be rendered for training): this one renders the same turns and honours add_generation_prompt.
MINICPM_V_2_5_CHAT_TEMPLATE = _content("<image>{{ '\\n' }}") + (
    "{{ '<|begin_of_text|>' }}"
    "{%- for message in messages -%}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>{{ '\\n\\n' }}{{ content_text(message['content']) | trim }}<|eot_id|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>{{ '\\n\\n' }}{%- endif -%}"
)


def minicpm_slice_grid(width: int, height: int, max_slices: int = 9, scale: int = 448) -> tuple[int, int] | None:
    """MiniCPM-V get_sliced_grid: (columns, rows) of slices for a large image, None when it is not sliced."""
    import math

    ratio = width * height / (scale * scale)
    multiple = min(math.ceil(ratio), max_slices)
    if multiple <= 1:
        return None
    log_ratio = math.log(width / height)
    best, best_error = None, float("inf")
    for count in (multiple - 1, multiple, multiple + 1):
        if count == 1 or count > max_slices:
            continue
        for columns in range(1, count + 1):
            if count % columns == 0:
                error = abs(log_ratio - math.log(columns / (count // columns)))
                if error < best_error:
                    best, best_error = (columns, count // columns), error
    return best


def minicpm_images(template, images: list) -> dict:
    outputs = dict(template.image_processor(images=images, return_tensors="pt")) if template.image_processor else {}
    import torch

    outputs["original_sizes"] = torch.tensor([image.size for image in images])
    return outputs


def minicpm_image_text(template, image_inputs: dict, index: int) -> str:
    """get_slice_image_placeholder: the whole image's query tokens, then one row of slices per line."""
    config = template.model_config
    query = "<unk>" * config.get("query_num", 96)
    text = "<image>" + query + "</image>"
    width, height = (int(v) for v in image_inputs["original_sizes"][index])
    grid = minicpm_slice_grid(width, height, config.get("max_slice_nums", 9), config.get("scale_resolution", 448)) \
        if config.get("slice_mode", True) else None
    if grid:
        columns, rows = grid
        line = ("<image>" + query + "</image>") * columns  # get_grid_placeholder: rows of slices in <slice>
        text += "<slice>" + "\n".join([line] * rows) + "</slice>"
    return text


MINICPM_V_2_5_TEMPLATE = TemplateMeta(
    name="minicpm-v-v2_5",
    image_token="<image>",
    end_of_turn="<|eot_id|>",
    max_images=1,  # the whole dialogue revolves around one image (ms-swift seeds)
    rendering=Rendering(
        raw_image_text="<image>\n",
        add_special_tokens=False,  # the template writes <|begin_of_text|>
        chat_template_override=MINICPM_V_2_5_CHAT_TEMPLATE,
    ),
    media=MediaExpansion(
        image_processor_call=minicpm_images,
        expand_image_text=minicpm_image_text,
        unused_image_keys=("original_sizes",),
    ),
)

# ---- GLM-4V-9B --------------------------------------------------------------------------------------------
GLM4V_CHAT_TEMPLATE = _content("<|begin_of_image|><|endoftext|><|end_of_image|>") + (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "<|{{ message['role'] }}|>{{ '\\n' }}{{ content_text(message['content']) }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

GLM4V_TEMPLATE = TemplateMeta(
    name="glm4v",
    # The prompt keeps one <|endoftext|> between the image markers; the model code swaps the whole span for
    # its image features, so the ids carry no expansion: one marker position per image.
    image_token="<|begin_of_image|>",
    end_of_turn=None,  # a reply ends where the next <|user|> starts: training appends <|endoftext|>
    max_images=1,
    rendering=Rendering(
        raw_image_text="<|begin_of_image|><|endoftext|><|end_of_image|>",
        add_special_tokens=False,
        fallback_chat_template=GLM4V_CHAT_TEMPLATE,
    ),
    media=MediaExpansion(num_image_tokens=_fixed(1)),
)

# ---- CogVLM2 ----------------------------------------------------------------------------------------------
COGVLM2_IMAGE_PAD = "<|reserved_special_token_0|>"  # the Llama-3 tokenizer's pad token in the CogVLM2 repo
COGVLM2_CHAT_TEMPLATE = _content("") + (
    "{{ bos_token }}"
    "{%- for message in messages -%}{%- if message['content'] is not string -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'image' -%}" + COGVLM2_IMAGE_PAD + "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "Question: {{ content_text(message['content']) }} Answer:"
    "{%- elif message['role'] == 'assistant' -%}{{ ' ' }}{{ content_text(message['content']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def cogvlm2_image_tokens(template, image_inputs: dict, index: int) -> int:
    vision = template.model_config.get("vision_config", {})
    return (vision.get("image_size", 1344) // vision.get("patch_size", 14) // 2) ** 2 + 2  # 2306


def cogvlm2_token_types(template, input_ids: list[int]) -> dict:
    """CogVLM2's token_type_ids: 1 (VISION) on the image positions after <bos>, 0 (LANGUAGE) elsewhere."""
    pad = template.token_id(COGVLM2_IMAGE_PAD)
    return {"token_type_ids": [1 if token == pad else 0 for token in input_ids]}


COGVLM2_TEMPLATE = TemplateMeta(
    name="cogvlm2",
    image_token=COGVLM2_IMAGE_PAD,
    end_of_turn=None,  # replies end with </s> (<|end_of_text|>) appended for training
    supports_system=False,
    max_images=1,  # build_conversation_input_ids takes one image
    rendering=Rendering(
        raw_image_text=COGVLM2_IMAGE_PAD,
        add_special_tokens=False,  # the template writes <bos> itself, before the image
        fallback_chat_template=COGVLM2_CHAT_TEMPLATE,
    ),
    media=MediaExpansion(num_image_tokens=cogvlm2_image_tokens, extra_inputs=cogvlm2_token_types),
    collation=Collation(sequence_keys={"token_type_ids": 0}),
)

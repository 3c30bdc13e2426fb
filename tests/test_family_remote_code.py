"""Remote-code families (Qwen-VL, Qwen-Audio, Yi-VL, MiniCPM-V 2.5, DeepSeek-VL, InternVL2, GLM-4V, CogVLM2).

Their modelling code is not installed here, so these tests hold the hand-written templates to the official
prompt code (facts in /work/shared/fixtures/<name>/facts.json): the prompt text, special tokens and
separators, the labels on replies, and each family's media-token layout; plus the registry, `mm list` and the
one-line error when a package the checkpoint's code needs is missing. The tokenizers are tiny BPEs carrying
each model's real special tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image

from swiftlite.conversation import Conversation, conversation_from_query
from swiftlite.models import FAMILIES, MODEL_TYPES, family_for_config
from swiftlite.templates import IGNORE_INDEX, TemplateError, get_template

FIXTURES = "/work/shared/fixtures"
RED = Image.new("RGB", (56, 84), (255, 0, 0))
WIDE = Image.new("RGB", (1000, 500), (0, 255, 0))
REMOTE_FAMILIES = ("qwen-vl", "qwen-audio", "yi-vl", "minicpm-v-v2_5", "deepseek-vl", "internvl2", "glm4v", "cogvlm2")


def facts(name: str) -> dict:
    with open(f"{FIXTURES}/{name}/facts.json") as handle:
        return json.load(handle)


@lru_cache(maxsize=None)
def tiny_tokenizer(specials: tuple[str, ...], bos: str | None = None, **tokens):
    """A byte-level BPE with the model's special tokens; `bos` is prepended like the real tokenizer does."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from swiftlite.testing.tiny import train_bpe

    backend = train_bpe(list(specials), 300)
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, backend.token_to_id(bos))])
        tokens = {**tokens, "bos_token": bos}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def tiny_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})


def replies(tokenizer, row) -> list[str]:
    """The labelled stretches of a row, decoded: exactly the assistant replies (and their end token)."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def three_turns(*images, first="<image>what colour is it?") -> Conversation:
    return Conversation([
        {"role": "user", "content": first},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "and the shape?"},
        {"role": "assistant", "content": "a circle"},
    ], list(images))


# ---- Qwen-VL ----------------------------------------------------------------------------------------------
QWEN_VL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<ref>", "</ref>", "<box>", "</box>", "<quad>",
                    "</quad>", "<img>", "</img>", "<imgpad>")


def qwen_vl_tokenizer():
    return tiny_tokenizer(QWEN_VL_SPECIALS, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def image_spans(tokenizer, ids):
    start, end = tokenizer.convert_tokens_to_ids("<img>"), tokenizer.convert_tokens_to_ids("</img>")
    return [(i, ids.index(end, i)) for i, token in enumerate(ids) if token == start]


def text_with_urls(tokenizer, ids) -> str:
    """Decode ids, turning each <img> span back into `<img>URL</img>` as Qwen-VL's tokenizer decodes it."""
    pad, text, previous = tokenizer.convert_tokens_to_ids("<imgpad>"), "", 0
    for start, end in image_spans(tokenizer, ids):
        url = bytes(token for token in ids[start + 1:end] if token != pad).decode()
        text += tokenizer.decode(ids[previous:start]) + f"<img>{url}</img>"
        previous = end + 1
    return text + tokenizer.decode(ids[previous:])


def test_qwen_vl_chat_prompt_is_the_official_example():
    tokenizer = qwen_vl_tokenizer()
    template = get_template(MODEL_TYPES["qwen-vl-chat"].template_type, tokenizer)
    official = facts("qwen-vl-chat")["prompt_format"]["example"]
    query = official.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]  # 'Picture 1:<img>URL</img>\n这是什么?'
    row = template.encode(conversation_from_query(query))
    assert text_with_urls(tokenizer, row["input_ids"]) == official
    assert "labels" not in row and "pixel_values" not in row  # the model loads the image from the URL itself


def test_qwen_vl_image_span_is_img_url_bytes_pads_close():
    tokenizer = qwen_vl_tokenizer()
    template = get_template("qwen-vl", tokenizer)
    urls = ["https://example.com/rose.jpg", "/data/images/cat.png"]
    row = template.encode(conversation_from_query(f"Picture 1:<img>{urls[0]}</img>\nPicture 2:<img>{urls[1]}</img>\nsame?"))
    ids, pad = row["input_ids"], tokenizer.convert_tokens_to_ids("<imgpad>")
    spans = image_spans(tokenizer, ids)
    assert len(spans) == 2
    for (start, end), url in zip(spans, urls):
        assert end - start + 1 == 258  # <img> + 256 + </img>
        body = ids[start + 1:end]
        assert body == list(url.encode()) + [pad] * (256 - len(url.encode()))
    too_long = "https://example.com/" + "x" * 300 + ".png"
    with pytest.raises(TemplateError, match="at most 256"):
        template.encode(conversation_from_query(f"<img>{too_long}</img>hi"))


def test_qwen_vl_chat_labels_system_and_separators():
    tokenizer = qwen_vl_tokenizer()
    template = get_template("qwen-vl", tokenizer)
    conversation = three_turns("/img/red.png")
    conversation.messages.insert(0, {"role": "system", "content": "answer in one word"})
    row = template.encode(conversation)
    assert replies(tokenizer, row) == ["red<|im_end|>", "a circle<|im_end|>"]
    assert text_with_urls(tokenizer, row["input_ids"]) == (
        "<|im_start|>system\nanswer in one word<|im_end|>\n<|im_start|>user\n<img>/img/red.png</img>what colour is it?"
        "<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n<|im_start|>user\nand the shape?<|im_end|>\n"
        "<|im_start|>assistant\na circle<|im_end|>\n")
    with pytest.raises(TemplateError, match="paths or URLs"):
        template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [RED]))


def test_qwen_vl_base_takes_the_raw_prompt():
    spec = MODEL_TYPES["qwen-vl"]
    assert not spec.is_chat and spec.template_type == "qwen-vl-generation"
    tokenizer = qwen_vl_tokenizer()
    template = get_template(spec.template_type, tokenizer)
    official = facts("qwen-vl")["prompt_format"]["examples"][0]
    url = official.split("<img>")[1].split("</img>")[0]
    row = template.encode_raw("Picture 1:<image>\nGenerate the caption in English with grounding:", [url])
    assert text_with_urls(tokenizer, row["input_ids"]) == official
    trained = template.encode(conversation_from_query("<img>/a.png</img>This is a", response=" rose"))
    assert replies(tokenizer, trained) == [" rose<|endoftext|>"]  # no turn marker: the eos ends the reply


# ---- Qwen-Audio -------------------------------------------------------------------------------------------
QWEN_AUDIO_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "[[[AUDIO:modality]]]", "<|startoftranscript|>",
                       "<audio>", "</audio>")


def write_wav(path, seconds: float):
    samples = (np.sin(np.arange(int(16000 * seconds)) / 10) * 2000).astype(np.int16)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(samples.tobytes())
    return str(path)


def test_qwen_audio_chat_span_and_prompt(tmp_path):
    from swiftlite.templates.remote_code_qwen import audio_token_count

    assert audio_token_count(30 * 16000) == 750  # the facts' example: a 30-s clip -> 750 tokens (span 752)
    assert audio_token_count(60 * 16000) == 750  # clipped at 30 s
    tokenizer = tiny_tokenizer(QWEN_AUDIO_SPECIALS, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    template = get_template(MODEL_TYPES["qwen-audio-chat"].template_type, tokenizer)
    clip = write_wav(tmp_path / "one_second.wav", 1.0)
    row = template.encode(conversation_from_query(f"Audio 1:<audio>{clip}</audio>\nwhat is it?", response="a sound"))
    ids = row["input_ids"]
    start, end = ids.index(tokenizer.convert_tokens_to_ids("<audio>")), ids.index(tokenizer.convert_tokens_to_ids("</audio>"))
    pad = tokenizer.convert_tokens_to_ids("[[[AUDIO:modality]]]")
    # 1 s: 100 mel frames -> 50 after the stride-2 conv -> 25 audio tokens.
    assert ids[start + 1:end] == [pad] * 25
    assert tokenizer.decode(ids[:start]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAudio 1:")
    assert tokenizer.decode(ids[end + 1:]) == "\nwhat is it?<|im_end|>\n<|im_start|>assistant\na sound<|im_end|>\n"
    assert replies(tokenizer, row) == ["a sound<|im_end|>"]


# ---- Yi-VL ------------------------------------------------------------------------------------------------
def test_yi_vl_prompt_labels_and_one_image(tmp_path):
    tokenizer = tiny_tokenizer(("<unk>", "<|startoftext|>", "<|endoftext|>", "<image_placeholder>"),
                               eos_token="<|endoftext|>", unk_token="<unk>")
    template = get_template("yi-vl", tokenizer, image_processor=tiny_processor())
    fact = facts("yi-vl")["prompt_format"]
    prompt = template.encode(Conversation([{"role": "user", "content": "<image>Describe the cats."}], [RED]))
    image_id = tokenizer.convert_tokens_to_ids("<image_placeholder>")
    assert prompt["input_ids"].count(image_id) == 1  # one position: LLaVA's -200 sentinel, swapped by the model
    assert tokenizer.decode(prompt["input_ids"]) == fact["example"].replace("<system>", fact["system"])
    row = template.encode(three_turns(RED))
    assert tokenizer.decode(row["input_ids"]).endswith(
        "### Human: <image_placeholder>\nwhat colour is it?\n### Assistant: red<|endoftext|>\n"
        "### Human: and the shape?\n### Assistant: a circle<|endoftext|>")
    assert replies(tokenizer, row) == [" red<|endoftext|>", " a circle<|endoftext|>"]
    with pytest.raises(TemplateError, match="at most 1 image"):
        template.encode(Conversation([{"role": "user", "content": "<image><image>same?"}], [RED, RED]))


# ---- MiniCPM-Llama3-V 2.5 ---------------------------------------------------------------------------------
MINICPM_SPECIALS = ("<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|eot_id|>", "<image>", "</image>", "<slice>", "</slice>")


def test_minicpm_v_2_5_turns_match_the_tokenizer_template():
    tokenizer = tiny_tokenizer(MINICPM_SPECIALS, eos_token="<|eot_id|>", unk_token="<unk>")
    template = get_template(MODEL_TYPES["minicpm-v-v2_5-chat"].template_type, tokenizer, model_config={"query_num": 96})
    with open(f"{FIXTURES}/minicpm-llama3-v-2_5/chat_template.jinja") as handle:
        official = handle.read()
    messages = [{"role": "user", "content": "what is in this image?"}, {"role": "assistant", "content": "a cat"},
                {"role": "user", "content": "what colour is it?"}]
    expected = tokenizer.apply_chat_template(messages, chat_template=official, tokenize=False)
    prompt = template.encode(Conversation(messages))
    assert tokenizer.decode(prompt["input_ids"]) == expected
    row = template.encode(Conversation(messages + [{"role": "assistant", "content": "red"}]))
    assert replies(tokenizer, row) == ["a cat<|eot_id|>", "red<|eot_id|>"]


def test_minicpm_v_2_5_image_slices_and_one_image_per_dialogue():
    tokenizer = tiny_tokenizer(MINICPM_SPECIALS, eos_token="<|eot_id|>", unk_token="<unk>")
    template = get_template("minicpm-v-v2_5", tokenizer, model_config={"query_num": 96})
    unk = tokenizer.convert_tokens_to_ids("<unk>")
    small = template.encode(Conversation([{"role": "user", "content": "<image>what is it?"}], [RED]))
    assert tokenizer.decode(small["input_ids"]).startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>" + "<unk>" * 96 + "</image>\nwhat is it?")
    # 1000x500 is 2.5 times 448^2 -> 3 slices at best a 2x1 grid: one line of two slices after the whole image.
    wide = template.encode(Conversation([{"role": "user", "content": "<image>what is it?"}], [WIDE]))
    query = "<unk>" * 96
    assert wide["input_ids"].count(unk) == 3 * 96
    assert f"</image><slice><image>{query}</image><image>{query}</image></slice>\nwhat" in tokenizer.decode(wide["input_ids"])
    with pytest.raises(TemplateError, match="at most 1 image"):
        template.encode(three_turns(RED, RED, first="<image>what? <image>"))


# ---- DeepSeek-VL ------------------------------------------------------------------------------------------
def deepseek_tokenizer():
    return tiny_tokenizer(("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>"),
                          bos="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")


def test_deepseek_vl_prompt_576_tokens_and_labels():
    tokenizer = deepseek_tokenizer()
    template = get_template(MODEL_TYPES["deepseek-vl-7b-chat"].template_type, tokenizer, image_processor=tiny_processor())
    fact = facts("deepseek-vl")["prompt_format"]
    row = template.encode(Conversation([{"role": "user", "content": "<image>Describe each stage of this image."}], [RED]))
    ids, image_id = row["input_ids"], tokenizer.convert_tokens_to_ids("<image_placeholder>")
    assert ids[0] == tokenizer.bos_token_id and ids.count(image_id) == 576
    first = ids.index(image_id)
    assert ids[first:first + 576] == [image_id] * 576
    text = tokenizer.decode([t for t in ids[1:] if t != image_id])
    assert text == fact["default_system_prompt_of_VLChatProcessor"] + "\n\nUser: Describe each stage of this image.\n\nAssistant:"
    assert fact["example"].endswith("\n\nUser: <image_placeholder>Describe each stage of this image.\n\nAssistant:")
    trained = template.encode(three_turns(RED))
    assert replies(tokenizer, trained) == [" red<｜end▁of▁sentence｜>", " a circle<｜end▁of▁sentence｜>"]
    assert "<｜end▁of▁sentence｜>User: and the shape?\n\nAssistant: a circle" in tokenizer.decode(trained["input_ids"])


# ---- InternVL2 --------------------------------------------------------------------------------------------
def test_internvl2_prompt_tiles_and_labels():
    from swiftlite.templates.remote_code_vlm import internvl_tile_grid

    tokenizer = tiny_tokenizer(("<s>", "</s>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"),
                               bos="<s>", eos_token="</s>")
    template = get_template(MODEL_TYPES["internvl2-2b"].template_type, tokenizer, model_config={})
    fact = facts("internvl2")["prompt_format"]
    square = Image.new("RGB", (30, 30), (0, 0, 255))
    row = template.encode(Conversation([{"role": "user", "content": "<image>Describe the image."}], [square]))
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert row["input_ids"].count(context) == 256 and tuple(row["pixel_values"].shape) == (1, 3, 448, 448)
    text = tokenizer.decode(row["input_ids"]).replace("<IMG_CONTEXT>" * 256, "")
    assert text == "<s>" + fact["example"].replace("<image>", "<img></img>")
    # 56x84 is exactly a 2x3 grid: 6 tiles plus the thumbnail, 256 tokens each.
    assert internvl_tile_grid(56, 84, 448) == (2, 3)
    tall = template.encode(three_turns(RED))
    assert tall["input_ids"].count(context) == 7 * 256 and tall["pixel_values"].shape[0] == 7
    assert tall["image_flags"].tolist() == [1] * 7 and "num_patches" not in tall
    assert replies(tokenizer, tall) == ["red<|im_end|>", "a circle<|im_end|>"]
    assert "<|im_end|><|im_start|>assistant\nred<|im_end|><|im_start|>user\n" in tokenizer.decode(tall["input_ids"])


# ---- GLM-4V-9B --------------------------------------------------------------------------------------------
def test_glm4v_prompt_image_markers_and_labels():
    specials = ("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                "<|begin_of_image|>", "<|end_of_image|>")
    tokenizer = tiny_tokenizer(specials, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    template = get_template(MODEL_TYPES["glm4v-9b-chat"].template_type, tokenizer, image_processor=tiny_processor())
    row = template.encode(three_turns(RED))
    assert tokenizer.decode(row["input_ids"]) == (
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|endoftext|><|end_of_image|>what colour is it?<|assistant|>\nred"
        "<|endoftext|><|user|>\nand the shape?<|assistant|>\na circle<|endoftext|>")
    assert replies(tokenizer, row) == ["\nred<|endoftext|>", "\na circle<|endoftext|>"]
    assert "pixel_values" in row
    prompt = template.encode(Conversation([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]))
    assert tokenizer.decode(prompt["input_ids"]) == "[gMASK]<sop><|system|>\nbe brief<|user|>\nhi<|assistant|>"


# ---- CogVLM2 ----------------------------------------------------------------------------------------------
def test_cogvlm2_image_after_bos_and_question_answer_turns():
    tokenizer = tiny_tokenizer(("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"),
                               bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                               pad_token="<|reserved_special_token_0|>")
    template = get_template(MODEL_TYPES["cogvlm2-19b-chat"].template_type, tokenizer, image_processor=tiny_processor(),
                            model_config={"vision_config": {"image_size": 1344, "patch_size": 14}})
    row = template.encode(three_turns(RED))
    ids, pad = row["input_ids"], tokenizer.pad_token_id
    assert ids[0] == tokenizer.bos_token_id and ids[1:2307] == [pad] * 2306 and ids[2307] != pad
    assert row["token_type_ids"] == [0] + [1] * 2306 + [0] * (len(ids) - 2307)
    assert tokenizer.decode(ids[2307:]) == (
        "Question: what colour is it? Answer: red<|end_of_text|>\nQuestion: and the shape? Answer: a circle<|end_of_text|>")
    assert replies(tokenizer, row) == [" red<|end_of_text|>", " a circle<|end_of_text|>"]
    prompts = [template.encode(Conversation([{"role": "user", "content": "<image>what is it?"}], [RED])),
               template.encode(Conversation([{"role": "user", "content": "hi"}]))]
    assert tokenizer.decode(prompts[1]["input_ids"]) == "<|begin_of_text|>Question: hi Answer:"
    batch = template.collate(prompts, "left")  # token_type_ids are padded like input_ids
    assert batch["token_type_ids"].shape == batch["input_ids"].shape and batch["token_type_ids"][1].sum() == 0
    with pytest.raises(TemplateError, match="no system prompt"):
        template.encode(Conversation([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]))


# ---- registry, mm list, loading ---------------------------------------------------------------------------
def test_registry_entries_and_detection():
    for name in REMOTE_FAMILIES:
        family = FAMILIES[name]
        assert family.remote_code and not family.tested_offline and family.requires
    for model_type in ("qwen-vl-chat", "qwen-vl", "qwen-audio-chat", "yi-vl-6b-chat", "minicpm-v-v2_5-chat",
                       "deepseek-vl-7b-chat", "internvl2-2b", "internvl2-8b", "glm4v-9b-chat", "cogvlm2-19b-chat"):
        assert MODEL_TYPES[model_type].family.name in REMOTE_FAMILIES
    qwen = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen"}
    assert family_for_config({**qwen, "visual": {}}) is FAMILIES["qwen-vl"]
    assert family_for_config({**qwen, "audio": {}}) is FAMILIES["qwen-audio"]
    assert family_for_config(qwen) is None  # plain Qwen-7B is not a multimodal family
    assert family_for_config({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava"}) is FAMILIES["yi-vl"]
    assert family_for_config({"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava"}) is FAMILIES["llava1_5"]
    glm = {"architectures": ["ChatGLMModel"], "model_type": "chatglm"}
    assert family_for_config({**glm, "vision_config": {}}) is FAMILIES["glm4v"] and family_for_config(glm) is None


def test_mm_list_families_says_remote_code():
    output = subprocess.run([sys.executable, "-m", "swiftlite", "list", "families"], capture_output=True, text=True,
                            check=True).stdout
    header = output.splitlines()[0].split("  ")
    rows = {line.split()[0]: line.split() for line in output.splitlines()[2:]}
    for name in REMOTE_FAMILIES:
        assert rows[name][-2:] == ["yes", "no"], rows[name]  # remote code: yes, tested offline: no
    assert rows["qwen2-vl"][-2:] == ["no", "yes"] and "remote code" in " ".join(header)


def test_missing_requirement_is_one_line(tmp_path):
    import importlib.util

    from swiftlite.errors import UserError
    from swiftlite.models.loading import check_requirements

    family = FAMILIES["qwen-vl"]
    missing = [r for r in family.requires if importlib.util.find_spec(r) is None]
    if missing:
        with pytest.raises(UserError) as error:
            check_requirements(family)
        assert str(error.value).startswith(f"qwen-vl needs the packages: {', '.join(missing)} (pip install ")
    else:
        assert check_requirements(family) == {"trust_remote_code": True}
    assert check_requirements(FAMILIES["qwen2-vl"]) == {}  # native families load without remote code

    # DeepSeek-VL's code is a git-only package, never installed here: `mm infer` says so in one line.
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MultiModalityCausalLM"],
                                                      "model_type": "multi_modality"}))
    result = subprocess.run([sys.executable, "-m", "swiftlite", "infer", "--model", str(tmp_path)], input="hello\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert errors == ["mm infer: error: deepseek-vl needs the packages: deepseek_vl "
                      "(pip install 'deepseek_vl @ git+https://github.com/deepseek-ai/DeepSeek-VL')"], errors

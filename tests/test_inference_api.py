"""The Python API (`from swiftlite import inference, inference_stream`), as seed 003 uses it, on both families.

The reference for "no prompt drift" is built here independently of swiftlite's template: the official chat
template rendered by `tokenizer.apply_chat_template`, image placeholders expanded by the official processor
(LlavaProcessor itself; Qwen2VLProcessor's rule, since that class needs torchvision to be constructed), then
plain `model.generate`.

The tiny Qwen2-VL ties its output head to its embeddings, and at that size it only ever repeats its last input
token, which would make any comparison of outputs vacuous. These tests give it an untied random head (as the
published Qwen2-VL-7B has), saved and loaded like any checkpoint, so that outputs depend on the prompt.
"""

from __future__ import annotations

import time

import pytest
import torch

from swiftlite import get_model_tokenizer, get_template, inference, inference_stream


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from several threads, and on a shared 2-core machine OpenMP's spinning
    threads make them many times slower; restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def untie_qwen_head(source, out_dir):
    import shutil

    from transformers import Qwen2VLForConditionalGeneration

    shutil.copytree(source, out_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(source)
    model.config.tie_word_embeddings = False
    model.config.get_text_config().tie_word_embeddings = False
    generator = torch.Generator().manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator) * 0.02)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def model_dirs(tiny_checkpoints, tmp_path_factory):
    untied = untie_qwen_head(tiny_checkpoints["qwen2-vl"], tmp_path_factory.mktemp("untied") / "qwen2-vl")
    return {"qwen2-vl": untied, "llava1_5": tiny_checkpoints["llava1_5"]}


@pytest.fixture(scope="module", params=["qwen2-vl", "llava1_5"])
def chat_model(request, model_dirs):
    model, tokenizer = get_model_tokenizer(model_id_or_path=str(model_dirs[request.param]))
    template = get_template(tokenizer.swiftlite_template_type, tokenizer)
    return request.param, model, tokenizer, template


def official_inputs(family, tokenizer, model_dir, messages, images):
    """Model inputs exactly as the official processor builds them for `messages` (content-parts format): the
    processor built by transformers from the directory alone, never from swiftlite's loaded tokenizer."""
    from PIL import Image

    from swiftlite.testing.layouts import official_processor

    processor = official_processor(model_dir)
    pil = [Image.open(path).convert("RGB") for path in images]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bos = processor.tokenizer.bos_token
    return dict(processor(text=[text], images=pil or None, return_tensors="pt",
                          add_special_tokens=not (bos is not None and text.startswith(bos))))


def plain_generate(model, template, inputs, **settings) -> str:
    output = model.generate(**inputs, do_sample=False, **settings)[0, inputs["input_ids"].shape[1]:].tolist()
    stops = set(template.stop_token_ids(model.generation_config))
    cut = next((i for i, token in enumerate(output) if token in stops), len(output))
    return template.tokenizer.decode(output[:cut], skip_special_tokens=False)


def two_turn_messages(query_text):
    return [
        {"role": "user", "content": [{"type": "text", "text": "Picture 1:"}, {"type": "image"},
                                     {"type": "text", "text": "\nwhat is in this image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
        {"role": "user", "content": [{"type": "text", "text": query_text}]},
    ]


def test_greedy_inference_equals_plain_generate_on_the_official_prompt(chat_model, shape_images, model_dirs):
    family, model, tokenizer, template = chat_model
    red = shape_images["red"]
    history = [[f"Picture 1:<img>{red}</img>\nwhat is in this image", "a red circle"]]
    inputs = official_inputs(family, tokenizer, model_dirs[family], two_turn_messages("what colour is it"), [red])

    model.generation_config.max_new_tokens = 12  # as in seed 003: honoured by inference()
    try:
        response, new_history = inference(model, template, "what colour is it", history, temperature=0)
    finally:
        model.generation_config.max_new_tokens = None
    assert response == plain_generate(model, template, inputs, max_new_tokens=12)
    assert new_history == history + [["what colour is it", response]]
    assert len(set(response)) > 3  # a real, varied answer: equality above means something
    # The same prompt, token for token.
    from swiftlite.conversation import conversation_from_query

    row = template.encode(conversation_from_query("what colour is it", history), add_generation_prompt=True)
    assert row["input_ids"] == inputs["input_ids"][0].tolist()
    # Sampling settings are applied the way transformers applies them: a repetition penalty gives the same text.
    penalised, _ = inference(model, template, "what colour is it", history, max_new_tokens=12,
                             repetition_penalty=1.5, temperature=0)
    assert penalised == plain_generate(model, template, inputs, max_new_tokens=12, repetition_penalty=1.5)


def test_streamed_text_equals_non_streamed(chat_model, shape_images):
    family, model, tokenizer, template = chat_model
    query = f"Picture 1:<img>{shape_images['green']}</img>\nwhat shape is it"
    response, history = inference(model, template, query, max_new_tokens=10, repetition_penalty=1.5, temperature=0)
    items = list(inference_stream(model, template, query, max_new_tokens=10, repetition_penalty=1.5, temperature=0))
    assert items[-1] == (response, history)
    partials = [text for text, _ in items]
    assert all(b.startswith(a) for a, b in zip(partials, partials[1:]))  # each item extends the previous one
    assert all(h[-1] == [query, text] for text, h in items)  # the history carries the partial turn
    # A second turn through the stream, with the first turn's image re-attached from the history.
    again, again_history = inference(model, template, "and its colour", history, max_new_tokens=8, temperature=0)
    assert list(inference_stream(model, template, "and its colour", history, max_new_tokens=8,
                                 temperature=0))[-1] == (again, again_history)


def test_images_argument_equals_inline_tag(chat_model, shape_images):
    _, model, _, template = chat_model
    blue = str(shape_images["blue"])
    by_tag, _ = inference(model, template, f"<img>{blue}</img>describe the picture", max_new_tokens=8,
                          repetition_penalty=1.3, temperature=0)
    by_list, history = inference(model, template, "<image>describe the picture", images=[blue], max_new_tokens=8,
                                 repetition_penalty=1.3, temperature=0)
    no_image, _ = inference(model, template, "describe the picture", max_new_tokens=8, repetition_penalty=1.3,
                            temperature=0)
    assert by_tag == by_list
    assert history == [["<image>describe the picture", by_list]]  # ms-swift shape: the query as given
    # The image reaches the model (the tiny Qwen's answer barely depends on it, so compare its prompt length).
    from swiftlite.conversation import conversation_from_query

    with_image = template.encode(conversation_from_query("<image>describe the picture", images=[blue]))
    without = template.encode(conversation_from_query("describe the picture"))
    assert no_image != by_list or ("pixel_values" in with_image and len(with_image["input_ids"]) > len(without["input_ids"]))


def test_stop_words_and_seeded_sampling(chat_model):
    _, model, _, template = chat_model
    full, _ = inference(model, template, "hello", max_new_tokens=12, repetition_penalty=1.5, temperature=0)
    assert len(full) > 3
    stop = full[2:4]
    cut, _ = inference(model, template, "hello", max_new_tokens=12, repetition_penalty=1.5, temperature=0,
                       stop_words=[stop])
    assert cut == full[: full.find(stop)]
    first, _ = inference(model, template, "hello", max_new_tokens=12, temperature=1.0, top_k=50, seed=7)
    second, _ = inference(model, template, "hello", max_new_tokens=12, temperature=1.0, top_k=50, seed=7)
    assert first == second


def test_leaving_a_stream_early_cancels_the_generation(chat_model):
    _, model, _, template = chat_model
    started = time.perf_counter()
    stream = inference_stream(model, template, "hello", max_new_tokens=100000, temperature=0)
    text, _ = next(stream)
    stream.close()  # what `break` does: must not wait for 100000 tokens
    assert time.perf_counter() - started < 30


def test_mistakes_raise_clear_errors(chat_model):
    from swiftlite.media import MediaError

    _, model, _, template = chat_model
    with pytest.raises(MediaError, match="missing.png"):
        inference(model, template, "<img>/no/such/missing.png</img>what")
    with pytest.raises(ValueError, match=r"history\[0\]"):
        inference(model, template, "what", history=[["only a query"]])
    with pytest.raises(TypeError, match="num_beams"):
        inference(model, template, "what", num_beams=2)
    with pytest.raises(MediaError, match="missing.png"):  # raised at the call, not at the first next()
        inference_stream(model, template, "<img>/no/such/missing.png</img>what")


def test_generation_config_without_do_sample_means_greedy(tiny_checkpoints):
    # LLaVA's generation_config.json says nothing about sampling: transformers decodes greedily, so must we.
    model, tokenizer = get_model_tokenizer(model_id_or_path=str(tiny_checkpoints["llava1_5"]))
    assert model.generation_config.do_sample is None
    template = get_template(tokenizer.swiftlite_template_type, tokenizer)
    answers = {inference(model, template, "what is in this image", max_new_tokens=8)[0] for _ in range(3)}
    assert len(answers) == 1


def test_the_api_names_stay_functions_whatever_was_imported_first():
    # ms-swift's snippets import these names in any order (and `mm infer` imports their module first): the
    # package attribute must stay the function, never become a submodule of the same name.
    import subprocess
    import sys

    code = ("import swiftlite.infer_api, swiftlite.chat\n"
            "from swiftlite import inference_stream, inference, get_model_tokenizer\n"
            "print(callable(inference), callable(inference_stream), callable(get_model_tokenizer))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "True", "True"], result.stderr

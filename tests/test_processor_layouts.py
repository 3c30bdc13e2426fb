"""Checkpoints in every layout transformers saves, loaded as transformers loads them.

transformers 5's `processor.save_pretrained` nests the image processor (or audio feature extractor) in
processor_config.json and writes no preprocessor_config.json; older saves have preprocessor_config.json. For
every native media family, the tiny checkpoint re-saved by the official processor in each layout is loaded,
and encodes exactly as the official processor built by transformers from that directory does. A media model
without its processor fails at load with one line; `mm sft`, `mm infer` and `mm deploy` take every native
family's media in both layouts, the server's stream giving the logprobs of its non-streamed answer.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from family_checks import assert_same_tensor, check_generation_prompt, official_processor
from swiftlite.cli import main
from swiftlite.conversation import Conversation
from swiftlite.errors import UserError
from swiftlite.models import FAMILIES
from swiftlite.models.loading import load_tokenizer, resolve_model
from swiftlite.templates import get_template
from swiftlite.testing.layouts import LAYOUTS, save_in_layout
from swiftlite.testing.tiny import discover_builders

NATIVE_MEDIA = sorted(name for name in discover_builders()
                      if set(FAMILIES[name].modalities) & {"image", "audio"} and not FAMILIES[name].remote_code)
# Families whose chat template renders the shared battery (PaliGemma has no chat template; Mllama's tests differ).
BATTERY_FAMILIES = ("qwen2-vl", "qwen2_5-vl", "qwen3-vl", "llava1_5", "llava_next", "llava_onevision",
                    "internvl3", "glm4_1v", "smolvlm")
CHECKED = {"qwen2-vl": dict(media_keys=("pixel_values", "image_grid_thw"), sequence_keys=("mm_token_type_ids",)),
           "glm4_1v": dict(media_keys=("pixel_values", "image_grid_thw"), sequence_keys=("mm_token_type_ids",))}


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("layouts")
    return {name: build_tiny_checkpoint(name, root / name) for name in NATIVE_MEDIA}


def media_conversation(family_name: str) -> Conversation:
    if "audio" in FAMILIES[family_name].modalities:
        tone = np.sin(np.arange(16000) * 0.05).astype(np.float32)
        return Conversation([{"role": "user", "content": "<audio>what is this sound?"}], audios=[tone])
    return Conversation([{"role": "user", "content": "<image>what is in this image?"}],
                        [Image.new("RGB", (56, 84), (255, 0, 0))])


def bind(directory):
    resolved = resolve_model(model_id_or_path=str(directory))
    return get_template(resolved.template_type, load_tokenizer(resolved.model_dir, resolved.family))


def test_the_layouts_are_what_transformers_writes(base_dirs, tmp_path):
    today = save_in_layout(base_dirs["llava1_5"], tmp_path / "today", "processor_config")
    older = save_in_layout(base_dirs["llava1_5"], tmp_path / "older", "preprocessor_config")
    assert not (today / "preprocessor_config.json").exists()
    assert "image_processor" in json.loads((today / "processor_config.json").read_text())
    assert json.loads((older / "preprocessor_config.json").read_text())["image_processor_type"]
    assert "image_processor" not in json.loads((older / "processor_config.json").read_text())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family_name", NATIVE_MEDIA)
def test_every_layout_loads_its_processor_and_encodes_the_same(base_dirs, tmp_path, family_name, layout):
    saved = save_in_layout(base_dirs[family_name], tmp_path / layout, layout)
    original, resaved = bind(base_dirs[family_name]), bind(saved)
    kind = "feature_extractor" if "audio" in FAMILIES[family_name].modalities else "image_processor"
    assert getattr(resaved, kind) is not None
    assert type(getattr(resaved, kind)) is type(getattr(original, kind))
    assert getattr(resaved, kind).to_dict() == getattr(original, kind).to_dict()
    # save_pretrained also writes the processor's defaults (Qwen2-Audio's audio tokens): the checkpoint's own
    # settings must all survive.
    assert original.processor_config.items() <= resaved.processor_config.items()
    conversation = media_conversation(family_name)
    ours, before = resaved.encode(conversation), original.encode(conversation)
    assert ours["input_ids"] == before["input_ids"]
    for key in ("pixel_values", "input_features"):
        if key in before:
            assert_same_tensor(ours[key], before[key], key)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family_name", BATTERY_FAMILIES)
def test_every_layout_matches_the_official_processor_of_that_directory(base_dirs, tmp_path, family_name, layout):
    saved = save_in_layout(base_dirs[family_name], tmp_path / layout, layout)
    template, processor = bind(saved), official_processor(saved)
    for case in ("one image", "multi-turn, images in several turns"):
        check_generation_prompt(template, processor, case, **CHECKED.get(family_name, {}))


def test_an_image_model_without_its_processor_fails_at_load(base_dirs, tmp_path, capsys):
    saved = save_in_layout(base_dirs["llava1_5"], tmp_path / "bare", "preprocessor_config")
    (saved / "preprocessor_config.json").unlink()
    with pytest.raises(UserError, match="holds no image processor settings.*preprocessor_config.json"):
        bind(saved)
    rows = tmp_path / "val.jsonl"
    image = tmp_path / "red.png"
    Image.new("RGB", (56, 56), (255, 0, 0)).save(image)
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>what colour?"},
                                             {"role": "assistant", "content": "red"}], "images": [str(image)]}) + "\n")
    for command in (["infer", "--model", str(saved), "--val_dataset", str(rows), "--max_new_tokens", "2"],
                    ["sft", "--model", str(saved), "--dataset", str(rows), "--max_steps", "1",
                     "--output_dir", str(tmp_path / "out")],
                    ["deploy", "--model", str(saved), "--port", "0"]):
        code = main(command)
        error = capsys.readouterr().err
        assert code != 0 and "holds no image processor settings" in error and "Traceback" not in error, command
        assert "takes no images" not in error


def test_an_audio_model_without_its_feature_extractor_fails_at_load(base_dirs, tmp_path):
    saved = save_in_layout(base_dirs["qwen2-audio"], tmp_path / "bare", "processor_config")
    settings = json.loads((saved / "processor_config.json").read_text())
    del settings["feature_extractor"]
    (saved / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(UserError, match="holds no audio feature extractor settings"):
        bind(saved)


def test_a_damaged_processor_file_is_named(base_dirs, tmp_path):
    saved = save_in_layout(base_dirs["qwen2-vl"], tmp_path / "damaged", "preprocessor_config")
    (saved / "preprocessor_config.json").write_text('{"image_processor_type": "NoSuchImageProcessor"}')
    with pytest.raises(UserError, match="preprocessor_config.json: could not load the image processor"):
        bind(saved)


def test_infer_fails_when_no_row_can_be_encoded(tmp_path, capsys):
    # A text-only model given only image rows answers nothing: that is a failure, not exit 0.
    from swiftlite.testing import build_tiny_checkpoint

    model = build_tiny_checkpoint("qwen2_5", tmp_path / "text")
    image = tmp_path / "red.png"
    Image.new("RGB", (56, 56), (255, 0, 0)).save(image)
    rows = tmp_path / "val.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "<image>what colour?"}],
                                        "images": [str(image)]}) + "\n" for _ in range(2)))
    code = main(["infer", "--model", str(model), "--val_dataset", str(rows), "--max_new_tokens", "2"])
    error = capsys.readouterr().err
    assert code != 0 and "none of the 2 row(s) could be encoded" in error


def write_rows(directory, family_name: str):
    """Two rows with the family's media kind, as files (the CLI reads paths)."""
    from test_deploy_support import wav_bytes

    rows = []
    for colour, rgb, frequency in (("red", (220, 30, 30), 440.0), ("blue", (30, 30, 220), 880.0)):
        if "audio" in FAMILIES[family_name].modalities:
            path = directory / f"{colour}.wav"
            path.write_bytes(wav_bytes(0.5, frequency))
            rows.append({"messages": [{"role": "user", "content": "<audio>what is this sound?"},
                                      {"role": "assistant", "content": colour}], "audios": [str(path)]})
        else:
            path = directory / f"{colour}.png"
            Image.new("RGB", (56, 56), rgb).save(path)
            rows.append({"messages": [{"role": "user", "content": "<image>what colour is it?"},
                                      {"role": "assistant", "content": colour}], "images": [str(path)]})
    data = directory / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def media_part(directory, family_name: str) -> dict:
    import base64

    if "audio" in FAMILIES[family_name].modalities:
        data = base64.b64encode((directory / "red.wav").read_bytes()).decode()
        return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    return {"type": "image_url", "image_url": {"url": f"file://{directory / 'red.png'}"}}


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family_name", NATIVE_MEDIA)
def test_sft_infer_deploy_with_media_in_every_layout(base_dirs, tmp_path, capsys, family_name, layout):
    import openai

    from family_checks import assert_same_openai_logprobs
    from test_deploy_support import running_server

    saved = save_in_layout(base_dirs[family_name], tmp_path / "model", layout)
    data = write_rows(tmp_path, family_name)
    code = main(["sft", "--model", str(saved), "--dataset", str(data), "--max_steps", "1", "--batch_size", "2",
                 "--dataset_test_ratio", "0", "--save_steps", "1", "--logging_steps", "1",
                 "--gradient_checkpointing", "false", "--dataloader_num_workers", "0",
                 "--output_dir", str(tmp_path / "output")])
    assert code == 0, capsys.readouterr().err
    checkpoint = next((tmp_path / "output").glob("*/v*/checkpoint-1"))

    code = main(["infer", "--ckpt_dir", str(checkpoint), "--val_dataset", str(data), "--max_new_tokens", "3",
                 "--temperature", "0"])
    error = capsys.readouterr().err
    assert code == 0, error
    assert "skipped" not in error
    results = [json.loads(line) for line in next((checkpoint / "infer_result").glob("*.jsonl")).read_text().splitlines()]
    assert len(results) == 2 and all(row["response"] is not None for row in results)

    with running_server(model=str(saved), allowed_local_media_path=str(tmp_path)) as server:
        body = {"model": family_name, "max_tokens": 3, "temperature": 0, "messages": [{"role": "user", "content": [
            media_part(tmp_path, family_name), {"type": "text", "text": "what is it?"}]}]}
        response = httpx.post(server.base_url + "/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        media_tokens = response.json()["usage"]["prompt_tokens"]
        body["messages"][0]["content"] = body["messages"][0]["content"][1:]
        text_tokens = httpx.post(server.base_url + "/chat/completions", json=body, timeout=60).json()["usage"]["prompt_tokens"]
        if family_name != "mllama":  # Mllama: one token per image (cross-attention), a dated system when text-only
            assert media_tokens > text_tokens + 1  # the media reached the model, expanded

        # Stream and non-stream answers agree step by step in logprobs (the tiny checkpoints' outputs depend on
        # the prompt, tests/test_tiny_checkpoints.py), and the media changes them.
        client = openai.OpenAI(api_key="EMPTY", base_url=server.base_url, max_retries=0)
        request = dict(model=family_name, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3,
                       messages=[{"role": "user", "content": [media_part(tmp_path, family_name),
                                                              {"type": "text", "text": "what is it?"}]}])
        answered = client.chat.completions.create(**request).choices[0].logprobs.content
        streamed = [step for chunk in client.chat.completions.create(stream=True, **request)
                    if chunk.choices and chunk.choices[0].logprobs for step in chunk.choices[0].logprobs.content]
        assert_same_openai_logprobs(streamed, answered, what=f"{family_name}: stream vs non-stream")
        request["messages"][0]["content"] = request["messages"][0]["content"][1:]
        text_only = client.chat.completions.create(**request).choices[0].logprobs.content
        assert [(t.token, round(t.logprob, 4)) for t in text_only[0].top_logprobs] != [
            (t.token, round(t.logprob, 4)) for t in answered[0].top_logprobs]


def test_a_video_without_torchvision_is_refused_with_one_line(tmp_path, capsys, base_dirs):
    from swiftlite.data import RowError, record_to_conversation
    from swiftlite.media import MediaError
    from swiftlite.prompt_parts import content_parts_to_text
    from swiftlite.templates import TemplateError

    from swiftlite.models.processors import has_torchvision

    # Without torchvision (scripts/test.sh's lane) the line names it. With it (scripts/test_torchvision.sh) videos
    # are taken (tests/lane_video.py) and a model whose processor has no video processor says so.
    if has_torchvision():
        conversation = record_to_conversation({"messages": [{"role": "user", "content": "what happens?"},
                                                            {"role": "assistant", "content": "a ball rolls"}],
                                               "videos": ["https://example.com/clip.mp4"]})
        assert conversation.videos == ["https://example.com/clip.mp4"]
        assert conversation.messages[0]["content"] == "<video>what happens?"
        from swiftlite.testing import build_tiny_checkpoint

        text_model = build_tiny_checkpoint("qwen2_5", tmp_path / "text")
        with pytest.raises(TemplateError, match="takes no videos"):
            bind(text_model).encode(Conversation([{"role": "user", "content": "<video>what happens?"}],
                                                 videos=["clip.mp4"]))
        return
    expected = "videos need torchvision"
    with pytest.raises(RowError, match=expected):
        record_to_conversation({"messages": [{"role": "user", "content": "<video>what happens?"},
                                             {"role": "assistant", "content": "a ball rolls"}],
                                "videos": ["clip.mp4"]})
    with pytest.raises(MediaError, match=expected):
        content_parts_to_text([{"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}])
    with pytest.raises(TemplateError, match=expected):
        bind(base_dirs["qwen2-vl"]).encode(Conversation([{"role": "user", "content": "<video>what happens?"}],
                                                        videos=["clip.mp4"]))
    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "<video>what happens?"},
                                             {"role": "assistant", "content": "a ball rolls"}],
                                "videos": [str(tmp_path / "clip.mp4")]}) + "\n")
    code = main(["sft", "--model", str(base_dirs["qwen2-vl"]), "--dataset", str(rows), "--max_steps", "1",
                 "--output_dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code != 0 and expected in error and "Traceback" not in error


def test_an_older_preprocessor_config_naming_a_feature_extractor_still_loads(base_dirs, tmp_path):
    # 2023-era CLIP settings name both types ("feature_extractor_type": "CLIPFeatureExtractor"): still images.
    saved = save_in_layout(base_dirs["llava1_5"], tmp_path / "older", "preprocessor_config")
    settings = json.loads((saved / "preprocessor_config.json").read_text())
    settings["feature_extractor_type"] = "CLIPFeatureExtractor"
    (saved / "preprocessor_config.json").write_text(json.dumps(settings))
    template = bind(saved)
    assert template.image_processor is not None and template.feature_extractor is None
    assert template.encode(media_conversation("llava1_5"))["pixel_values"].shape[0] == 1


def test_a_chat_template_in_chat_template_json_is_read(qwen2_vl_dir, tmp_path):
    # Processors saved before chat_template.jinja kept the template in chat_template.json; transformers reads both.
    saved = save_in_layout(qwen2_vl_dir, tmp_path / "json", "preprocessor_config")
    jinja = saved / "chat_template.jinja"
    template_text = jinja.read_text()
    jinja.unlink()
    (saved / "chat_template.json").write_text(json.dumps({"chat_template": template_text}))
    template = bind(saved)
    assert template.chat_template.strip() == template_text.strip()
    conversation = media_conversation("qwen2-vl")
    assert template.encode(conversation)["input_ids"] == bind(qwen2_vl_dir).encode(conversation)["input_ids"]


def test_a_processor_that_changes_a_reply_token_fails_loudly(qwen2_vl_dir):
    from swiftlite.templates import IGNORE_INDEX, TemplateError

    template = bind(qwen2_vl_dir)
    rendered = [5, 6, 7, 8, 9]
    labels = [IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]
    # The processor expanding a prompt token carries the reply's labels over to their new places...
    carried, moved = template._carry_labels(rendered, labels, [5, 6, 6, 6, 7, 8, 9])
    assert carried == [IGNORE_INDEX] * 4 + [7, 8, IGNORE_INDEX] and moved[0] == 0 and moved[2:] == [4, 5, 6]
    # ...and one that rewrites a token of the reply is refused rather than trained on.
    with pytest.raises(TemplateError, match="changed tokens of an assistant reply"):
        template._carry_labels(rendered, labels, [5, 6, 7, 3, 9])

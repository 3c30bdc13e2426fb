"""Video in the torchvision lane (scripts/test_torchvision.sh; transformers' video processors need torchvision).

On a clip written here with PyAV: `mm sft` on `<video>` rows with a `videos` column, `mm infer` on them, and
`mm deploy` answering a `video_url` part (a file URL and a data URL), on every family marked video in the
registry (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, InternVL3, GLM-4.1V); the frames
sampled under the FPS / FPS_MAX_FRAMES / VIDEO_MAX_PIXELS caps and counted in the prompt; a hostile clip refused
before decoding.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from swiftlite.cli import main
from swiftlite.conversation import Conversation
from swiftlite.media import MediaError
from swiftlite.models.loading import load_tokenizer, resolve_model
from swiftlite.templates import get_template
from swiftlite.video import VideoSettings, load_video, write_test_clip

# Every family the registry marks video=True (docs/models.md's video column): sft -> infer -> deploy and a
# forward pass on two clips each.
WORKING = ["qwen2-vl", "qwen2_5-vl", "qwen3-vl", "llava_onevision", "internvl3", "glm4_1v"]
VIDEO_FAMILIES = WORKING


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("video")
    return {name: build_tiny_checkpoint(name, root / name) for name in WORKING + ["qwen2_5"]}


def bind(directory):
    resolved = resolve_model(model_id_or_path=str(directory))
    return get_template(resolved.template_type, load_tokenizer(resolved.model_dir, resolved.family))


def ask(clip) -> Conversation:
    return Conversation([{"role": "user", "content": "<video>what happens?"}], videos=[str(clip)])


def test_the_registry_marks_exactly_the_families_tested_here():
    from swiftlite.models import FAMILIES

    assert sorted(name for name, family in FAMILIES.items() if family.video) == sorted(WORKING)


def test_frames_follow_the_caps(tmp_path, monkeypatch):
    clip = write_test_clip(tmp_path / "clip.mp4", frames=40, size=(96, 64), fps=10)  # 4 seconds
    frames, metadata = load_video(clip)
    assert frames.shape[0] == 8 and metadata["total_num_frames"] == 8  # FPS 2 over 4 s
    monkeypatch.setenv("FPS_MAX_FRAMES", "4")
    monkeypatch.setenv("VIDEO_MAX_PIXELS", str(48 * 32))
    frames, _ = load_video(clip)
    assert frames.shape[0] == 4 and frames.shape[1] * frames.shape[2] <= 48 * 32
    monkeypatch.setenv("FPS", "nope")
    with pytest.raises(MediaError, match="FPS='nope' is not a number"):
        VideoSettings.from_env()


def test_video_tokens_are_counted_and_grow_with_frames(checkpoints, tmp_path, monkeypatch):
    template = bind(checkpoints["qwen2-vl"])
    clip = write_test_clip(tmp_path / "clip.mp4", frames=40, size=(96, 64), fps=10)
    monkeypatch.setenv("FPS_MAX_FRAMES", "4")
    short = template.encode(ask(clip))
    monkeypatch.setenv("FPS_MAX_FRAMES", "8")
    longer = template.encode(ask(clip))
    video_token = template.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert short["input_ids"].count(video_token) * 2 == longer["input_ids"].count(video_token) > 0
    assert tuple(longer["video_grid_thw"][0].tolist())[0] == 4  # 8 frames, paired (temporal_patch_size 2)


def test_bad_and_hostile_videos_are_one_line(checkpoints, tmp_path):
    import av
    import numpy as np

    template = bind(checkpoints["qwen2-vl"])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 10)
    with pytest.raises(MediaError, match="cannot decode video from .*garbage.mp4"):
        template.encode(ask(garbage))
    # A stream declaring a frame larger than the decoder will touch (one 4K frame) is refused from its header.
    huge = tmp_path / "huge.mp4"
    with av.open(str(huge), "w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 4800, 4000, "yuv420p"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((4000, 4800, 3), np.uint8), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(MediaError, match="declares a 4800x4000 frame"):
        template.encode(ask(huge))
    # A model whose processor takes no video says so.
    with pytest.raises(Exception, match="takes no videos"):
        bind(checkpoints["qwen2_5"]).encode(ask(huge))


@pytest.mark.parametrize("family_name", WORKING)
def test_different_clips_give_different_logits(checkpoints, tmp_path, family_name):
    # The video reaches the model: two clips, same question, different next-token logits.
    import torch
    from transformers import AutoModelForImageTextToText

    from swiftlite.models import FAMILIES

    assert FAMILIES[family_name].video  # docs/models.md's video column says so
    directory = checkpoints[family_name]
    template = bind(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    logits = []
    for seed in (0, 1):
        clip = write_test_clip(tmp_path / f"clip{seed}.mp4", seed=seed)
        batch = template.collate([template.encode(ask(clip))])
        with torch.no_grad():
            logits.append(model(**batch).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 1e-4


@pytest.mark.parametrize("family_name", VIDEO_FAMILIES)
def test_video_sft_infer_deploy(checkpoints, tmp_path, capsys, family_name):
    from test_deploy_support import running_server

    rows = []
    for seed, answer in ((0, "left"), (1, "right")):
        clip = write_test_clip(tmp_path / f"clip{seed}.mp4", seed=seed)
        rows.append({"messages": [{"role": "user", "content": "<video>where does it move?"},
                                  {"role": "assistant", "content": answer}], "videos": [f"clip{seed}.mp4"]})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))  # relative paths: beside the dataset file
    code = main(["sft", "--model", str(checkpoints[family_name]), "--dataset", str(data), "--max_steps", "1",
                 "--batch_size", "2", "--dataset_test_ratio", "0", "--save_steps", "1", "--logging_steps", "1",
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
    assert [row["videos"] for row in results] == [[str(tmp_path / "clip0.mp4")], [str(tmp_path / "clip1.mp4")]]

    clip = tmp_path / "clip0.mp4"
    data_url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    with running_server(model=str(checkpoints[family_name]), allowed_local_media_path=str(tmp_path)) as server:
        def chat(parts):
            body = {"model": family_name, "max_tokens": 3, "temperature": 0,
                    "messages": [{"role": "user", "content": parts}]}
            return httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)

        question = {"type": "text", "text": "where does it move?"}
        by_file = chat([{"type": "video_url", "video_url": {"url": f"file://{clip}"}}, question])
        assert by_file.status_code == 200, by_file.text
        by_data = chat([{"type": "video_url", "video_url": {"url": data_url}}, question])
        assert by_data.status_code == 200, by_data.text
        assert by_file.json()["usage"] == by_data.json()["usage"]
        assert by_file.json()["choices"][0]["message"] == by_data.json()["choices"][0]["message"]
        body = {"model": family_name, "max_tokens": 3, "temperature": 0, "videos": [data_url],
                "messages": [{"role": "user", "content": [question]}]}
        by_field = httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)  # ms-swift's field
        assert by_field.json()["usage"] == by_file.json()["usage"], by_field.text
        text_only = chat([question]).json()["usage"]["prompt_tokens"]
        assert by_file.json()["usage"]["prompt_tokens"] > text_only + 4  # the frames' tokens are in the prompt
        outside = chat([{"type": "video_url", "video_url": {"url": "file:///etc/hostname"}}, question])
        assert outside.status_code == 400, outside.text  # the media policy applies to videos too
        broken = chat([{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}, question])
        assert broken.status_code == 400 and "video" in broken.json()["error"]["message"]


def test_video_in_the_interactive_chat(checkpoints, tmp_path):
    # `<video>` asks for a source (as `<image>` does); `<video>SRC</video>` is taken as typed; both reach the model.
    import pexpect
    from test_infer_interactive import SEPARATOR, results, spawn_chat, transcript

    clip = write_test_clip(tmp_path / "clip.mp4")
    child = spawn_chat(checkpoints["qwen2-vl"], tmp_path, "--max_new_tokens", "3")
    child.expect_exact("<<< ")
    child.sendline("<video> what happens?")
    child.expect_exact("Input a video path or URL <<< ")
    child.sendline(str(clip))
    child.expect_exact(SEPARATOR)
    child.expect_exact("<<< ")
    child.sendline(f"and here <video>{clip}</video>?")
    child.expect_exact(SEPARATOR)
    child.expect_exact("<<< ")
    child.sendline("<video>/no/such/clip.mp4</video> this one")
    child.expect_exact("video file not found: /no/such/clip.mp4")
    child.expect_exact("<<< ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in transcript(child)
    rows = results(tmp_path)
    assert [row["query"] for row in rows] == ["<video> what happens?", "and here <video>?"]
    assert rows[1]["videos"] == [str(clip), str(clip)]


def test_dataset_rows_bind_videos_in_ms_swift_spellings(tmp_path):
    from swiftlite.data import RowError, record_to_conversation

    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(b"")
    reply = {"role": "assistant", "content": "ok"}
    row = record_to_conversation({"messages": [{"role": "user", "content": "<video>first, then <video>"}, reply],
                                  "videos": ["a.mp4", "b.mp4"]}, base_dir=str(tmp_path))
    assert row.videos == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    row = record_to_conversation({"query": "what?", "response": "ok", "videos": "a.mp4"}, base_dir=str(tmp_path))
    assert row.messages[0]["content"] == "<video>what?" and row.videos == [str(tmp_path / "a.mp4")]
    row = record_to_conversation({"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "https://example.com/x.mp4"}}, {"type": "text", "text": "and"},
        {"type": "video", "video": "c.mp4"}, {"type": "text", "text": "<video>?"}]}, reply], "videos": ["b.mp4"]},
        base_dir=str(tmp_path))
    assert row.messages[0]["content"] == "<video>and<video><video>?"
    assert row.videos == ["https://example.com/x.mp4", str(tmp_path / "c.mp4"), str(tmp_path / "b.mp4")]
    with pytest.raises(RowError, match=r"2 <video> placeholder\(s\) but 1 video\(s\) listed in 'videos'"):
        record_to_conversation({"messages": [{"role": "user", "content": "<video><video>"}, reply],
                                "videos": ["a.mp4"]}, base_dir=str(tmp_path))
    with pytest.raises(RowError, match="video file not found: missing.mp4"):
        record_to_conversation({"query": "<video>?", "response": "ok", "videos": ["missing.mp4"]},
                               base_dir=str(tmp_path))


def test_video_tokens_count_in_max_length(checkpoints, tmp_path, monkeypatch):
    from swiftlite.data import record_to_conversation
    from swiftlite.training.dataset import EncodedDataset, RowDropped

    monkeypatch.setenv("FPS_MAX_FRAMES", "4")
    write_test_clip(tmp_path / "clip.mp4")
    conversation = record_to_conversation({"query": "<video>what happens?", "response": "it moves",
                                           "videos": ["clip.mp4"]}, base_dir=str(tmp_path))
    template = bind(checkpoints["qwen2-vl"])
    length = len(template.encode(conversation)["input_ids"])

    class Row:
        source = "train.jsonl:1"

    Row.conversation = conversation
    assert len(EncodedDataset([Row], template, max_length=length).encode_row(Row)["input_ids"]) == length
    with pytest.raises(RowDropped, match=f"{length} tokens > --max_length {length - 1}"):
        EncodedDataset([Row], template, max_length=length - 1).encode_row(Row)
    # Truncating from the left may drop the system prompt's first token, never a frame's.
    left = EncodedDataset([Row], template, max_length=length - 1, truncation_strategy="truncation_left")
    assert len(left.encode_row(Row)["input_ids"]) == length - 1
    first_video = template.encode(conversation)["input_ids"].index(template.token_id("<|video_pad|>"))
    with pytest.raises(RowDropped, match="truncating would cut a video"):
        EncodedDataset([Row], template, max_length=length - first_video - 1,
                       truncation_strategy="truncation_left").encode_row(Row)

"""Video without torchvision (this lane): every way a video comes in is refused with one line naming torchvision,
never read as text, dropped or a traceback/500; and the parts of swiftlite/video.py that need no torchvision
(frame sampling, tags, row binding, PyAV decode bounds). The full video runs are in tests/lane_video.py
(scripts/test_torchvision.sh)."""

from __future__ import annotations

import json

import httpx
import pytest

from swiftlite.cli import main
from swiftlite.media import MediaError
from swiftlite.models.processors import has_torchvision
from swiftlite.video import VideoSettings, extract_video_tags, load_video, sample_indices, write_test_clip

assert not has_torchvision(), "the main lane runs without torchvision (tests/lane_video.py covers the other)"
NAMES_TORCHVISION = "videos need torchvision"


def test_sampling_follows_fps_and_the_frame_caps():
    settings = VideoSettings(fps=2.0, min_frames=4, max_frames=16)
    assert sample_indices(40, 10.0, settings) == [0, 6, 11, 17, 22, 28, 33, 39]  # 4 s at 2 frames a second
    assert len(sample_indices(10_000, 25.0, settings)) == 16  # capped at max_frames
    assert len(sample_indices(5, 25.0, settings)) == 4  # at least min_frames, an even count
    assert sample_indices(1, 25.0, settings) == [0]


def test_video_tags_become_placeholders():
    assert extract_video_tags("a <video>clip.mp4</video> b <video>x.mp4</video>") == (
        "a <video> b <video>", ["clip.mp4", "x.mp4"])
    with pytest.raises(MediaError, match="empty <video></video> tag"):
        extract_video_tags("<video> </video>")


def test_decoding_is_bounded_and_clear(tmp_path, monkeypatch):
    clip = write_test_clip(tmp_path / "clip.mp4", frames=40, size=(96, 64), fps=10)
    frames, metadata = load_video(clip)
    assert frames.shape == (8, 64, 96, 3) and metadata["total_num_frames"] == 8
    monkeypatch.setenv("VIDEO_MAX_PIXELS", str(48 * 32))
    frames, _ = load_video(clip)
    assert frames.shape[1] * frames.shape[2] <= 48 * 32
    # The decode work is bounded from the header: frames x pixels over the budget is refused before decoding.
    import swiftlite.video

    monkeypatch.setattr(swiftlite.video, "MAX_DECODED_PIXELS", 96 * 64 * 39)
    with pytest.raises(MediaError, match="declares 40 frames of 96x64"):
        load_video(clip)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError, match="cannot decode video from .*bad.mp4"):
        load_video(tmp_path / "bad.mp4")
    from swiftlite.media import MediaPolicy

    with pytest.raises(MediaError, match="local"):
        load_video(str(clip), MediaPolicy(allow_local=False))  # the server's policy applies to videos


def test_chat_refuses_a_video_naming_torchvision_and_goes_on(qwen2_vl_dir, tmp_path):
    import pexpect
    from test_infer_interactive import SEPARATOR, spawn_chat, transcript

    clip = write_test_clip(tmp_path / "clip.mp4")
    child = spawn_chat(qwen2_vl_dir, tmp_path, "--max_new_tokens", "2")
    child.expect_exact("<<< ")
    child.sendline("<video> what happens?")
    child.expect_exact("Input a video path or URL <<< ")
    child.sendline(str(clip))
    child.expect_exact(NAMES_TORCHVISION)
    child.expect_exact("<<< ")
    child.sendline("hello")
    child.expect_exact(SEPARATOR)
    child.expect_exact("<<< ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in transcript(child)


def test_infer_and_deploy_refuse_a_video_naming_torchvision(qwen2_vl_dir, tmp_path, capsys):
    from test_deploy_support import running_server

    clip = write_test_clip(tmp_path / "clip.mp4")
    rows = tmp_path / "val.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "<video>what happens?"}],
                                "videos": [str(clip)]}) + "\n")
    code = main(["infer", "--model", str(qwen2_vl_dir), "--val_dataset", str(rows), "--max_new_tokens", "2"])
    error = capsys.readouterr().err
    assert code != 0 and f"{rows}:1: {NAMES_TORCHVISION}" in error and "Traceback" not in error
    with running_server(model=str(qwen2_vl_dir), allowed_local_media_path=str(tmp_path)) as server:
        body = {"model": "qwen2-vl", "max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": f"file://{clip}"}}, {"type": "text", "text": "what?"}]}]}
        response = httpx.post(server.base_url + "/chat/completions", json=body, timeout=60)
        assert response.status_code == 400 and NAMES_TORCHVISION in response.json()["error"]["message"]
        body = {"model": "qwen2-vl", "max_tokens": 2, "videos": [str(clip)],
                "messages": [{"role": "user", "content": "what?"}]}
        response = httpx.post(server.base_url + "/chat/completions", json=body, timeout=60)
        assert response.status_code == 400 and NAMES_TORCHVISION in response.json()["error"]["message"]
        body = {"model": "qwen2-vl", "max_tokens": 2, "videos": [str(clip)], "prompt": "what?"}
        response = httpx.post(server.base_url + "/completions", json=body, timeout=60)
        assert response.status_code == 400 and "chat/completions only" in response.json()["error"]["message"]


def test_local_clips_are_opened_by_path_under_the_policy(tmp_path):
    import base64

    from swiftlite.media import MediaPolicy, local_media_path

    clip = write_test_clip(tmp_path / "clip.mp4")
    data_url = "data:video/mp4;base64," + base64.b64encode(open(clip, "rb").read()).decode()
    policy = MediaPolicy(allowed_local_dir=str(tmp_path))
    assert local_media_path(f"file://{clip}", policy, "video") == str(tmp_path.resolve() / "clip.mp4")
    assert local_media_path(data_url, policy, "video") is None
    assert local_media_path("https://example.com/clip.mp4", policy, "video") is None
    by_path, _ = load_video(clip, policy)
    by_data, _ = load_video(data_url, policy)
    assert (by_path == by_data).all()
    with pytest.raises(MediaError, match="outside the directory allowed by --allowed_local_media_path"):
        load_video(str(clip), MediaPolicy(allowed_local_dir=str(tmp_path / "elsewhere")))
    with pytest.raises(MediaError, match="larger than"):
        load_video(data_url, MediaPolicy(max_bytes=100))  # sent bytes keep the byte cap

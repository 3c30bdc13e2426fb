"""The seeds' sessions and requests, typed exactly: seed 000's `<audio>` chat in `mm infer` (pexpect), seed 001's
rtp-llm `Picture 1:<img/>` prompt with `urls=[...]` through `inference` and `mm deploy`, and seed 002's
Xinference MP3 and FLAC `audio_url` conversation answered by `mm deploy` (clips written here with soundfile).

Each placeholder form is checked against the tag form of the same prompt: the same image or clip in the same
place gives the same prompt tokens and (greedy) the same answer.
"""

from __future__ import annotations


import httpx
import numpy as np
import pexpect
import pytest
import soundfile

from test_deploy_support import running_server, static_http_server
from test_infer_interactive import SEPARATOR, results, spawn_chat, transcript, turn

RTP_PROMPT = "Picture 1:<img/>\n这是什么"  # seed 001, as rtp-llm's pipeline takes it with urls=[...]


def clip(path, seconds: float, rate: int = 44100, frequency: float = 440.0) -> None:
    """A tone of `seconds` at `rate` Hz, in the container the suffix names (soundfile/libsndfile writes it)."""
    times = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), (0.4 * np.sin(2 * np.pi * frequency * times)).astype(np.float32), rate)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("seed_audio")
    build_tiny_checkpoint("qwen2-audio", root / "qwen2-audio")
    clips = root / "clips"
    clips.mkdir()
    clip(clips / "a.wav", 1.0, rate=16000)
    clip(clips / "b.flac", 2.0, rate=48000)
    # seed 002's file names: the MP3 at 44.1 kHz, the FLAC at 16 kHz (as LibriSpeech ships)
    clip(clips / "glass-breaking-151256.mp3", 2.0, rate=44100, frequency=1500.0)
    clip(clips / "1272-128104-0000.flac", 3.0, rate=16000, frequency=300.0)
    return root


# ---- seed 000: `<audio>` tags in the interactive chat --------------------------------------------------------
@pytest.mark.slow  # builds the tiny Qwen2-Audio
def test_audio_tags_in_the_chat_are_read_before_the_placeholder_prompt(audio_dir, tmp_path):
    a_wav, b_flac = audio_dir / "clips" / "a.wav", audio_dir / "clips" / "b.flac"
    child = spawn_chat(audio_dir / "qwen2-audio", tmp_path, "--max_new_tokens", "4")
    child.expect_exact("audio as <audio>path or URL</audio>")
    child.expect_exact("<<< ")
    # Seed 000: "replace the <img> tag with <audio> based on the qwen-vl-chat example"
    turn(child, f"Audio 1:<audio>{a_wav}</audio> What does the person say?")
    # A tag and a bare placeholder in one turn: only the placeholder asks for a path.
    child.sendline(f"Audio 1:<audio>{a_wav}</audio> Audio 2:<audio> which is longer?")
    child.expect_exact("Input an audio path or URL <<< ")
    turn(child, str(b_flac))
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    text = transcript(child)
    assert child.exitstatus == 0, text
    assert "no audio given" not in text and "Traceback" not in text and "[ERROR" not in text
    assert text.count("Input an audio path or URL") == 1

    rows = results(tmp_path)
    assert [r["query"] for r in rows] == ["Audio 1:<audio> What does the person say?",
                                          "Audio 1:<audio> Audio 2:<audio> which is longer?"]
    assert rows[0]["audios"] == [str(a_wav)]
    assert rows[1]["audios"] == [str(a_wav), str(a_wav), str(b_flac)]  # the history's clip, then this turn's
    for row in rows:
        assert f"{row['response']}\n{SEPARATOR}" in text


# ---- seed 001: rtp-llm's `<img/>` with urls=[...] ------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_model(qwen2_vl_dir):
    import torch

    from swiftlite import get_model_tokenizer, get_template

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer = get_model_tokenizer(model_id_or_path=str(qwen2_vl_dir))
    yield model, get_template(tokenizer.swiftlite_template_type, tokenizer)
    torch.set_num_threads(threads)


def test_rtp_llm_placeholder_binds_urls_through_inference(qwen_model, shape_images):
    from swiftlite.infer_api import build_conversation, inference, inference_stream
    from swiftlite.media import MediaError

    model, template = qwen_model
    red, blue = str(shape_images["red"]), str(shape_images["blue"])
    bound = build_conversation(RTP_PROMPT, urls=[red])
    assert bound.messages == [{"role": "user", "content": "Picture 1:<image>\n这是什么"}]  # in place, not prepended
    assert bound.images == [red]
    tagged = template.encode(build_conversation(f"Picture 1:<img>{red}</img>\n这是什么"), add_generation_prompt=True)
    assert template.encode(bound, add_generation_prompt=True)["input_ids"] == tagged["input_ids"]

    response, history = inference(model, template, RTP_PROMPT, urls=[red], max_new_tokens=4, temperature=0)
    assert response == inference(model, template, f"Picture 1:<img>{red}</img>\n这是什么", max_new_tokens=4,
                                 temperature=0)[0]
    assert history == [[RTP_PROMPT, response]]
    *_, (streamed, _) = inference_stream(model, template, RTP_PROMPT, images=[red], max_new_tokens=4, temperature=0)
    assert streamed == response
    # Tags and placeholders keep their order: the bound image goes where its <img/> is.
    mixed = build_conversation(f"<img/> then <img>{red}</img> then <img/>", urls=[blue, blue])
    assert mixed.images == [blue, red, blue]
    with pytest.raises(MediaError, match="1 <img/> placeholders but 2 image URLs"):
        build_conversation(RTP_PROMPT, urls=[red, blue])


@pytest.fixture(scope="module")
def qwen_server(qwen2_vl_dir, shape_images):
    # The media host of these tests is on loopback: allowed by name, as --allowed_media_domains does.
    with running_server(model=str(qwen2_vl_dir), max_new_tokens=4, allowed_media_domains=["127.0.0.1"]) as server, \
            static_http_server(shape_images["red"].parent) as host:
        server.media_host = host
        yield server


def chat(server, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json=dict(body, max_tokens=4, temperature=0), timeout=120)


def test_rtp_llm_placeholder_binds_images_in_deploy(qwen_server):
    url = f"{qwen_server.media_host}/red.png"
    tagged = chat(qwen_server, {"messages": [{"role": "user", "content": f"Picture 1:<img>{url}</img>\n这是什么"}]})
    bound = chat(qwen_server, {"messages": [{"role": "user", "content": RTP_PROMPT}], "images": [url]})
    assert tagged.status_code == 200 and bound.status_code == 200, bound.text
    assert bound.json()["usage"] == tagged.json()["usage"]
    assert bound.json()["choices"][0]["message"] == tagged.json()["choices"][0]["message"]
    # As a text part, and through /v1/completions
    parts = chat(qwen_server, {"messages": [{"role": "user", "content": [{"type": "text", "text": RTP_PROMPT}]}],
                               "images": [url]})
    assert parts.json()["usage"] == tagged.json()["usage"]
    raw_tagged = httpx.post(qwen_server.base_url + "/completions", timeout=120, json={
        "prompt": f"Picture 1:<img>{url}</img>\n这是什么", "max_tokens": 2, "temperature": 0})
    raw_bound = httpx.post(qwen_server.base_url + "/completions", timeout=120, json={
        "prompt": RTP_PROMPT, "images": [url], "max_tokens": 2, "temperature": 0})
    assert raw_bound.status_code == 200 and raw_bound.json()["usage"] == raw_tagged.json()["usage"]
    # A count mismatch is the client's mistake: a 400 naming it
    wrong = chat(qwen_server, {"messages": [{"role": "user", "content": RTP_PROMPT}], "images": [url, url]})
    assert wrong.status_code == 400
    assert "1 <img/> placeholders but 2 image URLs" in wrong.json()["error"]["message"]


# ---- seed 002: Xinference's MP3 and FLAC audio_url conversation -----------------------------------------------
@pytest.fixture(scope="module")
def audio_server(audio_dir):
    with running_server(model=str(audio_dir / "qwen2-audio"), max_new_tokens=2,
                        allowed_media_domains=["127.0.0.1"]) as server, \
            static_http_server(audio_dir / "clips") as host:
        server.media_host = host
        yield server


def audio_tokens(server, url: str) -> int:
    """How many prompt tokens one clip adds (the Qwen2-Audio rule: 25 per second of audio)."""
    model = "qwen2-audio"
    text_only = chat(server, {"model": model, "messages": [{"role": "user", "content": "What's that sound?"}]})
    with_clip = chat(server, {"model": model, "messages": [{"role": "user", "content": [
        {"type": "audio", "audio_url": url}, {"type": "text", "text": "What's that sound?"}]}]})
    assert with_clip.status_code == 200, with_clip.text
    return with_clip.json()["usage"]["prompt_tokens"] - text_only.json()["usage"]["prompt_tokens"]


@pytest.mark.slow  # builds the tiny Qwen2-Audio
def test_xinference_mp3_and_flac_conversation_is_answered(audio_server):
    host = audio_server.media_host
    mp3, flac = f"{host}/glass-breaking-151256.mp3", f"{host}/1272-128104-0000.flac"
    messages = [  # seed 002, word for word, with the clips served from here
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio", "audio_url": mp3}, {"type": "text", "text": "What's that sound?"}]},
        {"role": "assistant", "content": "It is the sound of glass shattering."},
        {"role": "user", "content": [{"type": "text", "text": "What can you do when you hear that?"}]},
        {"role": "assistant", "content": "Stay alert and cautious, and check if anyone is hurt or if there is any "
                                         "damage to property."},
        {"role": "user", "content": [{"type": "audio", "audio_url": flac},
                                     {"type": "text", "text": "What does the person say?"}]},
    ]
    response = chat(audio_server, {"model": "qwen2-audio", "messages": messages})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"
    # Each clip was decoded to its length: 2 s of MP3 and 3 s of FLAC (the MP3 encoder pads a frame or two).
    mp3_tokens, flac_tokens = audio_tokens(audio_server, mp3), audio_tokens(audio_server, flac)
    # 25 tokens a second, plus 10 for the "Audio 1:" line and the clip's markers
    assert flac_tokens == 10 + 75 and 10 + 50 <= mp3_tokens <= 10 + 51
    without_clips = [dict(m, content=[p for p in m["content"] if p["type"] == "text"]) if isinstance(m["content"], list)
                     else m for m in messages]
    text_only = chat(audio_server, {"model": "qwen2-audio", "messages": without_clips})
    assert response.json()["usage"]["prompt_tokens"] == (text_only.json()["usage"]["prompt_tokens"]
                                                         + mp3_tokens + flac_tokens)

"""Tests for swiftlite.prompt_parts: Qwen-VL tags, rtp-llm <img/> placeholders and OpenAI content parts read
into text with placeholders plus ordered media lists, and the errors that name the part."""

import pytest

from swiftlite.media import MediaError
from swiftlite.prompt_parts import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    bind_placeholder_urls,
    bind_url_placeholders,
    check_media_count,
    content_parts_to_text,
    extract_media_tags,
)


def test_extract_media_tags_qwen_vl_example():
    text = "Picture 1:<img>a.png</img>\nPicture 2:<img>b.png</img>\nwhat"
    assert extract_media_tags(text) == ("Picture 1:<image>\nPicture 2:<image>\nwhat", ["a.png", "b.png"], [])
    assert extract_media_tags("Picture 1:<img>a.png</img>\nWhat?") == ("Picture 1:<image>\nWhat?", ["a.png"], [])


def test_extract_media_tags_audio_order_and_whitespace():
    text = "Audio 1:<audio> x.wav </audio>then <img>http://h/a.png</img> and <audio>y.wav</audio>."
    new_text, images, audios = extract_media_tags(text)
    assert new_text == "Audio 1:<audio>then <image> and <audio>."
    assert images == ["http://h/a.png"]
    assert audios == ["x.wav", "y.wav"]


def test_extract_media_tags_leaves_bare_placeholders_alone():
    text = "<image><audio> and <img/> stay"
    assert extract_media_tags(text) == (text, [], [])
    # A bare <audio> placeholder before a real tag must not swallow it.
    assert extract_media_tags("<audio> then <audio>z.wav</audio>") == ("<audio> then <audio>", [], ["z.wav"])


def test_bind_placeholder_urls():
    assert bind_placeholder_urls("a<img/>b<img/>", ["u1", "u2"]) == ("a<image>b<image>", ["u1", "u2"])
    with pytest.raises(MediaError, match=r"2 <img/> placeholders but 1 image URLs"):
        bind_placeholder_urls("a<img/>b<img/>", ["u1"])


def test_bind_url_placeholders_across_turns_then_tags():
    texts = ["Picture 1:<img/>\n", "and <img>c.png</img> then <img/>?"]
    bound = bind_url_placeholders(texts, ["a.png", "http://h/b.png"])
    assert bound == ["Picture 1:<img>a.png</img>\n", "and <img>c.png</img> then <img>http://h/b.png</img>?"]
    # The bound sources come out of the tags in the order they appear, among the prompt's own tags.
    assert extract_media_tags("".join(bound))[1] == ["a.png", "c.png", "http://h/b.png"]
    with pytest.raises(MediaError, match=r"2 <img/> placeholders but 1 image URLs"):
        bind_url_placeholders(texts, ["a.png"])
    with pytest.raises(MediaError, match=r"without '<' or '>'"):
        bind_url_placeholders(["<img/>"], ["a</img>.png"])


def test_content_parts_every_type():
    parts = [
        {"type": "text", "text": "A:"},
        {"type": "image_url", "image_url": {"url": "http://h/1.png"}},
        {"type": "image_url", "image_url": "http://h/2.png"},
        {"type": "text", "text": " B<img>3.png</img>"},
        {"type": "image", "image": "4.png"},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "audio_url", "audio_url": {"url": "http://h/5.wav"}},
        {"type": "text", "text": "?"},
    ]
    text, images, audios = content_parts_to_text(parts)
    assert (IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER) == ("<image>", "<audio>")
    assert text == "A:<image><image> B<image><image><audio><audio>?"
    assert images == ["http://h/1.png", "http://h/2.png", "3.png", "4.png"]
    assert audios == ["data:audio/wav;base64,UklGRg==", "http://h/5.wav"]
    check_media_count(text, images, audios)


def test_content_parts_string_and_errors():
    assert content_parts_to_text("x<img>a.png</img>") == ("x<image>", ["a.png"], [])
    with pytest.raises(MediaError, match=r"content part 1 has unsupported type 'input_file'"):
        content_parts_to_text([{"type": "text", "text": "hi"}, {"type": "input_file", "input_file": {"url": "v"}}])
    with pytest.raises(MediaError, match=r"content part 1 \(type 'video_url'\): video"):
        content_parts_to_text([{"type": "text", "text": "hi"}, {"type": "video_url", "video_url": {"url": "v"}}])
    with pytest.raises(MediaError, match=r"content part 0 \(type 'image_url'\)"):
        content_parts_to_text([{"type": "image_url", "image_url": {}}])
    with pytest.raises(MediaError, match="content part 0 is malformed"):
        content_parts_to_text(["just a string"])
    assert content_parts_to_text([{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "hi"}]) == (
        "<audio>hi", [], ["a.wav"])
    with pytest.raises(MediaError, match=r"^content part 1 \(type 'image'\) needs an 'image' field$"):
        content_parts_to_text([{"type": "text", "text": "hi"}, {"type": "image"}])
    with pytest.raises(MediaError, match=r"^content part 0 \(type 'audio'\) needs an 'audio' field$"):
        content_parts_to_text([{"type": "audio", "audio": None}])
    with pytest.raises(MediaError, match=r"^content part 0 \(type 'audio_url'\) needs 'audio_url' as a URL"):
        content_parts_to_text([{"type": "audio_url", "audio_url": {"url": ""}}])


def test_check_media_count():
    check_media_count(["<image>a", "<image><audio>"], ["x", "y"], ["z"])
    with pytest.raises(MediaError, match=r"^row 3: 3 <image> placeholders but 2 images were given$"):
        check_media_count("<image><image><image>", ["a", "b"], [], where="row 3")
    with pytest.raises(MediaError, match=r"^1 <audio> placeholders but 0 audios were given$"):
        check_media_count(["hi", "<audio>"], [], [])

"""Prompt parts: the conventions a prompt may mark its media with, read into one form.

Qwen-VL ``<img>SRC</img>`` / ``<audio>SRC</audio>`` tags, rtp-llm ``<img/>`` placeholders bound to a list of
URLs, and OpenAI content parts (``image_url``, ``input_audio``, ``video_url`` ...) all become text with
``<image>`` / ``<audio>`` (and ``<video>``) placeholders plus ordered lists of sources: the form a
:class:`swiftlite.conversation.Conversation` holds. A request walks downhill: the protocol (server, data, chat)
-> these prompt parts -> :mod:`swiftlite.media`, which reads and decodes the sources under its policy.
"""

from __future__ import annotations

import re

from swiftlite.media import MediaError, short

IMAGE_PLACEHOLDER = "<image>"
AUDIO_PLACEHOLDER = "<audio>"
URL_PLACEHOLDER = "<img/>"  # rtp-llm (seed 001): the prompt marks where each of `urls=[...]` goes

# Qwen-VL / Qwen-Audio tags. The source may not contain '<' or '>', which keeps a bare
# "<audio>" placeholder that precedes a real tag from swallowing it, and never matches
# "<image>" or "<img/>". DOTALL-free [^<>] still spans newlines (multi-line base64).
_MEDIA_TAG_RE = re.compile(r"<(img|audio)>([^<>]*)</\1>")


def extract_media_tags(text: str) -> tuple[str, list[str], list[str]]:
    """Replace ``<img>SRC</img>`` / ``<audio>SRC</audio>`` with placeholders, collecting sources in order."""
    images: list[str] = []
    audios: list[str] = []

    def replace(match: re.Match) -> str:
        tag, src = match.group(1), match.group(2).strip()
        if not src:
            raise MediaError(f"empty <{tag}></{tag}> tag in text: {short(text)}")
        if tag == "img":
            images.append(src)
            return IMAGE_PLACEHOLDER
        audios.append(src)
        return AUDIO_PLACEHOLDER

    return _MEDIA_TAG_RE.sub(replace, text), images, audios


def bind_placeholder_urls(text: str, urls: list[str]) -> tuple[str, list[str]]:
    """rtp-llm style: bind each ``<img/>`` in order to ``urls``; ``<img/>`` becomes ``<image>``."""
    urls = list(urls or [])
    count = text.count("<img/>")
    if count != len(urls):
        raise MediaError(f"text has {count} <img/> placeholders but {len(urls)} image URLs were given")
    return text.replace("<img/>", IMAGE_PLACEHOLDER), urls


def bind_url_placeholders(texts: list[str], urls: list[str]) -> list[str]:
    """rtp-llm's ``<img/>`` placeholders across `texts` take `urls` in order, each written as an
    ``<img>URL</img>`` tag, so extract_media_tags then reads them in place among any other tags."""
    # bind_placeholder_urls checks the count (one clear error) over the whole conversation at once.
    bind_placeholder_urls("".join(texts), urls)
    for url in urls:
        if not isinstance(url, str) or "<" in url or ">" in url:
            raise MediaError(f"the images bound to {URL_PLACEHOLDER} placeholders must be paths or URLs "
                             f"without '<' or '>', got {url!r:.60}")
    remaining = iter(urls)
    bound_texts = []
    for text in texts:
        pieces = text.split(URL_PLACEHOLDER)
        bound = pieces[0]
        for piece in pieces[1:]:
            bound += f"<img>{next(remaining)}</img>" + piece
        bound_texts.append(bound)
    return bound_texts


def _url_field(part: dict, key: str, index: int):
    """The URL of an OpenAI `image_url`/`audio_url` part: {"url": ...} or a bare string."""
    value = part.get(key)
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise MediaError(f"content part {index} (type '{part['type']}') needs '{key}' as a URL string or {{'url': ...}}")
    return value


def content_parts_to_text(parts, videos: list | None = None) -> tuple[str, list, list]:
    """OpenAI chat ``content`` (a string or a list of parts) -> (text, images, audios).

    Each media part becomes a placeholder at its position; text parts are joined with
    no separator, and ``<img>``/``<audio>`` tags inside them are extracted too.
    `video_url` / `video` parts are appended to `videos` (a `<video>` placeholder in the text) when the caller
    passes that list and torchvision is installed; otherwise they are refused with one line.
    """
    if parts is None:  # e.g. an assistant message that only has tool calls
        return "", [], []
    if isinstance(parts, str):
        return extract_media_tags(parts)
    if not isinstance(parts, (list, tuple)):
        raise MediaError(f"message content must be a string or a list of parts, got {type(parts).__name__}")

    pieces: list[str] = []
    images: list = []
    audios: list = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise MediaError(f"content part {index} is malformed: expected an object with a 'type' field, got {short(part)}")
        kind = part["type"]
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise MediaError(f"content part {index} (type 'text') needs a string 'text' field")
            text, more_images, more_audios = extract_media_tags(text)
            pieces.append(text)
            images += more_images
            audios += more_audios
        elif kind in ("image_url", "image", "audio_url", "audio"):
            if kind.endswith("_url"):
                source = _url_field(part, kind, index)
            elif part.get(kind) is None:
                raise MediaError(f"content part {index} (type '{kind}') needs an '{kind}' field")
            else:
                source = part[kind]
            is_image = kind.startswith("image")
            (images if is_image else audios).append(source)
            pieces.append(IMAGE_PLACEHOLDER if is_image else AUDIO_PLACEHOLDER)
        elif kind == "input_audio":
            spec = part.get("input_audio")
            if not isinstance(spec, dict) or not isinstance(spec.get("data"), str) or not spec["data"]:
                raise MediaError(f"content part {index} (type 'input_audio') needs {{'data': base64, 'format': ...}}")
            data = spec["data"]
            audio_format = str(spec.get("format") or "wav").lower()
            # Turn it into a data URL so it flows through the same resolver as every other source.
            audios.append(data if data.startswith("data:") else f"data:audio/{audio_format};base64,{data}")
            pieces.append(AUDIO_PLACEHOLDER)
        elif kind in ("video_url", "video"):
            from swiftlite.video import VIDEO_PLACEHOLDER, video_error, videos_supported

            if videos is None or not videos_supported():
                raise MediaError(video_error(f"content part {index} (type '{kind}')"))
            if kind == "video_url":
                videos.append(_url_field(part, "video_url", index))
            elif part.get("video") is None:
                raise MediaError(f"content part {index} (type 'video') needs a 'video' field")
            else:
                videos.append(part["video"])
            pieces.append(VIDEO_PLACEHOLDER)
        else:
            raise MediaError(f"content part {index} has unsupported type '{kind}'")
    return "".join(pieces), images, audios


def check_media_count(text_or_texts, images: list, audios: list, where: str = "") -> None:
    """Fail early (and clearly) when placeholders and media lists disagree."""
    texts = [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts or [])
    texts = [t for t in texts if t]  # None content is allowed (e.g. tool-call messages)
    prefix = f"{where}: " if where else ""
    num_images = sum(t.count(IMAGE_PLACEHOLDER) for t in texts)
    num_given = len(images or [])
    if num_images != num_given:
        raise MediaError(f"{prefix}{num_images} {IMAGE_PLACEHOLDER} placeholders but {num_given} images were given")
    num_audios = sum(t.count(AUDIO_PLACEHOLDER) for t in texts)
    num_given = len(audios or [])
    if num_audios != num_given:
        raise MediaError(f"{prefix}{num_audios} {AUDIO_PLACEHOLDER} placeholders but {num_given} audios were given")

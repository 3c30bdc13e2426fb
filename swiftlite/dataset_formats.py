"""Records -> Conversations: the row formats a dataset file (or a named set's preprocessing) may use.

Each row's format is detected from its keys:

- `conversations` (ShareGPT / Qwen-VL): [{"from": user|human|assistant|gpt|system, "value": ...}], with
  Qwen-VL style `<img>path</img>` tags or `<image>` placeholders plus an `images` list;
- `messages`: [{"role": ..., "content": ...}], content a string with `<image>`/`<audio>`/`<video>` placeholders
  or an OpenAI-style parts list, plus optional `images`/`audios`/`videos` lists;
- `query`/`response`/`history`/`system`/`images` (ms-swift 2.x);
- `instruction`/`input`/`output` (alpaca, text only);
- any of them with ms-swift's agent turns (tool_call / tool_response roles) and a `tools` list.

Image, audio and video paths are resolved relative to `base_dir` (the dataset file's folder), then the working
directory; absolute paths, URLs, data URLs and base64 are kept as they are. A row that cannot be used raises
RowError (swiftlite/dataset_readers.py); the caller adds `file:row`. Sits above the readers and below
swiftlite/dataset_registry and swiftlite/data.py.
"""

from __future__ import annotations

import os
import re

from swiftlite.conversation import Conversation, agent_turns, validate_roles
from swiftlite.dataset_readers import RowError
from swiftlite.media import MediaError
from swiftlite.prompt_parts import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, content_parts_to_text
from swiftlite.video import VIDEO_PLACEHOLDER, has_video, video_error, videos_supported

ROLE_NAMES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "system": "system",
    # ms-swift's agent rows: the assistant's call of a tool, and the tool's answer.
    "tool_call": "tool_call", "function_call": "tool_call",
    "tool_response": "tool", "tool": "tool", "observation": "tool",
}
# `<img>src</img>` tag or a bare `<image>` placeholder, in order of appearance (same for audio).
_IMAGE_SLOT_RE = re.compile(r"<img>([^<>]*)</img>|<image>")
_AUDIO_SLOT_RE = re.compile(r"<audio>([^<>]*)</audio>|<audio>")
_VIDEO_SLOT_RE = re.compile(r"<video>([^<>]*)</video>|<video>")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")


def detect_format(record) -> str:
    if not isinstance(record, dict):
        raise RowError(f"expected a JSON object per row, got {type(record).__name__}")
    if "conversations" in record:
        return "conversations"
    if "messages" in record:
        return "messages"
    if "query" in record or "response" in record:
        return "query"
    if "instruction" in record or "output" in record:
        return "alpaca"
    keys = ", ".join(sorted(record)) or "none"
    raise RowError(f"unknown row format (keys: {keys}); expected conversations, messages, "
                   "query/response or instruction/output")


def record_to_conversation(record, base_dir: str | None = None, require_response: bool = True) -> Conversation:
    """Normalise one row of any supported format into a Conversation, checking it can be trained on."""
    row_format = detect_format(record)
    if isinstance(record, dict) and has_video(record) and not videos_supported():
        raise RowError(video_error())
    if row_format == "conversations":
        messages = _conversations_messages(record["conversations"])
    elif row_format == "messages":
        messages = _messages_messages(record["messages"])
    elif row_format == "query":
        messages = _query_messages(record)
    else:
        messages = _alpaca_messages(record)
    images = _media_list(record, "images", "image")
    audios = _media_list(record, "audios", "audio")
    conversation = _bind_media(messages, images, audios)
    try:
        conversation = agent_turns(conversation, record.get("tools") if isinstance(record, dict) else None)
    except ValueError as error:
        raise RowError(str(error)) from None
    conversation.images = [_resolve_path(source, base_dir, "image") for source in conversation.images]
    conversation.audios = [_resolve_path(source, base_dir, "audio") for source in conversation.audios]
    _bind_videos(conversation, _media_list(record, "videos", "video"))
    conversation.videos = [_resolve_path(source, base_dir, "video") for source in conversation.videos]
    _check(conversation, require_response)
    return conversation


def _role(value, index: int) -> str:
    role = ROLE_NAMES.get(str(value).lower()) if value is not None else None
    if role is None:
        raise RowError(f"turn {index}: unknown role {value!r} (expected user/human, assistant/gpt or system)")
    return role


def _conversations_messages(turns) -> list[tuple[str, object]]:
    if not isinstance(turns, list) or not turns:
        raise RowError("'conversations' must be a non-empty list of {from, value} turns")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or "value" not in turn:
            raise RowError(f"turn {index}: expected an object with 'from' and 'value'")
        messages.append((_role(turn.get("from", turn.get("role")), index), turn["value"]))
    return messages


def _messages_messages(turns) -> list[tuple[str, object]]:
    if not isinstance(turns, list) or not turns:
        raise RowError("'messages' must be a non-empty list of {role, content} messages")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or "content" not in turn:
            raise RowError(f"message {index}: expected an object with 'role' and 'content'")
        messages.append((_role(turn.get("role"), index), turn["content"]))
    return messages


def _query_messages(record: dict) -> list[tuple[str, object]]:
    messages: list[tuple[str, object]] = []
    if record.get("system"):
        messages.append(("system", record["system"]))
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RowError("'history' must be a list of [query, response] pairs")
    for index, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError(f"history[{index}]: expected a [query, response] pair")
        messages += [("user", pair[0]), ("assistant", pair[1])]
    if record.get("query") is None:
        raise RowError("'query' is missing")
    messages.append(("user", record["query"]))
    if record.get("response") is not None:
        messages.append(("assistant", record["response"]))
    return messages


def _alpaca_messages(record: dict) -> list[tuple[str, object]]:
    instruction = record.get("instruction") or ""
    extra = record.get("input") or ""
    query = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    if not query:
        raise RowError("'instruction' (and 'input') are empty")
    messages: list[tuple[str, object]] = []
    if record.get("system"):
        messages.append(("system", record["system"]))
    messages.append(("user", query))
    if record.get("output") is not None:
        messages.append(("assistant", record["output"]))
    return messages


def _media_list(record: dict, plural: str, singular: str) -> list:
    value = record.get(plural, record.get(singular))
    if value is None or value == "":
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if not isinstance(value, list):
        raise RowError(f"'{plural}' must be a list of paths or URLs")
    return list(value)


def _slots(text: str, pattern: re.Pattern, placeholder: str) -> tuple[str, list]:
    """Tags become placeholders; each placeholder gets a slot: its tag's source, or None (taken from the list)."""
    slots: list = []

    def replace(match: re.Match) -> str:
        source = match.group(1)
        if source is not None and not source.strip():
            raise RowError(f"empty {match.group(0)} tag")
        slots.append(source.strip() if source is not None else None)
        return placeholder

    return pattern.sub(replace, text), slots


def _content_slots(content, index: int) -> tuple[str, list, list]:
    """One message's content (string or OpenAI parts) -> (text with placeholders, image slots, audio slots)."""
    if isinstance(content, str):
        text, image_slots = _slots(content, _IMAGE_SLOT_RE, IMAGE_PLACEHOLDER)
        text, audio_slots = _slots(text, _AUDIO_SLOT_RE, AUDIO_PLACEHOLDER)
        return text, image_slots, audio_slots
    if not isinstance(content, list):
        raise RowError(f"turn {index}: content must be text or a list of parts, got {type(content).__name__}")
    pieces, image_slots, audio_slots = [], [], []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            text, images, audios = _content_slots(part["text"], index)
        elif isinstance(part, dict) and part.get("type") in ("video_url", "video") and videos_supported():
            # Written as a tag, bound with the `videos` column in _bind_videos.
            try:
                sources: list = []
                content_parts_to_text([part], videos=sources)
            except MediaError as error:
                raise RowError(f"turn {index}: {error}") from None
            text, images, audios = f"<video>{sources[0]}</video>", [], []
        else:
            try:
                text, images, audios = content_parts_to_text([part])
            except MediaError as error:
                raise RowError(f"turn {index}: {error}") from None
        pieces.append(text)
        image_slots += images
        audio_slots += audios
    return "".join(pieces), image_slots, audio_slots


def _fill(slots: list, listed: list, kind: str) -> list:
    empty = sum(slot is None for slot in slots)
    if empty != len(listed):
        placeholder = {"image": IMAGE_PLACEHOLDER, "audio": AUDIO_PLACEHOLDER}.get(kind, VIDEO_PLACEHOLDER)
        raise RowError(f"{empty} {placeholder} placeholder(s) but {len(listed)} {kind}(s) listed in '{kind}s'")
    remaining = iter(listed)
    return [next(remaining) if slot is None else slot for slot in slots]


def _bind_media(messages: list[tuple[str, object]], images: list, audios: list) -> Conversation:
    texts, image_slots, audio_slots = [], [], []
    for index, (role, content) in enumerate(messages):
        if content is None:
            raise RowError(f"turn {index} ({role}): content is missing")
        text, images_here, audios_here = _content_slots(content, index)
        if role != "user" and (images_here or audios_here):
            raise RowError(f"turn {index} ({role}): only user turns may hold images or audio")
        texts.append(text)
        image_slots += images_here
        audio_slots += audios_here
    prefix = ""
    # No placeholder at all but media listed: they belong to the first user turn (ms-swift's rule).
    if images and not image_slots:
        prefix += IMAGE_PLACEHOLDER * len(images)
        image_slots = [None] * len(images)
    if audios and not audio_slots:
        prefix += AUDIO_PLACEHOLDER * len(audios)
        audio_slots = [None] * len(audios)
    if prefix:
        first_user = next((i for i, (role, _) in enumerate(messages) if role == "user"), None)
        if first_user is None:
            raise RowError("the row has no user turn")
        texts[first_user] = prefix + texts[first_user]
    conversation_messages = [{"role": role, "content": text} for (role, _), text in zip(messages, texts)]
    return Conversation(conversation_messages, _fill(image_slots, images, "image"), _fill(audio_slots, audios, "audio"))


def _bind_videos(conversation: Conversation, videos: list) -> None:
    """ms-swift's `<video>` placeholders and `videos` column (and `<video>SRC</video>` tags, which video parts
    become): each bare placeholder takes the next listed video; with no placeholder at all the listed videos go
    to the start of the first user turn (as images do)."""
    slots: list = []
    for index, message in enumerate(conversation.messages):
        text, here = _slots(message["content"], _VIDEO_SLOT_RE, VIDEO_PLACEHOLDER)
        if message["role"] != "user" and here:
            raise RowError(f"turn {index} ({message['role']}): only user turns may hold videos")
        message["content"] = text
        slots += here
    if videos and not slots:
        first_user = next((m for m in conversation.messages if m["role"] == "user"), None)
        if first_user is None:
            raise RowError("the row has no user turn")
        first_user["content"] = VIDEO_PLACEHOLDER * len(videos) + first_user["content"]
        slots = [None] * len(videos)
    conversation.videos = _fill(slots, videos, "video")


def _looks_local(source) -> bool:
    if not isinstance(source, str):
        return False  # PIL images and dicts from hub datasets
    text = source.strip()
    if text[:5].lower() == "data:" or _SCHEME_RE.match(text):
        return False
    if len(text) > 64 and "." not in text and re.fullmatch(r"[A-Za-z0-9+/=_\-\s]+", text):
        return False  # bare base64 (a file path would have an extension)
    return True


def _resolve_path(source, base_dir: str | None, kind: str):
    """Relative paths: the dataset file's directory first, then the working directory. Missing -> RowError."""
    if not _looks_local(source):
        return source
    path = os.path.expanduser(source.strip())
    candidates = [path] if os.path.isabs(path) else [os.path.join(base_dir, path)] if base_dir else []
    if not os.path.isabs(path):
        candidates.append(os.path.abspath(path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    where = " (looked beside the dataset file and in the working directory)" if not os.path.isabs(path) else ""
    raise RowError(f"{kind} file not found: {source}{where}")


def _check(conversation: Conversation, require_response: bool) -> None:
    try:
        validate_roles(conversation)
    except ValueError as error:
        raise RowError(str(error)) from None
    roles = [message["role"] for message in conversation.messages]
    if require_response:
        if "assistant" not in roles:
            raise RowError("no assistant turn to train on")
        if roles[-1] != "assistant":
            raise RowError("the last turn must be the assistant's reply")
    for index, message in enumerate(conversation.messages):
        if message["role"] == "assistant" and not message["content"].strip() and not message.get("tool_calls"):
            raise RowError(f"turn {index}: the assistant reply is empty")

"""A /v1/chat/completions body -> ParsedRequest holding one Conversation, checked field by field."""

from __future__ import annotations

from swiftlite.conversation import Conversation, bind_unplaced_media
from swiftlite.media import MediaError
from swiftlite.prompt_parts import URL_PLACEHOLDER, bind_url_placeholders, content_parts_to_text
from swiftlite.server.errors import bad_request
from swiftlite.server.fields import (
    CHAT_FIELDS,
    boolean_field,
    check_known_fields,
    check_media_limits,
    integer_field,
    show_value,
    string_list_field,
)
from swiftlite.server.protocol import ParsedRequest, RequestLimits
from swiftlite.server.sampling_fields import common_fields
from swiftlite.server.structured_output import message_tool_calls, tool_fields

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}

MAX_VIDEOS_PER_PROMPT = 2


def parse_chat_request(body, limits: RequestLimits) -> ParsedRequest:
    check_known_fields(body, CHAT_FIELDS, "chat")
    common = common_fields(body, limits)
    max_tokens = integer_field(body, "max_completion_tokens", minimum=1) or common["max_tokens"]
    logprobs = bool(boolean_field(body, "logprobs"))
    top_logprobs = integer_field(body, "top_logprobs", minimum=0, maximum=20) or 0
    if top_logprobs and not logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", param="messages")
    extra_images = string_list_field(body, "images")
    if _has_url_placeholders(messages):
        messages, extra_images = _bind_url_placeholders(messages, extra_images), []
    conversation = Conversation()
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{param} must be an object with 'role' and 'content'", param=param)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"{param}.role {show_value(role)} is not supported (use system, user, assistant or tool)",
                              param=f"{param}.role")
        content = message.get("content")
        calls = message_tool_calls(message["tool_calls"], f"{param}.tool_calls") if message.get("tool_calls") else None
        if calls and role != "assistant":
            raise bad_request(f"{param}.tool_calls: only assistant messages hold tool calls",
                              param=f"{param}.tool_calls")
        if content is None and role != "assistant":
            raise bad_request(f"{param}.content is missing", param=f"{param}.content")
        try:
            text, images, audios = content_parts_to_text(_normalise_parts(content), videos=conversation.videos)
        except MediaError as error:
            raise bad_request(f"{param}.content: {error}", param=f"{param}.content", code="invalid_content") from None
        if role == "tool" and not any(m.get("tool_calls") for m in conversation.messages if m["role"] == "assistant"):
            raise bad_request(f"{param}.role: a 'tool' message must answer an earlier assistant message's tool_calls",
                              param=f"{param}.role")
        entry = {"role": ROLES[role], "content": text}
        if calls:
            entry["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if role == "tool" and isinstance(message.get(key), str):
                entry[key] = message[key]
        conversation.messages.append(entry)
        conversation.images += images
        conversation.audios += audios
    last = conversation.messages[-1]["role"]
    system_only = len(conversation.messages) == 1 and last == "system"
    if last not in ("user", "tool", "assistant") and not system_only:
        raise bad_request("the last message must come from the user, a tool, or the assistant (to continue it)",
                          param=f"messages[{len(messages) - 1}].role")
    prefill = last == "assistant"
    if prefill and conversation.messages[-1].get("tool_calls"):
        raise bad_request("an assistant message with tool_calls cannot be continued: add the tool results",
                          param=f"messages[{len(messages) - 1}]")
    tools, tool_choice = tool_fields(body)
    conversation.tools = tools
    if prefill and tool_choice not in ("none", "auto"):
        raise bad_request("'tool_choice' required or named cannot continue an assistant message",
                          param="tool_choice")
    if tool_choice not in ("none", "auto") and common["json_mode"]:
        raise bad_request("'response_format' and a forced 'tool_choice' cannot both constrain one reply",
                          param="response_format")
    # ms-swift's `images`/`audios` fields: media for the conversation whose text holds no placeholder for them.
    conversation.images += extra_images
    conversation.videos += string_list_field(body, "videos")
    conversation.audios += string_list_field(body, "audios")
    bind_unplaced_media(conversation)
    check_media_limits(conversation.images, conversation.audios, limits, "messages")
    if len(conversation.videos) > MAX_VIDEOS_PER_PROMPT:
        # Each video costs a bounded decode (swiftlite/video.py); a request still may not ask for many.
        raise bad_request(f"{len(conversation.videos)} videos in one prompt, but this server takes at most "
                          f"{MAX_VIDEOS_PER_PROMPT}", param="messages", code="too_many_videos")

    common["sampling"].update(logprobs=logprobs, top_logprobs=top_logprobs)
    return ParsedRequest("chat", common["model"], [conversation], common["sampling"], max_tokens, common["n"],
                         common["stream"], common["include_usage"], logprobs, top_logprobs, tools=tools,
                         tool_choice=tool_choice, prefill=prefill, json_schema=common["json_schema"],
                         json_mode=common["json_mode"])


def _text_slots(messages: list):
    """(message, part index or None) of every text in `messages` that may hold `<img/>` placeholders."""
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield message, None
        elif isinstance(content, list):
            for number, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    yield message, number


def _slot_text(message: dict, number: int | None) -> str:
    return message["content"] if number is None else message["content"][number]["text"]


def _has_url_placeholders(messages) -> bool:
    return isinstance(messages, list) and any(URL_PLACEHOLDER in _slot_text(m, n) for m, n in _text_slots(messages))


def _bind_url_placeholders(messages: list, images: list[str]) -> list:
    """rtp-llm's `<img/>` placeholders take the request's `images` in order (copies; the body is untouched)."""
    slots = list(_text_slots(messages))
    try:
        texts = bind_url_placeholders([_slot_text(m, n) for m, n in slots], images)
    except MediaError as error:
        raise bad_request(f"messages: {error}", param="images", code="invalid_content") from None
    copies = {id(m): dict(m, content=list(m["content"]) if isinstance(m["content"], list) else m["content"])
              for m, _ in slots}
    for (message, number), text in zip(slots, texts):
        copy = copies[id(message)]
        if number is None:
            copy["content"] = text
        else:
            copy["content"][number] = dict(copy["content"][number], text=text)
    return [copies.get(id(m), m) for m in messages]


def _normalise_parts(content):
    """Accept Xinference's {"type": "audio", "audio_url": ...} and {"type": "image", "image_url": ...} parts."""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("audio", "image", "video"):
            kind = part["type"]
            if part.get(kind) is None and part.get(f"{kind}_url") is not None:
                part = {"type": f"{kind}_url", f"{kind}_url": part[f"{kind}_url"]}
        parts.append(part)
    return parts

"""The one in-memory shape every input format is normalised to before a template encodes it.

`messages` holds plain-text contents in which each image is marked by ``<image>`` and each audio clip by
``<audio>``, at the place it appears; `images` and `audios` list the media sources in the same order.
Dataset rows (sft), chat turns (infer), HTTP requests (deploy) and client calls all become a Conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swiftlite.prompt_parts import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    URL_PLACEHOLDER,
    bind_url_placeholders,
    extract_media_tags,
)

_BOUND = "\x00bound-image-"  # stands for the k-th bound source inside a tag until the tags are read

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Conversation:
    messages: list[dict] = field(default_factory=list)  # [{"role": ..., "content": str}]
    images: list = field(default_factory=list)
    audios: list = field(default_factory=list)
    tools: list | None = None  # OpenAI function tools, rendered by the chat template (apply_chat_template(tools=))
    videos: list = field(default_factory=list)  # one per <video> placeholder, in order

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0]["role"] == "system":
            return self.messages[0]["content"]
        return None

    def texts(self) -> list[str]:
        return [m["content"] for m in self.messages]


def conversation_from_query(
    query: str | None,
    history: list | None = None,
    system: str | None = None,
    images: list | None = None,
    audios: list | None = None,
    response: str | None = None,
) -> Conversation:
    """ms-swift's (query, history, system, images) shape -> Conversation.

    Qwen-VL style ``<img>src</img>`` / ``<audio>src</audio>`` tags anywhere in the turns are pulled out in
    order of appearance and become placeholders. Explicit `images`/`audios` lists follow the media found in
    tags. When the text holds no placeholder at all for a given kind, the listed media are bound to the
    first user turn, because a dialogue in that style revolves around the images sent with it (ms-swift
    seeds: yi-vl, minicpm-v). rtp-llm's ``<img/>`` placeholders, when the turns hold any, take the listed
    images in order instead (seed 001: ``"Picture 1:<img/>\\n..."`` with ``urls=[...]``).
    """
    turns: list[tuple[str, str | None]] = [(q, r) for q, r in (history or [])]
    if query is not None:
        turns.append((query, response))
    images = list(images or [])
    bound: list = []
    if any(URL_PLACEHOLDER in user_text for user_text, _ in turns):
        # Each <img/> becomes a tag naming a stand-in for its source, so that tag images and bound images come
        # out of extract_media_tags in the order they appear (the sources themselves may be PIL images).
        user_texts = bind_url_placeholders([user_text for user_text, _ in turns], [_BOUND + str(k) for k in
                                                                                   range(len(images))])
        turns = [(text, reply) for text, (_, reply) in zip(user_texts, turns)]
        bound, images = images, []
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    found_images: list = []
    found_audios: list = []
    for user_text, assistant_text in turns:
        text, tag_images, tag_audios = extract_media_tags(user_text)
        found_images += [bound[int(s[len(_BOUND):])] if s.startswith(_BOUND) else s for s in tag_images]
        found_audios += tag_audios
        messages.append({"role": "user", "content": text})
        if assistant_text is not None:
            messages.append({"role": "assistant", "content": assistant_text})
    conversation = Conversation(messages, found_images + images, found_audios + list(audios or []))
    bind_unplaced_media(conversation)
    return conversation


def bind_unplaced_media(conversation: Conversation) -> None:
    """If no placeholder of a kind exists but media of that kind were given, put them in the first user turn."""
    texts = conversation.texts()
    first_user = next((m for m in conversation.messages if m["role"] == "user"), None)
    if first_user is None:
        return
    prefix = ""
    if conversation.images and not any(IMAGE_PLACEHOLDER in t for t in texts):
        prefix += IMAGE_PLACEHOLDER * len(conversation.images)
    if conversation.audios and not any(AUDIO_PLACEHOLDER in t for t in texts):
        prefix += AUDIO_PLACEHOLDER * len(conversation.audios)
    if conversation.videos and not any("<video>" in t for t in texts):
        prefix += "<video>" * len(conversation.videos)
    if prefix:
        first_user["content"] = prefix + first_user["content"]


def agent_turns(conversation: Conversation, tools=None) -> Conversation:
    """ms-swift's agent rows -> the OpenAI shape chat templates render.

    `tool_call` turns (JSON {"name", "arguments"}) become the `tool_calls` of an assistant message (of the assistant
    turn just before them, when it has no calls yet: its thought, then its calls); `tool_response` turns are `tool`
    messages; the row's `tools` column (a JSON string or a list, of OpenAI tools or bare functions) goes to
    `Conversation.tools`. Raises ValueError naming the turn for a call that is not such JSON.
    """
    import json

    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except ValueError:
            raise ValueError("the 'tools' column is not valid JSON") from None
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
            raise ValueError("the 'tools' column must be a list of tools")
        tools = [tool if "function" in tool else {"type": "function", "function": tool} for tool in tools] or None
    messages: list[dict] = []
    for index, message in enumerate(conversation.messages):
        if message["role"] != "tool_call":
            messages.append(message)
            continue
        try:
            call = json.loads(message["content"])
        except ValueError:
            call = None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ValueError(f"turn {index} (tool_call): expected JSON {{\"name\": ..., \"arguments\": {{...}}}}")
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise ValueError(f"turn {index} (tool_call): 'arguments' is not valid JSON") from None
        entry = {"type": "function", "function": {"name": call["name"], "arguments": arguments}}
        previous = messages[-1] if messages else None
        if previous is not None and previous["role"] == "assistant" and (
                "tool_calls" not in previous or conversation.messages[index - 1]["role"] == "tool_call"):
            previous.setdefault("tool_calls", []).append(entry)
        else:
            messages.append({"role": "assistant", "content": "", "tool_calls": [entry]})
    if tools is None and len(messages) == len(conversation.messages) and all(
            m["role"] != "tool" for m in messages):
        return conversation
    return Conversation(messages, conversation.images, conversation.audios, tools=tools, videos=conversation.videos)


def validate_roles(conversation: Conversation) -> None:
    """Raise ValueError naming the problem if the turn order cannot be rendered by a chat template."""
    messages = conversation.messages
    if not messages:
        raise ValueError("the conversation is empty")
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {index}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if role == "system" and index != 0:
            raise ValueError(f"message {index}: a system message may only come first")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {index}: content must be text")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body or body[0]["role"] != "user":
        raise ValueError("the first non-system message must come from the user")
    for index, (previous, current) in enumerate(zip(messages, messages[1:]), start=1):
        if current["role"] == "tool" and not (previous["role"] == "tool" or previous.get("tool_calls")):
            raise ValueError(f"message {index}: a tool response must follow the assistant's tool call")
    # Tool responses belong to the assistant's side of the dialogue: an assistant that called tools may go on
    # after their answers.
    body = [m for m in body if m["role"] != "tool"]
    for previous, current in zip(body, body[1:]):
        if previous["role"] == current["role"] and not (current["role"] == "assistant" and previous.get("tool_calls")):
            raise ValueError(f"two {current['role']} messages in a row: user and assistant turns must alternate")

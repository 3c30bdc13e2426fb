"""The one in-memory shape every input format is normalised to before a template encodes it.

`messages` holds plain-text contents in which each image is marked by ``<image>`` and each audio clip by
``<audio>``, at the place it appears; `images` and `audios` list the media sources in the same order.
Dataset rows (sft), chat turns (infer), HTTP requests (deploy) and client calls all become a Conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swiftlite.media import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, extract_media_tags

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    messages: list[dict] = field(default_factory=list)  # [{"role": ..., "content": str}]
    images: list = field(default_factory=list)
    audios: list = field(default_factory=list)
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
    seeds: yi-vl, minicpm-v).
    """
    turns: list[tuple[str, str | None]] = [(q, r) for q, r in (history or [])]
    if query is not None:
        turns.append((query, response))
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    found_images: list = []
    found_audios: list = []
    for user_text, assistant_text in turns:
        text, tag_images, tag_audios = extract_media_tags(user_text)
        found_images += tag_images
        found_audios += tag_audios
        messages.append({"role": "user", "content": text})
        if assistant_text is not None:
            messages.append({"role": "assistant", "content": assistant_text})
    conversation = Conversation(messages, found_images + list(images or []), found_audios + list(audios or []))
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
    for previous, current in zip(body, body[1:]):
        if previous["role"] == current["role"]:
            raise ValueError(f"two {current['role']} messages in a row: user and assistant turns must alternate")

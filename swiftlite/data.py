"""Dataset files -> Conversations: the row formats `mm sft` and `mm infer --val_dataset` read.

`--dataset` takes local .json / .jsonl / .csv files (a `#N` suffix samples N rows, seeded), registered dataset
names (`coco-en-mini`, `refcoco:caption`: swiftlite/dataset_registry, resolved first) or hub dataset ids.
Each row's format is detected from its keys:

- `conversations`: [{"from": user|human|assistant|gpt|system, "value": ...}] (Qwen-VL style `<img>path</img>`
  tags or `<image>` placeholders plus an `images` list);
- `messages`: [{"role": ..., "content": ...}], content a string with `<image>`/`<audio>` placeholders or an
  OpenAI-style parts list, plus optional `images`/`audios` lists;
- `query`/`response`/`history`/`system`/`images` (ms-swift 2.x);
- `instruction`/`input`/`output` (alpaca, text only).

Image and audio paths are resolved relative to the dataset file (then the working directory); absolute paths,
URLs, data URLs and base64 are kept as they are. A row that cannot be used raises a UserError naming
`file:row` and the problem; with `strict=False` such rows are skipped and counted instead.
Only the stdlib is imported at module level (`datasets` only when a hub dataset is named).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from swiftlite.conversation import Conversation, agent_turns, validate_roles
from swiftlite.errors import UserError
from swiftlite.media import MediaError
from swiftlite.prompt_parts import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, content_parts_to_text
from swiftlite.video import VIDEO_PLACEHOLDER, has_video, video_error, videos_supported

LOCAL_SUFFIXES = (".json", ".jsonl", ".csv")
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
_SAMPLE_SUFFIX_RE = re.compile(r"^(.*)#(\d+)$")


class RowError(ValueError):
    """A problem with one row; the loader adds `file:row` and decides whether to raise or skip."""


@dataclass
class DatasetRow:
    conversation: Conversation
    source: str  # "file.json:12" (1-based row number; line number for .jsonl, data row for .csv)


# ---- public API ----------------------------------------------------------------------------------------
def load_dataset_rows(specs: list[str], strict: bool = True, seed: int = 42,
                      require_response: bool = True, use_hf: bool | None = None) -> tuple[list[DatasetRow], int]:
    """Read every dataset spec ("file.jsonl", "file.json#100", "coco-en-mini#20", hub id) into rows.

    Returns (rows, skipped). Registered names (`mm list datasets`) are resolved before files and hub ids;
    `use_hf` picks their hub (default: USE_HF, else ModelScope). `require_response=False` accepts rows whose
    last turn is the user's (prompts for `mm infer`).
    """
    if isinstance(specs, str):
        specs = [specs]
    rows: list[DatasetRow] = []
    skipped = 0
    for spec in specs:
        path_text, sample = parse_spec(spec)
        named = _read_named(path_text, sample, seed, use_hf)
        if named is not None:
            (records, base_dir), sample = named, None  # sampled already, by row index
        else:
            records, base_dir = read_records(path_text)
        file_rows: list[DatasetRow] = []
        for source, record in records:
            try:
                if isinstance(record, RowError):
                    raise record
                conversation = record_to_conversation(record, base_dir, require_response)
            except (RowError, MediaError) as error:
                if strict:
                    raise UserError(f"{source}: {error} (pass --strict false to skip bad rows)") from None
                skipped += 1
                continue
            file_rows.append(DatasetRow(conversation, source))
        if not file_rows and not skipped:
            raise UserError(f"--dataset {spec}: the dataset holds no rows")
        rows += sample_rows(file_rows, sample, seed) if sample is not None else file_rows
    return rows, skipped


def split_train_val(rows: list, test_ratio: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split: ceil(ratio * n) rows (at least 1, leaving at least 1 to train on).

    Depends only on (rows, test_ratio, seed), so `mm infer --load_dataset_config true` finds the same rows.
    Both parts keep the dataset's order.
    """
    if not 0 <= test_ratio < 1:
        raise UserError(f"--dataset_test_ratio {test_ratio}: expected a number in [0, 1)")
    if test_ratio == 0 or len(rows) < 2:
        return list(rows), []
    val_count = min(len(rows) - 1, max(1, math.ceil(len(rows) * test_ratio)))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val_indices = set(order[:val_count])
    train = [row for index, row in enumerate(rows) if index not in val_indices]
    val = [row for index, row in enumerate(rows) if index in val_indices]
    return train, val


def load_train_val(dataset: list[str], val_dataset: list[str] | None = None, dataset_test_ratio: float = 0.0,
                   seed: int = 42, strict: bool = True, use_hf: bool | None = None,
                   **_ignored) -> tuple[list[DatasetRow], list[DatasetRow], int]:
    """(train rows, validation rows, skipped count): `val_dataset` if given, else a held-out split of `dataset`.

    Extra keyword arguments are ignored so that callers can pass a whole sft_args.json.
    """
    if not dataset:
        raise UserError("--dataset: name at least one dataset file")
    rows, skipped = load_dataset_rows(dataset, strict, seed, use_hf=use_hf)
    if val_dataset:
        val_rows, val_skipped = load_dataset_rows(val_dataset, strict, seed, use_hf=use_hf)
        return rows, val_rows, skipped + val_skipped
    train, val = split_train_val(rows, dataset_test_ratio, seed)
    return train, val, skipped


# ---- named datasets (swiftlite/dataset_registry) ------------------------------------------------------
def _read_named(path_text: str, sample: int | None, seed: int, use_hf: bool | None):
    """(records, base_dir) of a registered dataset name, or None when `path_text` is not one."""
    from swiftlite.dataset_registry import find_named_dataset

    found = find_named_dataset(path_text)
    if found is None:
        return None
    from swiftlite.dataset_registry.sources import read_named

    if use_hf is None:
        use_hf = os.environ.get("USE_HF", "0").lower() in ("1", "true", "yes")
    entry, subset = found
    return read_named(entry, subset, sample, seed, use_hf)


# ---- specs and sampling ------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, int | None]:
    """'train.json#100' -> ('train.json', 100); 'train.json' -> ('train.json', None)."""
    match = _SAMPLE_SUFFIX_RE.match(spec)
    if match and not Path(spec).exists():
        return match.group(1), int(match.group(2))
    return spec, None


def sample_rows(rows: list, count: int, seed: int) -> list:
    """N rows drawn without replacement (seeded); beyond the dataset's size, whole copies plus a sample."""
    if not rows:
        return []
    generator = random.Random(seed)
    copies, remainder = divmod(count, len(rows))
    return list(rows) * copies + generator.sample(list(rows), remainder)


# ---- reading files -----------------------------------------------------------------------------------
def read_records(path_text: str) -> tuple[list[tuple[str, object]], str | None]:
    """[(source, record dict or RowError)], and the directory relative media paths resolve against."""
    path = Path(path_text).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _read_jsonl(path, path_text), str(path.resolve().parent)
        if suffix == ".json":
            return _read_json(path, path_text), str(path.resolve().parent)
        if suffix == ".csv":
            return _read_csv(path, path_text), str(path.resolve().parent)
        raise UserError(f"--dataset {path_text}: unsupported file type {suffix!r} (expected .json, .jsonl or .csv)")
    looks_like_file = path.suffix.lower() in LOCAL_SUFFIXES or (path.suffix and "/" not in path_text)
    if looks_like_file or path_text.startswith((".", "/", "~")) or path_text.count("/") > 1:
        raise UserError(f"--dataset {path_text}: no such file")
    return _read_hub_dataset(path_text), None


def _read_jsonl(path: Path, name: str) -> list:
    records = []
    with open(path, "rb") as handle:  # decoded line by line: a row that is not UTF-8 is that row's error
        for line_number, raw in enumerate(handle, start=1):
            source = f"{name}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                records.append((source, RowError(_not_utf8(error))))
                continue
            if not line.strip():
                continue
            try:
                records.append((source, json.loads(line)))
            except json.JSONDecodeError as error:
                records.append((source, RowError(f"invalid JSON ({error.msg} at column {error.colno})")))
    return records


def _not_utf8(error: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at column {error.start + 1}); save the file as UTF-8"


def _read_text(path: Path, name: str) -> str:
    """A whole .json/.csv file as text; bytes that are not UTF-8 are an error naming the line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        error.start -= line_start
        error.object = data[line_start:]
        raise UserError(f"{name}:{line}: {_not_utf8(error)}") from None


def _read_json(path: Path, name: str) -> list:
    text = _read_text(path, name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if text.lstrip().startswith("{") and "\n{" in text:
            return _read_jsonl(path, name)  # JSON lines saved with a .json name: read it as such
        raise UserError(f"{name}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno})") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) == 1 and not _looks_like_row(data):
            data = lists[0]  # {"data": [...]}: a list under a single key
        else:
            data = [data]
    if not isinstance(data, list):
        raise UserError(f"{name}: expected a JSON list of rows, got {type(data).__name__}")
    return [(f"{name}:{index}", record) for index, record in enumerate(data, start=1)]


def _looks_like_row(data: dict) -> bool:
    return any(key in data for key in ("conversations", "messages", "query", "instruction"))


def _read_csv(path: Path, name: str) -> list:
    records = []
    import io

    with io.StringIO(_read_text(path, name), newline="") as handle:
        reader = csv.DictReader(handle)
        for index, record in enumerate(reader, start=1):
            source = f"{name}:{index}"
            try:
                records.append((source, {key: _csv_value(key, value) for key, value in record.items()
                                         if key is not None and value not in (None, "")}))
            except RowError as error:
                records.append((source, error))
    return records


def _csv_value(key: str, value: str):
    # Structured columns (conversations, messages, history, images) are written as JSON inside a cell.
    stripped = value.strip()
    if stripped[:1] in "[{" and key in ("conversations", "messages", "history", "images", "audios", "videos"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as error:
            raise RowError(f"column {key!r}: invalid JSON ({error.msg})") from None
    return value


def _read_hub_dataset(dataset_id: str) -> list:
    """A dataset id on the Hugging Face Hub (through `datasets`); offline this is a clear error."""
    name, _, subset = dataset_id.partition(":")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
        os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline and not _hub_reachable():
        # Without this check the hub client retries with back-off for half a minute before giving up.
        raise UserError(f"--dataset {dataset_id}: not a local file, and the Hugging Face Hub cannot be reached "
                        "(set HF_HUB_OFFLINE=1 to use a cached copy, or pass a local .json/.jsonl/.csv file)")
    try:
        import datasets
    except ImportError:
        raise UserError(f"--dataset {dataset_id}: not a local file, and the `datasets` package needed to load "
                        "hub datasets is not installed") from None
    try:
        loaded = datasets.load_dataset(name, subset or None, split="train")
    except Exception as error:  # network, unknown id, auth: all user-facing
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(
            f"--dataset {dataset_id}: not a local file, and loading it from the hub failed ({first_line}). "
            "Check the name and your network, or pass a local .json/.jsonl/.csv file."
        ) from None
    return [(f"{dataset_id}:{index}", dict(record)) for index, record in enumerate(loaded, start=1)]


def _hub_reachable(timeout: float = 5.0) -> bool:
    import socket
    import urllib.parse

    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# ---- one record -> Conversation ----------------------------------------------------------------------
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

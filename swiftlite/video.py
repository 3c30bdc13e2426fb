"""Video input: where swiftlite stands.

transformers' video processors (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, InternVL3, GLM-4.1V) are
torchvision-only, and swiftlite does not yet decode and encode videos itself. So a video anywhere (a `<video>`
placeholder or a `videos` column in a dataset row, a `video_url` / `video` content part) is refused with one
line that says why, instead of being read as text or dropped.
"""

from __future__ import annotations

VIDEO_PLACEHOLDER = "<video>"


def video_error(where: str = "") -> str:
    from swiftlite.models.processors import has_torchvision

    prefix = f"{where}: " if where else ""
    if not has_torchvision():
        return (f"{prefix}videos need torchvision (transformers' video processors are torchvision-only): "
                "pip install torchvision (the build matching your torch); meanwhile send frames as images")
    return f"{prefix}video input is not supported by swiftlite yet: send frames as images"


def has_video(record: dict) -> bool:
    """A dataset row that carries a video: a `videos`/`video` column or a `<video>` placeholder in its text."""
    if record.get("videos") or record.get("video"):
        return True
    return VIDEO_PLACEHOLDER in _texts(record)


def _texts(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_texts(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return " ".join(_texts(v) for v in value)
    return ""

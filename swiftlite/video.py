"""Video input: decoding a clip into the frames the official video processors take.

transformers' video processors (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, InternVL3, GLM-4.1V) are
torchvision-only, so without torchvision a video anywhere (a `<video>` placeholder or a `videos` column in a
dataset row, a `video_url` / `video` content part) is refused with one line naming it.

With torchvision, a video source (path, URL, data URL: read under the same MediaPolicy as images) is decoded with
PyAV here, not by the processor, so that the decode work is bounded before any frame is decoded: the declared
frame size and duration are checked first, frames are sampled at FPS (ms-swift's env vars: FPS, FPS_MIN_FRAMES,
FPS_MAX_FRAMES, VIDEO_MAX_PIXELS), and decoding stops at the last frame kept. The sampled frames go to the
processor's `videos=` argument with `do_sample_frames=False`; the tokens they expand to are counted in
max_length like any other.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

VIDEO_PLACEHOLDER = "<video>"

# Hard bounds on what a declared stream may ask of the decoder, whatever the env vars say: a hostile clip
# declaring a huge frame or an hours-long stream is refused before decoding.
MAX_DECLARED_PIXELS = 4096 * 2160  # one 4K frame
MAX_DECODED_FRAMES = 20_000  # frames walked through (decoded) to reach the sampled ones: 11 minutes at 30 fps
MAX_DECODED_PIXELS = 1920 * 1080 * 20_000  # frames x pixels: the decode work, whatever the frame size


@dataclass
class VideoSettings:
    """ms-swift's environment variable names. FPS_MAX_FRAMES and VIDEO_MAX_PIXELS default to small values (not
    checked against ms-swift's), so that an unset environment cannot make one request cost thousands of tokens."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 64
    max_pixels: int = 128 * 28 * 28  # per frame

    @classmethod
    def from_env(cls) -> "VideoSettings":
        from swiftlite.media import MediaError

        def read(name, cast, default):
            value = os.environ.get(name)
            if value is None or value == "":
                return default
            try:
                result = cast(value)
            except ValueError:
                raise MediaError(f"environment variable {name}={value!r} is not a number") from None
            if result <= 0:
                raise MediaError(f"environment variable {name}={value!r} must be positive")
            return result

        base = cls()
        return cls(fps=read("FPS", float, base.fps), min_frames=read("FPS_MIN_FRAMES", int, base.min_frames),
                   max_frames=read("FPS_MAX_FRAMES", int, base.max_frames),
                   max_pixels=read("VIDEO_MAX_PIXELS", int, base.max_pixels))


def video_error(where: str = "") -> str:
    from swiftlite.models.processors import has_torchvision

    prefix = f"{where}: " if where else ""
    if not has_torchvision():
        return (f"{prefix}videos need torchvision (transformers' video processors are torchvision-only): "
                "pip install torchvision (the build matching your torch); meanwhile send frames as images")
    return f"{prefix}this model takes no videos"


def videos_supported() -> bool:
    from swiftlite.models.processors import has_torchvision

    return has_torchvision()


def has_video(record: dict) -> bool:
    """A dataset row that carries a video: a `videos`/`video` column or a `<video>` placeholder in its text."""
    if record.get("videos") or record.get("video"):
        return True
    return VIDEO_PLACEHOLDER in _texts(record)


def extract_video_tags(text: str) -> tuple[str, list[str]]:
    """``<video>SRC</video>`` tags (the chat's, as ms-swift writes them) -> ``<video>`` placeholders + sources."""
    import re

    from swiftlite.media import MediaError, short

    sources: list[str] = []

    def replace(match) -> str:
        source = match.group(1).strip()
        if not source:
            raise MediaError(f"empty <video></video> tag in text: {short(text)}")
        sources.append(source)
        return VIDEO_PLACEHOLDER

    return re.sub(r"<video>([^<>]*)</video>", replace, text), sources


def _texts(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_texts(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return " ".join(_texts(v) for v in value)
    return ""


def sample_indices(total: int, source_fps: float, settings: VideoSettings) -> list[int]:
    """Frame indices kept: `settings.fps` frames a second, between min_frames and max_frames (fewer only when the
    clip has fewer), evenly spread; an even count, as the Qwen processors pair frames (temporal_patch_size 2)."""
    duration = total / source_fps if source_fps > 0 else total
    wanted = round(duration * settings.fps)
    wanted = max(settings.min_frames, min(settings.max_frames, wanted))
    wanted = min(wanted, total)
    if wanted > 1 and wanted % 2:
        wanted -= 1
    wanted = max(wanted, 1)
    if wanted == 1:
        return [0]
    return [round(i * (total - 1) / (wanted - 1)) for i in range(wanted)]


def load_video(source, policy=None, settings: VideoSettings | None = None):
    """A video source -> (frames uint8 array [T, H, W, 3], metadata dict for the processor).

    Raises MediaError (one line naming the source) for anything wrong with the clip."""
    import numpy as np

    from swiftlite.media import MediaError, MediaPolicy, local_media_path, read_media_bytes, short

    policy = policy or MediaPolicy()
    settings = settings or VideoSettings.from_env()
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    # A local file is opened by path (streamed); anything else is read under the policy's byte cap first.
    path = local_media_path(source, policy, "video")
    data = None if path else read_media_bytes(source, policy, "video")
    try:
        import av
    except ImportError:
        raise MediaError("videos need PyAV to decode: pip install av") from None
    try:
        container = av.open(path if path else io.BytesIO(data))
    except Exception as error:  # untrusted bytes: any decoder error means "bad video"
        raise MediaError(f"cannot decode video from {short(source)}: {error}") from None
    with container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {short(source)}")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height or width * height > MAX_DECLARED_PIXELS:
            raise MediaError(f"video {short(source)} declares a {width}x{height} frame "
                             f"(at most {MAX_DECLARED_PIXELS} pixels are decoded)")
        source_fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        total = stream.frames
        if not total and stream.duration and stream.time_base:
            total = int(float(stream.duration * stream.time_base) * source_fps)
        if total > MAX_DECODED_FRAMES or total * width * height > MAX_DECODED_PIXELS:
            raise MediaError(f"video {short(source)} declares {total} frames of {width}x{height} (at most "
                             f"{MAX_DECODED_FRAMES} frames and {MAX_DECODED_PIXELS} pixels in all are decoded)")
        budget = min(MAX_DECODED_FRAMES, MAX_DECODED_PIXELS // (width * height))
        scale = min(1.0, (settings.max_pixels / (width * height)) ** 0.5)
        size = (max(28, int(width * scale)), max(28, int(height * scale)))
        frames = []
        try:
            if total:
                keep = set(sample_indices(total, source_fps, settings))
                last = max(keep)
                for index, frame in enumerate(container.decode(stream)):
                    _check_frame(frame, width, height, source)
                    if index in keep:
                        frames.append(frame.to_image().convert("RGB").resize(size))
                    if index >= last:
                        break
            else:  # no declared length: decode up to the frame budget, then sample
                decoded = []
                for index, frame in enumerate(container.decode(stream)):
                    _check_frame(frame, width, height, source)
                    if index >= budget:
                        raise MediaError(f"video {short(source)} has over {budget} frames of {width}x{height}")
                    decoded.append(frame)
                    if len(decoded) > settings.max_frames * 8:  # keep memory bounded: thin as we go
                        decoded = decoded[::2]
                total = len(decoded)
                frames = [decoded[i].to_image().convert("RGB").resize(size)
                          for i in sample_indices(total, source_fps, settings)] if decoded else []
        except MediaError:
            raise
        except Exception as error:
            raise MediaError(f"cannot decode video from {short(source)}: {error}") from None
    if not frames:
        raise MediaError(f"video {short(source)} has no frames")
    if len(frames) > 1 and len(frames) % 2:
        frames = frames[:-1]
    array = np.stack([np.asarray(frame) for frame in frames])
    duration = total / source_fps
    # The frames handed over are the whole "video" the processor sees: its rate is the rate they were kept at.
    metadata = {"total_num_frames": len(frames), "fps": len(frames) / duration if duration else settings.fps,
                "duration": duration, "frames_indices": list(range(len(frames)))}
    return array, metadata


def _check_frame(frame, width: int, height: int, source) -> None:
    """A stream may declare small frames and carry larger ones: each decoded frame is held to the declared size."""
    if frame.width * frame.height > width * height:
        from swiftlite.media import MediaError, short

        raise MediaError(f"video {short(source)} holds a {frame.width}x{frame.height} frame in a stream declared "
                         f"{width}x{height}")


def write_test_clip(path, frames: int = 8, size: tuple[int, int] = (64, 48), fps: int = 4, seed: int = 0) -> str:
    """A small mp4 (mpeg4) written with PyAV: moving colour blocks, different for each seed (for tests)."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index in range(frames):
            image = np.roll(base, shift=index * 4, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)

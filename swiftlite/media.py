"""Loading images and audio from whatever a dataset row or a chat request hands us.

A media "source" can be a local path, a ``file://`` URL, an ``http(s)://`` URL, a
``data:`` URL, a bare base64 string, raw bytes, or an already-decoded object (a PIL
image, a numpy waveform). Everything funnels through :func:`read_media_bytes`, which
applies one :class:`MediaPolicy` (what the server may read and fetch), and then
through a decoder. Every user-facing problem is raised as :class:`MediaError` with a
message that says what went wrong and which source it was (shortened, so a 5 MB
base64 payload never ends up in a log line or an HTTP error body).

Reading a prompt's conventions (``<img>..</img>`` tags, ``<img/>`` placeholders, OpenAI
content parts) into text with placeholders and lists of sources is :mod:`swiftlite.prompt_parts`'
job; this module only reads and decodes the sources.

Only stdlib, PIL and numpy are imported at module level so that ``mm --help`` stays
fast; the fetcher (swiftlite/media_fetch.py, httpx) is imported lazily, and audio decoding and resampling live
in :mod:`swiftlite.audio` (soundfile, soxr), imported when audio is loaded.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import mimetypes
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

class MediaError(ValueError):
    """A user's media problem: message names the problem and the source (truncated to ~80 chars)."""


@dataclass
class MediaPolicy:
    """What :func:`read_media_bytes` may read. The defaults suit training (trusted data);
    the server tightens them for requests coming from the network."""

    allowed_local_dir: str | None = None  # None with allow_local=True means any local path allowed
    allow_local: bool = True  # server sets False unless --allowed_local_media_path given
    allow_urls: bool = True  # --media_fetch false sets False
    fetch_timeout: float = 10.0  # seconds, connect+read
    max_bytes: int = 20 * 1024 * 1024  # cap on a fetched/decoded media payload
    base_dir: str | None = None  # relative local paths resolve against this (dataset file's dir)
    # The server's guards (swiftlite/media_fetch.py): only public addresses, one message for every failed fetch.
    public_urls_only: bool = False
    allowed_media_domains: tuple[str, ...] | None = None  # --allowed_media_domains: only these hosts, any address
    # Decompression bombs: refuse an image whose header declares more pixels than this, before decoding it.
    max_image_pixels: int | None = None
    max_aspect_ratio: float | None = None  # longer side / shorter side; the Qwen processors fail above 200


class FetchedBytes(bytes):
    """A URL's body, fetched ahead of decoding (the server's fetch pool); messages still name the URL."""

    def __new__(cls, data: bytes, url: str):
        fetched = super().__new__(cls, data)
        fetched.url = url
        return fetched


def short(source, limit: int = 60) -> str:
    """A short printable description of a source for error messages."""
    if isinstance(source, FetchedBytes):
        return short(source.url, limit)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<array shape={tuple(source.shape)}>"
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    # Newlines inside multi-line base64 would break a one-line log message.
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > limit:
        # Keep the head (scheme, directory) and the tail (file name): for a long path the
        # file name is the part the user needs to see. A base64 tail is harmless noise.
        tail = limit // 3
        return text[: limit - tail] + "..." + text[-tail:]
    return text


# --------------------------------------------------------------------------- resolving sources

# A scheme needs at least two letters so that a Windows drive ("C://x") is not a scheme.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
# Standard and URL-safe base64 alphabets, with padding and line breaks.
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
_BASE64_MIN_LEN = 64  # shorter strings are far more likely to be (missing) file names


def _looks_like_base64(text: str) -> bool:
    return len(text) > _BASE64_MIN_LEN and _BASE64_RE.match(text) is not None


def _too_big(kind: str, source, limit: int) -> MediaError:
    return MediaError(f"{kind} payload from {short(source)} is larger than the {limit} byte limit (max_bytes)")


def _decode_base64(payload: str, source, policy: MediaPolicy, kind: str) -> bytes:
    payload = "".join(payload.split())  # base64 is often wrapped at 76 columns
    # Check the size before decoding so an oversized payload costs no extra memory.
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise _too_big(kind, source, policy.max_bytes)
    # Accept URL-safe base64 and missing padding; both show up in hand-written requests.
    payload = payload.replace("-", "+").replace("_", "/")
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"cannot decode {kind} from {short(source)}: invalid base64 ({e})") from None
    if len(data) > policy.max_bytes:
        raise _too_big(kind, source, policy.max_bytes)
    return data


def _read_data_url(url: str, policy: MediaPolicy, kind: str) -> bytes:
    # data:[<mediatype>][;base64],<payload>
    header, sep, payload = url[len("data:"):].partition(",")
    if not sep:
        raise MediaError(f"malformed {kind} data URL (no ',' after the header): {short(url)}")
    if header.split(";")[-1].strip().lower() == "base64":
        return _decode_base64(payload, url, policy, kind)
    import urllib.parse

    data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > policy.max_bytes:
        raise _too_big(kind, url, policy.max_bytes)
    return data


def _read_local_file(path: str, source, policy: MediaPolicy, kind: str) -> bytes:
    real = _checked_local_path(path, source, policy, kind)
    # No max_bytes cap here: local files are the operator's own data (e.g. long training audio).
    try:
        with open(real, "rb") as f:
            return f.read()
    except OSError as e:
        raise MediaError(f"cannot read {kind} file {short(path)}: {e.strerror or e}") from None


def local_media_path(source, policy: MediaPolicy, kind: str) -> str | None:
    """The checked real path when `source` names a local file (a path or file:// URL, as read_media_bytes
    resolves it), else None (a data URL, an http(s) URL, bare base64, bytes). Videos are opened by path so
    that a long local clip is streamed, not read whole."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        return None
    text = source.strip()
    if text[:5].lower() == "data:":
        return None
    match = _SCHEME_RE.match(text)
    if match:
        if match.group(1).lower() != "file":
            return None
        return _checked_local_path(_file_url_to_path(text), text, policy, kind)
    if _looks_like_base64(text):
        if not policy.allow_local:
            return None
        path = os.path.expanduser(text)
        if not os.path.isabs(path) and policy.base_dir is not None:
            path = os.path.join(policy.base_dir, path)
        # As in read_media_bytes: outside the allowed directory the filesystem is not asked at all.
        if "\0" in path or not _inside_allowed_dir(os.path.realpath(path), policy) or not os.path.isfile(path):
            return None
    return _checked_local_path(text, text, policy, kind)


def _checked_local_path(path: str, source, policy: MediaPolicy, kind: str) -> str:
    if not policy.allow_local:
        raise MediaError(
            f"local {kind} files are refused: {short(source)}; start the server with "
            f"--allowed_local_media_path DIR to allow reading files under DIR"
        )
    if "\0" in path:
        raise MediaError(f"local {kind} path {short(source)} holds a NUL character")
    path = os.path.expanduser(path)
    if not os.path.isabs(path) and policy.base_dir is not None:
        path = os.path.join(policy.base_dir, path)
    real = os.path.realpath(path)
    if not _inside_allowed_dir(real, policy):
        # Deliberately checked before existence, so outside paths give no "exists?" oracle.
        raise MediaError(
            f"local {kind} path {short(source)} is outside the directory allowed by --allowed_local_media_path"
        )
    if not os.path.isfile(real):
        # The path as the user wrote it: joined with base_dir it would show the server's own directory.
        shown = short(path) if policy.allowed_local_dir is None else short(source)
        raise MediaError(f"{kind} file not found: {shown}")
    return real


def _inside_allowed_dir(real_path: str, policy: MediaPolicy) -> bool:
    # realpath (by the caller) resolves symlinks and "..", so neither can be used to escape the allowed directory.
    if policy.allowed_local_dir is None:
        return True
    root = os.path.realpath(policy.allowed_local_dir)
    return os.path.commonpath([real_path, root]) == root


def _file_url_to_path(url: str) -> str:
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path)
    # "file://a.png" is a common mistake for a relative path: the file name lands in netloc.
    # Being lenient here costs nothing, since the policy checks still apply to the result.
    if parts.netloc and parts.netloc != "localhost":
        return urllib.parse.unquote(parts.netloc) + path
    return urllib.request.url2pathname(path)


def _fetch_url(url: str, policy: MediaPolicy, kind: str) -> bytes:
    if not policy.allow_urls:
        raise MediaError(f"fetching {kind} URLs is disabled on this server (--media_fetch false): {short(url)}")
    from swiftlite.media_fetch import FetchRefused, fetch, refused_message

    try:
        return fetch(url, policy, kind)
    except FetchRefused as reason:
        if policy.public_urls_only or policy.allowed_media_domains is not None:
            # A server: the reason goes to its log only, so the answer tells an open port from nothing.
            from swiftlite.media_fetch import logger

            logger.info("refused or failed fetch of %s: %s", short(url, 200), reason)
            raise MediaError(refused_message(short(url), kind, policy)) from None
        raise MediaError(f"cannot fetch {kind} URL {short(url)}: {reason}") from None


def read_media_bytes(source: str, policy: MediaPolicy, kind: str = "image") -> bytes:
    """Resolve a media source string to its raw bytes, applying ``policy``.

    Order: data URL, ``scheme://`` URL (file/http/https; anything else is refused),
    then bare base64 (a long base64-looking string that is not an existing file), then
    a local path.
    """
    if policy is None:
        policy = MediaPolicy()
    if isinstance(source, (bytes, bytearray)):
        if len(source) > policy.max_bytes:
            raise _too_big(kind, source, policy.max_bytes)
        return bytes(source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise MediaError(f"unsupported {kind} source type {type(source).__name__}: {short(source)}")
    text = source.strip()
    if not text:
        raise MediaError(f"empty {kind} source")

    if text[:5].lower() == "data:":
        return _read_data_url(text, policy, kind)

    match = _SCHEME_RE.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme in ("http", "https"):
            return _fetch_url(text, policy, kind)
        if scheme == "file":
            return _read_local_file(_file_url_to_path(text), text, policy, kind)
        raise MediaError(f"unsupported {kind} source scheme '{scheme}': {short(text)}")

    if _looks_like_base64(text):
        # When local files are refused there is no need to ask the filesystem first.
        if not policy.allow_local:
            return _decode_base64(text, text, policy, kind)
        path = os.path.expanduser(text)
        if not os.path.isabs(path) and policy.base_dir is not None:
            path = os.path.join(policy.base_dir, path)
        # Outside the allowed directory the filesystem is not asked at all: whether such a file exists must not
        # change the answer (base64 error or "outside" error would tell).
        if "\0" in path or not _inside_allowed_dir(os.path.realpath(path), policy) or not os.path.isfile(path):
            return _decode_base64(text, text, policy, kind)

    return _read_local_file(text, text, policy, kind)


# --------------------------------------------------------------------------- images


def load_image(source, policy: MediaPolicy | None = None) -> Image.Image:
    """Load any supported image source into a fully-loaded RGB PIL image."""
    if policy is None:
        policy = MediaPolicy()
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, dict):
            # Hugging Face `datasets` Image features arrive as {"bytes": ..., "path": ...}.
            data_or_path = source.get("bytes") or source.get("path")
            if data_or_path is None:
                raise MediaError(f"image dict needs a 'bytes' or 'path' entry, got keys {sorted(source)}")
            source = data_or_path
        data = read_media_bytes(source, policy, "image")
        try:
            with warnings.catch_warnings():
                if policy.max_image_pixels:  # our own cap is checked next, before any decoding: PIL need not warn
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))  # reads the header only
        except Exception as e:
            raise MediaError(f"cannot decode image from {short(source)}: {e}") from None
        check_image_size(image.size, source, policy)
        try:
            if policy.max_image_pixels and image.format == "JPEG":
                # JPEG decodes at 1/2, 1/4 or 1/8 scale for the asking: no need to build the full bitmap.
                width, height = image.size
                scale = math.sqrt(policy.max_image_pixels / 4 / (width * height))
                if scale < 1:
                    image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            image.load()  # decode now, so a truncated file fails here and not deep inside a processor
        except Exception as e:
            # Decoders for untrusted bytes raise all sorts of things (OSError, SyntaxError,
            # struct.error, DecompressionBombError...); every one of them means "bad image".
            raise MediaError(f"cannot decode image from {short(source)}: {e}") from None
    try:
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.load()
    except Exception as e:
        raise MediaError(f"cannot decode image from {short(source)}: {e}") from None
    return image


def check_image_size(size: tuple[int, int], source, policy: MediaPolicy) -> None:
    """Refuse, from the header alone, an image too large to decode safely or too thin for any processor."""
    width, height = size
    if width < 1 or height < 1:
        raise MediaError(f"image from {short(source)} is {width}x{height} pixels: it has no pixels")
    if policy.max_image_pixels and width * height > policy.max_image_pixels:
        raise MediaError(f"image from {short(source)} is {width}x{height} pixels, more than the "
                         f"{policy.max_image_pixels} this server decodes: send a smaller image")
    ratio = max(width, height) / min(width, height)
    if policy.max_aspect_ratio and ratio > policy.max_aspect_ratio:
        raise MediaError(f"image from {short(source)} is {width}x{height} pixels: its aspect ratio {ratio:.0f} is "
                         f"over {policy.max_aspect_ratio:g}, which the model's image processor cannot take")


def limit_image_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """Downscale (keeping aspect ratio) so that width * height <= max_pixels."""
    if not max_pixels or max_pixels <= 0:
        return image
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    new_width = max(1, int(width * scale))
    new_height = max(1, int(height * scale))
    # Float rounding or the max(1, ...) floor can overshoot by a hair; trim the longer side.
    if new_width * new_height > max_pixels:
        if new_width >= new_height:
            new_width = max(1, max_pixels // new_height)
        else:
            new_height = max(1, max_pixels // new_width)
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC)


def encode_file_base64(path) -> str:
    """Raw file bytes as a base64 string (what clients put into requests)."""
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def image_to_data_url(image_or_path, fmt: str = "PNG") -> str:
    """A local image path or PIL image as a ``data:image/...;base64,`` URL.

    Files are sent as-is (no re-encoding, so the server sees the exact bytes);
    PIL images are encoded with ``fmt``.
    """
    if isinstance(image_or_path, Image.Image):
        image = image_or_path
        if fmt.upper() in ("JPEG", "JPG") and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")  # JPEG has no alpha channel
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if fmt.upper() == "JPG" else fmt)
        mime = Image.MIME.get(fmt.upper(), f"image/{fmt.lower()}")
        return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    path = os.fspath(image_or_path)
    mime, _ = mimetypes.guess_type(path)
    if mime is None or not mime.startswith("image/"):
        mime = Image.MIME.get(fmt.upper(), f"image/{fmt.lower()}")
    return f"data:{mime};base64," + encode_file_base64(path)


# --------------------------------------------------------------------------- audio


def load_audio(source, policy: MediaPolicy | None = None, sampling_rate: int = 16000) -> np.ndarray:
    """Load any supported audio source as a mono float32 waveform at ``sampling_rate``.

    A numpy array is assumed to be already decoded at the right rate and is only cast
    to float32.
    """
    if policy is None:
        policy = MediaPolicy()
    if isinstance(source, np.ndarray):
        return source.astype(np.float32, copy=False)
    from swiftlite.audio import decode_audio, resample_audio

    data = read_media_bytes(source, policy, "audio")
    samples, rate = decode_audio(data, short(source))
    return resample_audio(samples, rate, sampling_rate)

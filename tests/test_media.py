"""Tests for swiftlite.media: every source kind, the server policy, and the error messages."""

import base64
import http.server
import io
import os
import socket
import threading
import time
import wave

import numpy as np
import pytest
from PIL import Image

from swiftlite.media import (
    MediaError,
    MediaPolicy,
    encode_file_base64,
    image_to_data_url,
    limit_image_pixels,
    load_audio,
    load_image,
    read_media_bytes,
    short,
)
from swiftlite.prompt_parts import content_parts_to_text, extract_media_tags


def png_bytes(size=(7, 5), color=(255, 0, 0), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def png_path(tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    return path


def wav_bytes(samples: np.ndarray, rate: int, width: int = 2) -> bytes:
    """samples: int array shaped (frames, channels) already in the width's range."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(samples.shape[1])
        wav.setsampwidth(width)
        wav.setframerate(rate)
        dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
        wav.writeframes(samples.astype(dtype).tobytes())
    return buffer.getvalue()


def assert_red_rgb(image, size=(7, 5)):
    assert image.mode == "RGB"
    assert image.size == size
    assert image.getpixel((0, 0)) == (255, 0, 0)


# --------------------------------------------------------------------------- image sources


def test_load_image_from_path_and_pathlike(png_path):
    assert_red_rgb(load_image(str(png_path)))
    assert_red_rgb(load_image(png_path))


def test_load_image_relative_to_base_dir(png_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # so the relative name does NOT exist from the cwd
    assert_red_rgb(load_image("red.png", MediaPolicy(base_dir=str(tmp_path))))
    with pytest.raises(MediaError, match="image file not found"):
        load_image("red.png")


def test_load_image_from_file_url(png_path):
    assert_red_rgb(load_image(png_path.as_uri()))


def test_load_image_from_data_url_and_bare_base64(png_path):
    encoded = encode_file_base64(png_path)
    assert base64.b64decode(encoded) == png_path.read_bytes()
    assert_red_rgb(load_image(f"data:image/png;base64,{encoded}"))
    assert_red_rgb(load_image(encoded))
    # Wrapped at 76 columns, as many encoders do.
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert_red_rgb(load_image(wrapped))


def test_load_image_from_bytes_and_pil_converts_to_rgb():
    assert_red_rgb(load_image(png_bytes()))
    rgba = Image.new("RGBA", (7, 5), (255, 0, 0, 128))
    assert_red_rgb(load_image(rgba))
    gray = load_image(png_bytes(mode="L", color=200))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (200, 200, 200)


def test_image_to_data_url_round_trips(png_path):
    url = image_to_data_url(png_path)
    assert url.startswith("data:image/png;base64,")
    assert_red_rgb(load_image(url))
    url = image_to_data_url(Image.new("RGBA", (7, 5), (255, 0, 0, 255)), fmt="JPEG")
    assert url.startswith("data:image/jpeg;base64,")
    assert load_image(url).size == (7, 5)


# --------------------------------------------------------------------------- image errors


def test_missing_file_message(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(MediaError, match=r"image file not found: .*nope\.png"):
        load_image(str(missing))


def test_undecodable_image_message(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(MediaError, match=r"cannot decode image from .*garbage\.png"):
        load_image(str(bad))
    with pytest.raises(MediaError, match="cannot decode image from <6 bytes>"):
        load_image(b"abcdef")


def test_truncated_image_fails_at_load(tmp_path):
    data = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(data, format="JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data.getvalue()[:200])
    with pytest.raises(MediaError, match="cannot decode image"):
        load_image(str(truncated))


@pytest.mark.parametrize("url, scheme", [("ftp://host/a.png", "ftp"), ("s3://bucket/a.png", "s3")])
def test_unsupported_scheme(url, scheme):
    with pytest.raises(MediaError, match=f"unsupported image source scheme '{scheme}'"):
        load_image(url)


def test_long_base64_payload_is_shortened_in_messages():
    payload = base64.b64encode(os.urandom(3000)).decode()
    with pytest.raises(MediaError) as excinfo:
        load_image(payload)
    message = str(excinfo.value)
    assert message.startswith("cannot decode image from ")
    assert payload[:40] in message and payload not in message
    assert len(message) < 200
    assert short("x" * 100) == "x" * 40 + "..." + "x" * 20
    assert short("/very/long/directory/" * 5 + "photo.png").endswith("/directory/photo.png")


def test_oversized_base64_refused():
    payload = base64.b64encode(png_bytes(size=(64, 64))).decode()
    with pytest.raises(MediaError, match="larger than the 50 byte limit"):
        load_image(f"data:image/png;base64,{payload}", MediaPolicy(max_bytes=50))


def test_local_files_refused_by_policy(png_path):
    policy = MediaPolicy(allow_local=False)
    with pytest.raises(MediaError, match="local image files are refused.*--allowed_local_media_path"):
        load_image(str(png_path), policy)
    with pytest.raises(MediaError, match="--allowed_local_media_path"):
        load_image(png_path.as_uri(), policy)
    # Inline data is still fine when local files are refused.
    assert_red_rgb(load_image(encode_file_base64(png_path), policy))


def test_allowed_local_dir(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.png").write_bytes(png_bytes())
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    policy = MediaPolicy(allowed_local_dir=str(allowed))

    assert_red_rgb(load_image(str(allowed / "ok.png"), policy))
    # Relative paths resolved against base_dir are checked too.
    assert_red_rgb(load_image("ok.png", MediaPolicy(allowed_local_dir=str(allowed), base_dir=str(allowed))))

    with pytest.raises(MediaError, match=r"secret\.png is outside .*--allowed_local_media_path"):
        load_image(str(allowed / ".." / "secret.png"), policy)
    with pytest.raises(MediaError, match="outside"):
        load_image(str(outside), policy)
    # A sibling whose name merely starts with the allowed dir's name is not inside it.
    sibling = tmp_path / "allowed_evil"
    sibling.mkdir()
    (sibling / "x.png").write_bytes(png_bytes())
    with pytest.raises(MediaError, match="outside"):
        load_image(str(sibling / "x.png"), policy)


def test_symlink_cannot_escape_allowed_dir(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    link = allowed / "link.png"
    try:
        link.symlink_to(outside)
    except OSError:
        pytest.skip("symlinks not supported here")
    with pytest.raises(MediaError, match=r"link\.png is outside .*--allowed_local_media_path"):
        load_image(str(link), MediaPolicy(allowed_local_dir=str(allowed)))


# --------------------------------------------------------------------------- URLs (real local server)


class _Handler(http.server.BaseHTTPRequestHandler):
    png = png_bytes()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, body: bytes, content_length=True):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if content_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        try:
            if self.path == "/red.png":
                self._send(self.png)
            elif self.path == "/slow.png":
                time.sleep(3)  # far beyond the 0.5 s timeout used by the test
                self._send(self.png)
            elif self.path == "/big.png":
                self._send(b"\0" * 5000)
            elif self.path == "/big-stream.png":
                # No Content-Length: the client must stop reading on its own once over the cap.
                self.close_connection = True
                self._send(b"\0" * 50000, content_length=False)
            else:
                self.send_error(404, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout / size cap); that is the point of those tests


@pytest.fixture(scope="module")
def server_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_load_image_from_url(server_url):
    assert_red_rgb(load_image(f"{server_url}/red.png"))


def test_url_404(server_url):
    url = f"{server_url}/missing.png"
    with pytest.raises(MediaError) as excinfo:
        load_image(url)
    assert "404" in str(excinfo.value) and url in str(excinfo.value)


def test_url_timeout(server_url):
    start = time.monotonic()
    with pytest.raises(MediaError, match=r"cannot fetch image URL http://127\.0\.0\.1:\d+/slow\.png: timed out"):
        load_image(f"{server_url}/slow.png", MediaPolicy(fetch_timeout=0.5))
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("path", ["/big.png", "/big-stream.png"])
def test_url_size_limit(server_url, path):
    with pytest.raises(MediaError, match="larger than the 1000 byte limit"):
        read_media_bytes(f"{server_url}{path}", MediaPolicy(max_bytes=1000))


def test_url_connection_refused():
    with socket.socket() as sock:  # grab a free port, then close it so nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.png"
    with pytest.raises(MediaError, match=rf"cannot fetch image URL {url}: .*refused"):
        load_image(url, MediaPolicy(fetch_timeout=2))


def test_urls_refused_by_policy(server_url):
    with pytest.raises(MediaError, match=r"fetching image URLs is disabled.*--media_fetch false"):
        load_image(f"{server_url}/red.png", MediaPolicy(allow_urls=False))


# --------------------------------------------------------------------------- prompt parts -> media


def test_extract_media_tags_multiline_base64(png_path):
    encoded = encode_file_base64(png_path)
    wrapped = "\n".join(encoded[i : i + 40] for i in range(0, len(encoded), 40))
    new_text, images, _ = extract_media_tags(f"look:<img>\n{wrapped}\n</img>?")
    assert new_text == "look:<image>?"
    assert images == [wrapped]
    assert_red_rgb(load_image(images[0]))


# --------------------------------------------------------------------------- audio


def test_load_audio_wav_stereo_resampled(tmp_path):
    frames = 800
    left = (np.sin(np.linspace(0, 20 * np.pi, frames)) * 30000).astype(np.int16)
    right = np.full(frames, -32768, dtype=np.int16)
    path = tmp_path / "stereo.wav"
    path.write_bytes(wav_bytes(np.stack([left, right], axis=1), rate=8000))

    audio = load_audio(str(path), sampling_rate=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 2 * frames) <= 1
    # The resampler's filter rings a little at the edges; in the middle the level is the channels' mean.
    assert audio[frames] == pytest.approx(-0.5 + left[frames // 2] / 65536, abs=0.05)

    same_rate = load_audio(str(path), sampling_rate=8000)
    assert len(same_rate) == frames
    # Mono = mean of channels: the first frame is (0 + -1) / 2.
    assert same_rate[0] == pytest.approx(-0.5, abs=1e-3)
    assert same_rate.min() >= -1.0 and same_rate.max() <= 1.0


def test_load_audio_8bit_and_32bit_and_data_url():
    eight = wav_bytes(np.array([[0], [128], [255]]), rate=16000, width=1)
    np.testing.assert_allclose(load_audio(eight), [-1.0, 0.0, 127 / 128], atol=1e-6)
    thirty_two = wav_bytes(np.array([[-(2**31)], [2**30]]), rate=16000, width=4)
    np.testing.assert_allclose(load_audio(thirty_two), [-1.0, 0.5], atol=1e-6)

    url = "data:audio/wav;base64," + base64.b64encode(eight).decode()
    np.testing.assert_allclose(load_audio(url), [-1.0, 0.0, 127 / 128], atol=1e-6)
    # And through content parts, exactly as the server would do it.
    _, _, audios = content_parts_to_text(
        [{"type": "input_audio", "input_audio": {"data": base64.b64encode(eight).decode(), "format": "wav"}}]
    )
    assert len(load_audio(audios[0])) == 3


def test_load_audio_passes_arrays_through():
    waveform = np.zeros(10, dtype=np.float64)
    result = load_audio(waveform)
    assert result.dtype == np.float32 and result.shape == (10,)


def test_load_audio_garbage(tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"definitely not audio" * 20)
    with pytest.raises(MediaError, match=r"cannot decode audio from .*noise\.wav"):
        load_audio(str(bad))
    with pytest.raises(MediaError, match="audio file not found"):
        load_audio(str(tmp_path / "missing.wav"))


# --------------------------------------------------------------------------- pixels


def test_limit_image_pixels():
    image = Image.new("RGB", (400, 100))
    assert limit_image_pixels(image, None) is image
    assert limit_image_pixels(image, 40000) is image
    smaller = limit_image_pixels(image, 10000)
    assert smaller.width * smaller.height <= 10000
    assert smaller.size == (200, 50)
    odd = limit_image_pixels(Image.new("RGB", (1000, 3)), 7)
    assert odd.width * odd.height <= 7 and odd.width >= 1 and odd.height >= 1

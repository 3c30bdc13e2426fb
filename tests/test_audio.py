"""Audio decoding (soundfile/libsndfile) and resampling (soxr) behind media.load_audio.

Clips are written in the test with soundfile in each container seed 002 (Xinference) and users send: WAV,
FLAC, OGG/Vorbis and MP3. Each must decode to the tone it holds; resampling must not alias.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from swiftlite.media import MediaError, load_audio

RATE = 16000


def tone(frequency: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    times = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * times)).astype(np.float32)


def encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", None), ("OGG", "VORBIS"),
                                         ("MP3", "MPEG_LAYER_III")])
def test_every_container_decodes_to_its_tone(fmt, subtype, tmp_path):
    path = tmp_path / f"clip.{fmt.lower()}"
    path.write_bytes(encoded(tone(440, 44100), 44100, fmt, subtype))
    audio = load_audio(str(path), sampling_rate=RATE)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # MP3 encoders pad the start with up to a frame or two (~50 ms); the others keep the length exactly.
    assert abs(len(audio) - RATE) <= (0.06 * RATE if fmt == "MP3" else 1)
    assert dominant_frequency(audio, RATE) == pytest.approx(440, abs=3)
    assert 0.3 < float(np.abs(audio).max()) < 0.7


def test_stereo_is_averaged_to_mono():
    left, right = tone(440, RATE), np.full(RATE, -0.5, dtype=np.float32)
    audio = load_audio(encoded(np.stack([left, right], axis=1), RATE, "FLAC"), sampling_rate=RATE)
    np.testing.assert_allclose(audio, (left - 0.5) / 2, atol=1e-4)


def test_resampling_does_not_alias():
    """A 12 kHz tone at 48 kHz has no place below the 8 kHz Nyquist limit of 16 kHz audio: it must vanish.

    Linear interpolation (the resampler this replaced) folds it down to a loud 4 kHz tone instead."""
    audio = load_audio(encoded(tone(12000, 48000), 48000, "WAV", "FLOAT"), sampling_rate=RATE)
    assert len(audio) == RATE
    assert float(np.sqrt(np.mean(audio[200:-200] ** 2))) < 0.005  # the input's RMS is 0.35
    kept = load_audio(encoded(tone(3000, 48000), 48000, "WAV", "FLOAT"), sampling_rate=RATE)
    assert float(np.sqrt(np.mean(kept[200:-200] ** 2))) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    assert dominant_frequency(kept, RATE) == pytest.approx(3000, abs=3)


def test_not_audio_is_one_clear_error(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_bytes(b"these are not the sounds you are looking for" * 30)
    with pytest.raises(MediaError, match=r"^cannot decode audio from .*notes\.mp3: ") as caught:
        load_audio(str(path))
    assert "\n" not in str(caught.value)

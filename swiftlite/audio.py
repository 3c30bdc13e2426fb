"""Decoding audio bytes and resampling them to the rate a model's feature extractor expects.

Decoding is libsndfile's (the soundfile package, whose wheels bundle libsndfile >= 1.1): WAV in every
sample format, FLAC, OGG/Vorbis, Opus, MP3 and the rest of what `soundfile.available_formats()` lists.
Resampling is soxr's high-quality filter, which is what the official Qwen2-Audio pipeline gets from
`librosa.load(..., sr=16000)` (librosa's default `res_type` is `soxr_hq`): a band-limited resampler, so
44.1/48 kHz input does not alias into the 0-8 kHz band the way linear interpolation does.

Both packages are imported inside the functions, so `mm --help` and image-only runs never load them.
"""

from __future__ import annotations

import io

import numpy as np


def decode_audio(data: bytes, describe: str) -> tuple[np.ndarray, int]:
    """Bytes of an audio file -> (mono float32 samples in [-1, 1], sample rate).

    `describe` names the source in the error (MediaError) when the bytes are not audio libsndfile reads.
    """
    import soundfile

    from swiftlite.media import MediaError

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile's errors on untrusted bytes all mean "bad audio"
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise MediaError(f"cannot decode audio from {describe}: {reason}") from None
    if rate <= 0:
        raise MediaError(f"cannot decode audio from {describe}: invalid sample rate {rate}")
    # Mono as the feature extractors expect it: the mean of the channels.
    return samples.mean(axis=1).astype(np.float32), int(rate)


def resample_audio(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample mono float32 `samples` from `rate` to `target` Hz (soxr, high quality)."""
    if rate == target or len(samples) == 0:
        return samples
    import soxr

    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)

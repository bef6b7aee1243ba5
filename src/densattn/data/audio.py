"""Audio decoding: any file libsndfile reads (wav, flac, ogg/vorbis, mp3) to mono float32 at 16 kHz.

Resampling uses librosa with ``res_type="soxr_hq"`` (libsoxr, fast and offline; about 1 ms for 5 s of audio on
one core once warm).
"""

from __future__ import annotations

import os

import numpy as np

TARGET_SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")


def resample(wave: np.ndarray, orig_sample_rate: int, target_sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Resample a mono ``(T,)`` waveform from ``orig_sample_rate`` to ``target_sample_rate`` (float32 out).

    Example:
        >>> resample(np.zeros(8000, dtype=np.float32), 8000).shape
        (16000,)
    """
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sample_rate == target_sample_rate:
        return wave
    import librosa

    out = librosa.resample(wave, orig_sr=orig_sample_rate, target_sr=target_sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(out, dtype=np.float32)


def read_audio(path: str | os.PathLike, *, target_sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform ``(T,)`` at ``target_sample_rate``.

    Samples are nominally in [-1, 1] (lossy codecs such as Vorbis may overshoot a little; nothing is clipped).
    Channels are averaged. Raises ``ValueError`` naming the file when it is missing, empty or undecodable.

    Example:
        >>> import tempfile, soundfile as sf
        >>> f = tempfile.NamedTemporaryFile(suffix=".wav", delete=False).name
        >>> sf.write(f, np.zeros(800, dtype=np.float32), 8000)
        >>> read_audio(f).shape
        (1600,)
    """
    import soundfile as sf

    try:
        wave, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError/OSError depending on the failure
        raise ValueError(
            f"cannot decode audio file {os.fspath(path)!r} ({type(err).__name__}: {err}); "
            f"replace or delete the file (readable formats: {', '.join(AUDIO_EXTENSIONS)})."
        ) from err
    if wave.shape[0] == 0:
        raise ValueError(f"audio file {os.fspath(path)!r} holds no samples; replace or delete it.")
    mono = wave.mean(axis=1)  # (T,)
    return resample(mono, int(rate), target_sample_rate)


def check_audio_file(path: str | os.PathLike) -> None:
    """Read only the header of ``path``; raise ``ValueError`` naming the file if it is not readable audio."""
    import soundfile as sf

    try:
        info = sf.info(os.fspath(path))
    except Exception as err:
        raise ValueError(
            f"unreadable audio file {os.fspath(path)!r} ({type(err).__name__}: {err}); "
            f"replace or delete the file (readable formats: {', '.join(AUDIO_EXTENSIONS)})."
        ) from err
    if info.frames == 0:
        raise ValueError(f"audio file {os.fspath(path)!r} holds no samples; replace or delete it.")

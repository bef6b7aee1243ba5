"""Input shifts applied to raw examples *before* the frozen encoder, for robustness tests.

The paper claims DAAM is robust "especially with highly non-stationary data" (arXiv
`2401.11143 <https://arxiv.org/abs/2401.11143>`_). These shifts let that be measured on real inputs: each one maps a
decoded example (waveform, image or text) to a perturbed one, seeded per example so a shifted dataset is
reproducible and its features can be cached.

| modality | name | level | what it does |
|---|---|---|---|
| audio | ``gain`` | dB | ``y = x * 10^(level/20)`` (no clipping) |
| audio | ``noise`` | SNR dB | white Gaussian noise with ``10 log10(P_x / P_n) = level`` |
| audio | ``speed`` | factor | resampled to ``T / level`` samples: faster *and* higher (tape speed) |
| audio | ``pitch`` | semitones | ``librosa.effects.pitch_shift`` (duration kept) |
| image | ``brightness`` | factor | ``y = clip(level * x)`` (PIL ``ImageEnhance.Brightness``) |
| image | ``contrast`` | factor | ``y = clip(m + level * (x - m))``, ``m`` the image's mean grey (PIL ``Contrast``) |
| image | ``blur`` | sigma px | Gaussian blur over height and width |
| image | ``noise`` | std (0–255) | additive Gaussian noise, clipped |
| text | ``casing`` | fraction | each word upper-cased with that probability |
| text | ``typos`` | rate | each letter edited (swap, delete, replace or insert) with that probability |
| text | ``dropout`` | rate | each word dropped with that probability (one word always kept) |

Example:
    >>> shift = parse_shifts(["noise=10"], "audio")[0]
    >>> wave = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    >>> noisy = shift.apply(wave, seed=0, key="clip-1")
    >>> round(float(10 * np.log10((wave**2).mean() / ((noisy - wave) ** 2).mean())))
    10
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from densattn.data.dataset import LabeledDataset

__all__ = ["Shift", "SHIFTS", "parse_shifts", "ShiftedDataset", "shifted_dataset"]


# ---------------------------------------------------------------- audio (float32 mono waveform at sample_rate)
def _gain(x: np.ndarray, level: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    return (x * 10.0 ** (level / 20.0)).astype(np.float32)


def _audio_noise(x: np.ndarray, level: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    power = float(np.mean(x.astype(np.float64) ** 2))
    if power == 0.0:
        return x.astype(np.float32)
    noise = rng.standard_normal(x.shape)
    noise *= np.sqrt(power / 10.0 ** (level / 10.0) / np.mean(noise**2))  # exact SNR for this draw
    return (x + noise).astype(np.float32)


def _speed(x: np.ndarray, level: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    import librosa

    return librosa.resample(x.astype(np.float32), orig_sr=sample_rate, target_sr=sample_rate / level).astype(np.float32)


def _pitch(x: np.ndarray, level: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    import librosa

    return librosa.effects.pitch_shift(x.astype(np.float32), sr=sample_rate, n_steps=level).astype(np.float32)


# ---------------------------------------------------------------- image (uint8 RGB (H, W, 3))
def _to_uint8(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _brightness(x: np.ndarray, level: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    return _to_uint8(x.astype(np.float64) * level)


def _contrast(x: np.ndarray, level: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    grey = x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H, W) luma
    m = grey.mean()
    return _to_uint8(m + level * (x.astype(np.float64) - m))


def _blur(x: np.ndarray, level: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return _to_uint8(gaussian_filter(x.astype(np.float64), sigma=(level, level, 0), mode="nearest"))


def _image_noise(x: np.ndarray, level: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    return _to_uint8(x.astype(np.float64) + rng.normal(0.0, level, size=x.shape))


# ---------------------------------------------------------------- text
def _casing(x: str, level: float, rng: np.random.Generator, sample_rate: int) -> str:
    words = x.split(" ")
    return " ".join(w.upper() if rng.random() < level else w for w in words)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _typos(x: str, level: float, rng: np.random.Generator, sample_rate: int) -> str:
    chars = list(x)
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < level:
            kind = int(rng.integers(4))
            if kind == 0 and i + 1 < len(chars):  # swap with the next character
                out += [chars[i + 1], c]
                i += 2
                continue
            if kind == 1:  # delete
                i += 1
                continue
            letter = _LETTERS[int(rng.integers(26))]
            out += [letter] if kind == 2 else [c, letter]  # replace / insert after
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _word_dropout(x: str, level: float, rng: np.random.Generator, sample_rate: int) -> str:
    words = x.split()
    if not words:
        return x
    kept = [w for w in words if rng.random() >= level]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


@dataclass(frozen=True)
class ShiftSpec:
    modality: str
    function: Callable[..., Any]
    default_levels: tuple[float, ...]
    clean_level: float
    unit: str


SHIFTS: dict[tuple[str, str], ShiftSpec] = {
    ("audio", "gain"): ShiftSpec("audio", _gain, (-20.0, -10.0, 10.0), 0.0, "dB"),
    ("audio", "noise"): ShiftSpec("audio", _audio_noise, (20.0, 10.0, 0.0), float("inf"), "SNR dB"),
    ("audio", "speed"): ShiftSpec("audio", _speed, (0.8, 0.9, 1.1, 1.2), 1.0, "x"),
    ("audio", "pitch"): ShiftSpec("audio", _pitch, (-2.0, 2.0, 4.0), 0.0, "semitones"),
    ("image", "brightness"): ShiftSpec("image", _brightness, (0.4, 0.7, 1.5), 1.0, "x"),
    ("image", "contrast"): ShiftSpec("image", _contrast, (0.3, 0.6, 1.5), 1.0, "x"),
    ("image", "blur"): ShiftSpec("image", _blur, (0.5, 1.0, 2.0), 0.0, "sigma px"),
    ("image", "noise"): ShiftSpec("image", _image_noise, (10.0, 25.0, 50.0), 0.0, "std"),
    ("text", "casing"): ShiftSpec("text", _casing, (0.25, 0.5, 1.0), 0.0, "fraction"),
    ("text", "typos"): ShiftSpec("text", _typos, (0.02, 0.05, 0.1), 0.0, "rate"),
    ("text", "dropout"): ShiftSpec("text", _word_dropout, (0.1, 0.2, 0.4), 0.0, "rate"),
}


@dataclass(frozen=True)
class Shift:
    """One shift at one level, e.g. ``Shift("audio", "noise", 10.0)``; :meth:`apply` is seeded per example.

    Example:
        >>> gain = Shift("audio", "gain", -20.0)  # y = x * 10^(-20/20)
        >>> gain.label, gain.spec.unit, gain.apply(np.array([0.5, -1.0], dtype=np.float32)).tolist()
        ('gain=-20', 'dB', [0.05000000074505806, -0.10000000149011612])
        >>> blur = Shift("image", "blur", 1.0)
        >>> image = np.zeros((5, 5, 3), dtype=np.uint8)
        >>> image[2, 2] = 255
        >>> out = blur.apply(image)
        >>> out.dtype, int(out[2, 2, 0]) < 255, int(out[2, 1, 0]) > 0  # the bright pixel spreads
        (dtype('uint8'), True, True)
        >>> typos = Shift("text", "typos", 0.3)
        >>> typos.apply("density adaptive attention", key="a") == typos.apply("density adaptive attention", key="a")
        True
        >>> Shift("text", "blur", 1.0)
        Traceback (most recent call last):
        ...
        ValueError: unknown text shift 'blur'; choose one of ['casing', 'dropout', 'typos']
    """

    modality: str
    name: str
    level: float

    def __post_init__(self) -> None:
        if (self.modality, self.name) not in SHIFTS:
            known = sorted(n for m, n in SHIFTS if m == self.modality)
            raise ValueError(f"unknown {self.modality} shift {self.name!r}; choose one of {known}")

    @property
    def spec(self) -> ShiftSpec:
        return SHIFTS[(self.modality, self.name)]

    @property
    def label(self) -> str:
        return f"{self.name}={self.level:g}"

    def apply(self, x: Any, *, seed: int = 0, key: str = "", sample_rate: int = 16000) -> Any:
        """The shifted example; the random draws depend only on ``(seed, shift, level, key)``."""
        parts = [
            seed,
            zlib.crc32(self.name.encode()),
            zlib.crc32(repr(float(self.level)).encode()),
            zlib.crc32(key.encode()),
        ]
        rng = np.random.default_rng(parts)
        return self.spec.function(x, float(self.level), rng, sample_rate)


def parse_shifts(specs: Sequence[str], modality: str) -> list[Shift]:
    """``["noise=20,10", "gain"]`` -> shifts; a bare name takes its default levels.

    Raises:
        ValueError: unknown shift for the modality, or a level that is not a number.

    Example:
        >>> [s.label for s in parse_shifts(["noise=20,10", "gain"], "audio")]
        ['noise=20', 'noise=10', 'gain=-20', 'gain=-10', 'gain=10']
        >>> parse_shifts(["noise=loud"], "audio")
        Traceback (most recent call last):
        ...
        ValueError: --shift 'noise=loud': levels must be numbers, e.g. noise=10 or noise=20,10
    """
    shifts = []
    for spec in specs:
        name, _, levels = spec.partition("=")
        key = (modality, name.strip())
        if key not in SHIFTS:
            known = sorted(n for m, n in SHIFTS if m == modality)
            raise ValueError(f"--shift {spec!r}: no {modality} shift named {name!r}; choose one of {known}")
        if levels:
            try:
                values = [float(v) for v in levels.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"--shift {spec!r}: levels must be numbers, e.g. {name}=10 or {name}=20,10") from None
        else:
            values = list(SHIFTS[key].default_levels)
        if name == "speed" and any(v <= 0 for v in values):
            raise ValueError(f"--shift {spec!r}: speed factors must be > 0")
        if name in ("blur", "noise") and modality == "image" and any(v < 0 for v in values):
            raise ValueError(f"--shift {spec!r}: {name} levels must be >= 0")
        shifts += [Shift(modality, name.strip(), v) for v in values]
    return shifts


@dataclass
class ShiftedDataset(LabeledDataset):
    """A :class:`LabeledDataset` whose :meth:`load` applies ``shift``; its fingerprint includes the shift.

    So cached features of a shifted dataset never collide with the clean ones (or with another level or seed).

    Example:
        >>> base = dict(name="toy", modality="text", classes=["a", "b"], items=["one two three", "four"], labels=[0, 1])
        >>> clean = ShiftedDataset(**base)
        >>> upper = ShiftedDataset(**base, shift=Shift("text", "casing", 1.0))
        >>> clean.load(0), upper.load(0)
        ('one two three', 'ONE TWO THREE')
        >>> reseeded = ShiftedDataset(**base, shift=Shift("text", "casing", 1.0), shift_seed=1)
        >>> len({clean.fingerprint(), upper.fingerprint(), reseeded.fingerprint()})  # three cache keys
        3
    """

    shift: Shift | None = None
    shift_seed: int = 0
    base_fingerprint: str = field(default="", repr=False)

    def load(self, i: int):
        x = super().load(i)
        if self.shift is None:
            return x
        return self.shift.apply(x, seed=self.shift_seed, key=self.ids[i], sample_rate=self.sample_rate or 16000)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(super().fingerprint().encode())
        if self.shift is not None:
            digest.update(f"|shift:{self.shift.modality}:{self.shift.name}:{float(self.shift.level)!r}".encode())
            digest.update(f"|seed:{self.shift_seed}".encode())
        return digest.hexdigest()


def shifted_dataset(dataset: LabeledDataset, shift: Shift, *, seed: int = 0) -> ShiftedDataset:
    """``dataset`` with ``shift`` applied at load time (seeded per example id).

    Raises:
        ValueError: the shift is for another modality than the dataset.

    Example:
        >>> data = LabeledDataset("toy", "text", ["a", "b"], ["the cat sat down", "a dog ran off"], [0, 1])
        >>> shifted = shifted_dataset(data, parse_shifts(["dropout=0.5"], "text")[0], seed=3)
        >>> shifted.name, len(shifted), shifted.labels
        ('toy|dropout=0.5', 2, [0, 1])
        >>> kept = shifted.load(0).split()
        >>> 1 <= len(kept) <= 4 and all(w in "the cat sat down".split() for w in kept), kept == shifted.load(0).split()
        (True, True)
        >>> shifted_dataset(data, Shift("audio", "gain", 10.0))
        Traceback (most recent call last):
        ...
        ValueError: shift gain=10 is for audio but dataset 'toy' is text
    """
    if shift.modality != dataset.modality:
        raise ValueError(
            f"shift {shift.label} is for {shift.modality} but dataset {dataset.name!r} is {dataset.modality}"
        )
    return ShiftedDataset(
        name=f"{dataset.name}|{shift.label}",
        modality=dataset.modality,
        classes=list(dataset.classes),
        items=list(dataset.items),
        labels=list(dataset.labels),
        groups=None if dataset.groups is None else list(dataset.groups),
        ids=list(dataset.ids),
        sample_rate=dataset.sample_rate,
        shift=shift,
        shift_seed=seed,
    )

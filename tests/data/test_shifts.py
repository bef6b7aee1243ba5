"""Input shifts (densattn.shifts): each changes its input exactly as specified, seeded per example."""

from __future__ import annotations

import numpy as np
import pytest

from densattn.data.dataset import LabeledDataset
from densattn.data.shifts import SHIFTS, Shift, parse_shifts, shifted_dataset

SR = 16000


def _speech_like(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (envelope * np.sin(2 * np.pi * 220 * t) * 0.3 + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def _peak_hz(x):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / SR)[int(np.argmax(spectrum))]


@pytest.mark.parametrize("db", [-20.0, -6.0, 10.0])
def test_gain_scales_the_waveform(db):
    x = _speech_like()
    y = Shift("audio", "gain", db).apply(x)
    np.testing.assert_allclose(y, x * 10 ** (db / 20), rtol=1e-6)


@pytest.mark.parametrize("snr", [20.0, 10.0, 0.0, -5.0])
def test_noise_snr_measured_back(snr):
    x = _speech_like()
    y = Shift("audio", "noise", snr).apply(x, seed=3, key="clip")
    noise = y.astype(np.float64) - x
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(measured - snr) < 0.5
    assert abs(noise.mean()) < 0.05 * noise.std()  # zero-mean white noise


def test_noise_is_seeded_per_example():
    x = _speech_like()
    shift = Shift("audio", "noise", 10.0)
    a, b = shift.apply(x, seed=0, key="a"), shift.apply(x, seed=0, key="a")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, shift.apply(x, seed=0, key="b"))
    assert not np.array_equal(a, shift.apply(x, seed=1, key="a"))
    silent = np.zeros(100, dtype=np.float32)
    np.testing.assert_array_equal(shift.apply(silent), silent)  # no signal power: nothing to scale noise to


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_speed_changes_duration_and_frequency(factor):
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 400 * t).astype(np.float32)
    y = Shift("audio", "speed", factor).apply(x, sample_rate=SR)
    assert abs(len(y) - len(x) / factor) <= 2
    assert _peak_hz(y) == pytest.approx(400 * factor, rel=0.01)


def test_pitch_keeps_duration_and_moves_frequency():
    t = np.arange(SR // 2) / SR
    x = np.sin(2 * np.pi * 300 * t).astype(np.float32)
    y = Shift("audio", "pitch", 12.0).apply(x, sample_rate=SR)  # one octave up
    assert len(y) == len(x)
    assert _peak_hz(y[1000:-1000]) == pytest.approx(600, rel=0.03)


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, size=(16, 20, 3)).astype(np.uint8)


def test_brightness_multiplies_and_clips():
    x = _image()
    for f in (0.5, 1.5):
        y = Shift("image", "brightness", f).apply(x)
        expected = np.clip(np.rint(x.astype(np.float64) * f), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(y, expected)
    assert Shift("image", "brightness", 1.5).apply(x).max() == 255  # 200 * 1.5 clips


def test_contrast_scales_deviation_from_the_mean_grey():
    x = _image()
    y = Shift("image", "contrast", 0.5).apply(x).astype(np.float64)
    grey = (x.astype(np.float64) * np.array([0.299, 0.587, 0.114])).sum(-1).mean()
    np.testing.assert_allclose(y, grey + 0.5 * (x - grey), atol=0.5 + 1e-9)
    assert y.std() == pytest.approx(0.5 * x.std(), rel=0.02)


def test_blur_smooths_and_keeps_constant_images():
    x = _image()
    y = Shift("image", "blur", 1.0).apply(x)
    assert y.astype(np.float64).std() < 0.7 * x.astype(np.float64).std()
    assert abs(y.astype(np.float64).mean() - x.astype(np.float64).mean()) < 1.0
    flat = np.full((8, 8, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(Shift("image", "blur", 2.0).apply(flat), flat)
    np.testing.assert_array_equal(Shift("image", "blur", 0.0).apply(x), x)


def test_image_noise_has_the_given_std():
    x = np.full((64, 64, 3), 128, dtype=np.uint8)
    y = Shift("image", "noise", 20.0).apply(x, key="img").astype(np.float64)
    assert (y - 128).std() == pytest.approx(20.0, rel=0.05)
    assert y.dtype == np.float64 and Shift("image", "noise", 20.0).apply(x).dtype == np.uint8


TEXT = "The quick brown fox, aged 7, jumps over the lazy dog again and again!"


def test_casing():
    assert Shift("text", "casing", 1.0).apply(TEXT) == TEXT.upper()
    assert Shift("text", "casing", 0.0).apply(TEXT) == TEXT
    half = Shift("text", "casing", 0.5).apply(TEXT, key="x")
    assert half.lower() == TEXT.lower() and half != TEXT and half != TEXT.upper()


def test_typos_edit_letters_only():
    assert Shift("text", "typos", 0.0).apply(TEXT) == TEXT
    y = Shift("text", "typos", 0.3).apply(TEXT, key="t")
    assert y != TEXT
    assert [c for c in y if not c.isalpha()] == [c for c in TEXT if not c.isalpha()]
    long = "abcdefghij " * 200
    edited = Shift("text", "typos", 0.05).apply(long, key="t")
    changed = sum(a != b for a, b in zip(edited.split(" "), long.split(" ")))
    assert 0.2 < changed / 200 < 0.6  # 1 - 0.95^10 = 0.40 of 10-letter words get an edit


def test_word_dropout_keeps_a_subsequence():
    words = TEXT.split()
    assert Shift("text", "dropout", 0.0).apply(TEXT) == " ".join(words)
    y = Shift("text", "dropout", 0.5).apply(TEXT, key="d").split()
    it = iter(words)
    assert all(w in it for w in y) and 0 < len(y) < len(words)
    assert len(Shift("text", "dropout", 1.0).apply(TEXT).split()) == 1


def test_parse_shifts():
    shifts = parse_shifts(["noise=20,10", "gain"], "audio")
    assert [s.label for s in shifts] == ["noise=20", "noise=10"] + [
        f"gain={v:g}" for v in SHIFTS[("audio", "gain")].default_levels
    ]
    with pytest.raises(ValueError, match="no image shift"):
        parse_shifts(["typos"], "image")
    with pytest.raises(ValueError, match="numbers"):
        parse_shifts(["noise=loud"], "audio")
    with pytest.raises(ValueError, match="> 0"):
        parse_shifts(["speed=0"], "audio")


def test_shifted_dataset_applies_the_shift_and_has_its_own_fingerprint():
    ds = LabeledDataset(
        name="toy", modality="text", classes=["a", "b"], items=["hello world", "bye now"], labels=[0, 1]
    )
    upper = shifted_dataset(ds, Shift("text", "casing", 1.0))
    assert upper.load(0) == "HELLO WORLD" and ds.load(0) == "hello world"
    prints = {
        ds.fingerprint(),
        upper.fingerprint(),
        shifted_dataset(ds, Shift("text", "casing", 0.5)).fingerprint(),
        shifted_dataset(ds, Shift("text", "casing", 0.5), seed=1).fingerprint(),
        shifted_dataset(ds, Shift("text", "typos", 0.5)).fingerprint(),
    }
    assert len(prints) == 5
    sub = upper.subset([1])
    assert sub.load(0) == "BYE NOW" and sub.fingerprint() != ds.subset([1]).fingerprint()
    with pytest.raises(ValueError, match="is text"):
        shifted_dataset(ds, Shift("audio", "gain", 3.0))

"""Fixture builders for the dataset-source tests: tiny audio/image class folders, CSV files, IEMOCAP tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

# One IEMOCAP dialog's label file as the release writes it: a header, then per utterance a summary line
# followed by categorical (C-) and attribute (A-) evaluator lines, blank lines between utterances.
IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
IEMOCAP_EVALUATOR_LINES = (
    "C-E2:\tNeutral;\t()\n"
    "C-E3:\tNeutral; Frustration;\t()\n"
    "C-F1:\tNeutral;\t(curious)\n"
    "A-E3:\tval 3; act 2; dom  2;\t()\n"
    "A-F1:\tval 3; act 2; dom  2;\t(mildly aggravated)\n"
)


def write_tone(path: Path, *, freq: float, seconds: float = 0.25, sample_rate: int = 16000, channels: int = 1):
    """A short sine tone as 16-bit audio (format from the suffix: .wav, .flac, .ogg)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sample_rate)


def build_iemocap(root: Path, sessions: dict[int, list[tuple[str, str]]]) -> Path:
    """Create the IEMOCAP release layout under ``root``.

    ``sessions`` maps a session number to ``(utterance, label)`` pairs, e.g. ``(Ses01F_impro01_F000, "neu")``;
    the dialog is the utterance name without its last ``_`` field. Every utterance gets a 0.2 s wav at 16 kHz.
    """
    for number, utterances in sessions.items():
        session = root / f"Session{number}"
        dialogs: dict[str, list[tuple[str, str]]] = {}
        for utterance, label in utterances:
            dialogs.setdefault(utterance.rsplit("_", 1)[0], []).append((utterance, label))
        eval_dir = session / "dialog" / "EmoEvaluation"
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / "Categorical").mkdir(exist_ok=True)  # the release has these sub-folders; they are ignored
        for dialog, items in dialogs.items():
            lines = [IEMOCAP_HEADER]
            for k, (utterance, label) in enumerate(items):
                start = 6.2901 + 3 * k
                lines.append(f"[{start:.4f} - {start + 1.9456:.4f}]\t{utterance}\t{label}\t[2.5000, 2.5000, 2.5000]\n")
                lines.append(IEMOCAP_EVALUATOR_LINES)
                lines.append("\n")
            (eval_dir / f"{dialog}.txt").write_text("".join(lines))
            for k, (utterance, _) in enumerate(items):
                write_tone(
                    session / "sentences" / "wav" / dialog / f"{utterance}.wav",
                    freq=200 + 50 * k,
                    seconds=0.2,
                )
    return root


@pytest.fixture
def iemocap_root(tmp_path: Path) -> Path:
    """Two sessions: the four kept classes, ``exc`` (merged into hap), dropped labels (fru, sur, xxx, oth)."""
    return build_iemocap(
        tmp_path / "IEMOCAP_full_release",
        {
            1: [
                ("Ses01F_impro01_F000", "neu"),
                ("Ses01F_impro01_M000", "ang"),
                ("Ses01F_impro01_F001", "fru"),
                ("Ses01F_script01_1_F000", "exc"),
                ("Ses01F_script01_1_M000", "sad"),
                ("Ses01F_script01_1_M001", "xxx"),
            ],
            2: [
                ("Ses02M_impro03_F000", "hap"),
                ("Ses02M_impro03_M000", "sad"),
                ("Ses02M_impro03_M001", "sur"),
                ("Ses02M_impro03_F001", "neu"),
                ("Ses02M_impro03_F002", "oth"),
            ],
        },
    )


@pytest.fixture
def audio_folder(tmp_path: Path) -> Path:
    """Three classes of short tones in mixed formats and rates (8 kHz wav, 22.05 kHz stereo flac, ogg)."""
    root = tmp_path / "sounds"
    for name, freq in [("high", 1200.0), ("low", 150.0), ("mid", 500.0)]:
        for k in range(4):
            write_tone(root / name / f"clip{k}.wav", freq=freq + 10 * k, sample_rate=8000)
        write_tone(root / name / "stereo.flac", freq=freq, sample_rate=22050, channels=2)
        write_tone(root / name / "vorbis.ogg", freq=freq, sample_rate=16000)
        (root / name / "notes.txt").write_text("not audio: ignored")
    return root


def write_png(path: Path, *, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10), mode: str = "RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of tiny images in several modes (RGB png, greyscale png, RGBA png, jpg)."""
    root = tmp_path / "pictures"
    for name, colour in [("blue", (0, 0, 220)), ("red", (220, 0, 0))]:
        for k in range(3):
            write_png(root / name / f"img{k}.png", colour=colour)
        write_png(root / name / "grey.png", colour=colour, mode="L")
        write_png(root / name / "alpha.png", colour=colour, mode="RGBA")
        Image.new("RGB", (9, 7), colour).save(root / name / "photo.jpg")
    return root


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """``write_csv(rows, name="data.csv", delimiter=",")`` -> path; rows[0] is the header."""

    def write(rows: list[list[str]], name: str = "data.csv", delimiter: str = ",") -> Path:
        import csv

        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, delimiter=delimiter).writerows(rows)
        return path

    return write


@pytest.fixture
def make_iemocap() -> Callable[..., Path]:
    """The :func:`build_iemocap` builder, for tests that need their own sessions."""
    return build_iemocap


@pytest.fixture
def make_tone() -> Callable[..., None]:
    """The :func:`write_tone` writer."""
    return write_tone


@pytest.fixture
def make_png() -> Callable[..., None]:
    """The :func:`write_png` writer."""
    return write_png


@pytest.fixture
def iemocap_text_parts() -> tuple[str, str]:
    """``(header, evaluator lines)`` as they appear in a real EmoEvaluation file."""
    return IEMOCAP_HEADER, IEMOCAP_EVALUATOR_LINES

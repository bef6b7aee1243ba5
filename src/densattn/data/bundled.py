"""Real datasets shipped by Debian packages, plus one synthetic speech set made with espeak-ng.

| spec | Debian package | task |
|---|---|---|
| ``fortunes`` | ``fortunes`` | topic: computers / politics / sports / work |
| ``fashion-mnist`` | ``dataset-fashion-mnist`` | 10 clothing classes, 70k 28x28 grey images |
| ``fillets-cs`` | ``fillets-ng-data-cs`` | which character speaks (acted Czech dialogue), groups = level |
| ``fillets-nl`` | ``fillets-ng-data-nl`` | which character speaks (acted Dutch dialogue), groups = level |
| ``openclipart`` | ``openclipart-png`` | clip-art category: animals / food / people / ...          |
| ``asterisk-prompts`` | ``asterisk-core-sounds-en-wav`` | prompt folder: digits / letters / phonetic |
| ``espeak-synthetic`` | ``espeak-ng`` | SYNTHETIC keywords: 6 words x 5 voices x 3 rates x 2 pitches |
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from densattn.data.audio import TARGET_SAMPLE_RATE, check_audio_file, resample
from densattn.data.dataset import LabeledDataset, build_dataset, stratified_indices
from densattn.data.images import read_idx
from densattn.io import atomic_write, remove_stale_temp_files

FORTUNES_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortune", "/usr/share/fortunes")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FILLETS_SOUND_DIR = "/usr/share/games/fillets-ng/sound"
OPENCLIPART_DIR = "/usr/share/openclipart/png"
ASTERISK_DIRS = ("/usr/share/asterisk/sounds/en_US_f_Allison", "/usr/share/asterisk/sounds/en")

# Fashion-MNIST label k -> name (Xiao et al. 2017, https://arxiv.org/abs/1708.07747).
FASHION_MNIST_NAMES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip

# The two fish appear in every level; every other speaker code is local to its level ("x" in one level is
# not "x" in another), so it is qualified as "<level>/<code>".
FILLETS_GLOBAL_SPEAKERS = ("m", "v")
# Codes that are not a speaker: "sp" marks sound effects (shouts, bubbles).
FILLETS_NOT_SPEAKERS = ("sp",)

ESPEAK_KEYWORDS = ("yes", "no", "up", "down", "left", "right")
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029")
ESPEAK_RATES = (130, 170, 210)
ESPEAK_PITCHES = (35, 65)


def missing_package(source: str, package: str, path: str) -> ValueError:
    """The error for a bundled source whose Debian package is not installed."""
    return ValueError(
        f"source {source!r} needs the Debian package {package!r} ({path} was not found); install it with "
        f"`sudo apt-get install -y {package}` (or `make data`)."
    )


def _first_existing(paths: Sequence[str]) -> Path | None:
    for p in paths:
        if Path(p).is_dir():
            return Path(p)
    return None


# --------------------------------------------------------------------------------------------------- fortunes


def _apply_backspaces(text: str) -> str:
    """Render backspace overstrike as a terminal would (``___\\b\\b\\bnot`` -> ``not``)."""
    out: list[str] = []
    for ch in text:
        if ch == "\x08":
            if out and out[-1] != "\n":
                out.pop()
        else:
            out.append(ch)
    return "".join(out)


def split_fortunes(text: str) -> list[str]:
    """Split a fortune file into entries: entries are separated by lines holding only ``%``; backspace
    overstrike (used for underlining: ``___`` + 3 backspaces + ``not``) is rendered and blank entries dropped.

    Example:
        >>> split_fortunes("one\\n%\\n_\\x08two\\n%\\n")
        ['one', 'two']
    """
    entries, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    cleaned = [_apply_backspaces(e).strip() for e in entries]
    return [e for e in cleaned if e]


def load_fortunes(
    *,
    max_samples: int | None = None,
    seed: int = 0,
    topics: Sequence[str] = ("computers", "politics", "sports", "work"),
) -> LabeledDataset:
    """Debian ``fortunes`` as a topic task: one class per fortune file in ``topics``."""
    root = _first_existing(FORTUNES_DIRS)
    if root is None:
        raise missing_package("fortunes", "fortunes", FORTUNES_DIRS[0])
    if isinstance(topics, str):
        topics = [t for t in topics.split(",") if t]
    items, names, ids = [], [], []
    for topic in topics:
        path = root / topic
        if not path.is_file():
            available = sorted(p.name for p in root.iterdir() if p.is_file() and "." not in p.name)
            raise ValueError(f"topics: no fortune file {topic!r} in {root}; choose from {available}.")
        entries = split_fortunes(path.read_text(encoding="utf-8", errors="replace"))
        for k, entry in enumerate(entries):
            items.append(entry)
            names.append(topic)
            ids.append(f"{topic}:{k}")
    return build_dataset("fortunes", "text", items, names, ids=ids, max_samples=max_samples, seed=seed)


# ---------------------------------------------------------------------------------------------- fashion-mnist
def load_fashion_mnist(
    *, max_samples: int | None = None, seed: int = 0, splits: Sequence[str] = ("train", "t10k")
) -> LabeledDataset:
    """Debian ``dataset-fashion-mnist``: 28x28 grey clothing images, ids ``"train:123"`` / ``"t10k:45"``.

    Labels are read first and the subsample is drawn before the images are taken, so only the chosen images
    are kept in memory (as ``(28, 28)`` uint8 arrays; :meth:`LabeledDataset.load` returns them as RGB).
    """
    root = Path(FASHION_MNIST_DIR)
    if not root.is_dir():
        raise missing_package("fashion-mnist", "dataset-fashion-mnist", FASHION_MNIST_DIR)
    if isinstance(splits, str):
        splits = [s for s in splits.split(",") if s]
    for split in splits:
        if split not in ("train", "t10k"):
            raise ValueError(f"splits: unknown split {split!r}; use 'train' and/or 't10k'.")
    labels_per_split = {s: read_idx(root / f"{s}-labels-idx1-ubyte.gz") for s in splits}
    refs = [(s, i) for s in splits for i in range(len(labels_per_split[s]))]
    names = [FASHION_MNIST_NAMES[int(labels_per_split[s][i])] for s, i in refs]
    classes = sorted(set(names))
    index = {c: k for k, c in enumerate(classes)}
    keep = stratified_indices([index[n] for n in names], max_samples, seed=seed)
    items: list[np.ndarray] = []
    for split in splits:
        wanted = [refs[k][1] for k in keep if refs[k][0] == split]
        if wanted:
            images = read_idx(root / f"{split}-images-idx3-ubyte.gz")  # (N, 28, 28)
            items.extend(images[i].copy() for i in wanted)
    # keep is sorted and refs are ordered split by split, so items line up with keep.
    return LabeledDataset(
        name="fashion-mnist",
        modality="image",
        classes=classes,
        items=items,
        labels=[index[names[k]] for k in keep],
        ids=[f"{refs[k][0]}:{refs[k][1]}" for k in keep],
    )


# ------------------------------------------------------------------------------------------------ fillets-cs
def fillets_speaker(stem: str, level: str) -> str | None:
    """The speaker of a Fish Fillets NG voice clip from its file stem, or ``None`` for non-speech / unknown.

    Names are ``<level-abbrev>-<speaker>-<line>`` (``vit-m-hlava``); a few levels drop the abbreviation
    (``m-myslis``) or put the speaker last (``agenti-m``). ``m``/``v`` (the two fish) are global; other codes
    are qualified by level.

    Example:
        >>> names = [("vit-m-hlava", "city"), ("agenti-m", "fdto"), ("z-c-1", "ending")]
        >>> [fillets_speaker(stem, level) for stem, level in names]
        ['m', 'm', 'ending/c']
    """
    fields = stem.split("-")
    if len(fields) < 2:
        return None
    if len(fields) == 2:
        first, last = fields
        code = last if len(last) <= 2 and len(first) > 2 else first
    else:
        code = fields[1]
    if not code or code in FILLETS_NOT_SPEAKERS:
        return None
    return code if code in FILLETS_GLOBAL_SPEAKERS else f"{level}/{code}"


def fillets_clips(language: str = "cs") -> list[tuple[Path, str, str]]:
    """All ``(path, level, speaker)`` voice clips of one fillets language (sorted by path)."""
    root = Path(FILLETS_SOUND_DIR)
    clips = []
    for path in sorted(root.rglob(f"{language}/*.ogg")):
        level = path.parent.parent.relative_to(root).as_posix()
        speaker = fillets_speaker(path.stem, level)
        if speaker is not None:
            clips.append((path, level, speaker))
    return clips


def _has_samples(path: Path) -> bool:
    import soundfile as sf

    try:
        return sf.info(str(path)).frames > 0
    except RuntimeError:
        return False


def load_fillets(
    language: str, *, max_samples: int | None = None, seed: int = 0, min_clips: int = 20
) -> LabeledDataset:
    """Debian ``fillets-ng-data-<language>``: which character speaks (characters with >= ``min_clips`` clips)."""
    source, package = f"fillets-{language}", f"fillets-ng-data-{language}"
    if not (Path(FILLETS_SOUND_DIR).is_dir() and any(Path(FILLETS_SOUND_DIR).rglob(f"{language}/*.ogg"))):
        raise missing_package(source, package, f"{FILLETS_SOUND_DIR}/*/{language}")
    if int(min_clips) < 1:
        raise ValueError(f"min_clips={min_clips} must be >= 1.")
    clips = [c for c in fillets_clips(language) if _has_samples(c[0])]  # nl ships two header-only clips
    counts = Counter(s for _, _, s in clips)
    clips = [c for c in clips if counts[c[2]] >= int(min_clips)]
    if len({s for _, _, s in clips}) < 2:
        raise ValueError(f"min_clips={min_clips} leaves fewer than 2 speakers; lower it (the default is 20).")
    root = Path(FILLETS_SOUND_DIR)
    ds = build_dataset(
        source,
        "audio",
        [str(p) for p, _, _ in clips],
        [s for _, _, s in clips],
        ids=[p.relative_to(root).as_posix() for p, _, _ in clips],
        groups=[lv for _, lv, _ in clips],
        max_samples=max_samples,
        seed=seed,
        sample_rate=TARGET_SAMPLE_RATE,
    )
    for path in ds.items:
        check_audio_file(path)
    return ds


def load_fillets_cs(*, max_samples: int | None = None, seed: int = 0, min_clips: int = 20) -> LabeledDataset:
    """Debian ``fillets-ng-data-cs``: which character speaks (characters with >= ``min_clips`` clips)."""
    return load_fillets("cs", max_samples=max_samples, seed=seed, min_clips=min_clips)


def load_fillets_nl(*, max_samples: int | None = None, seed: int = 0, min_clips: int = 10) -> LabeledDataset:
    """Debian ``fillets-ng-data-nl``: which character speaks (characters with >= ``min_clips`` clips; the Dutch
    recording has fewer minor characters, so the default keeps those with 10 clips)."""
    return load_fillets("nl", max_samples=max_samples, seed=seed, min_clips=min_clips)


# ------------------------------------------------------------------------------------------------ openclipart
OPENCLIPART_CATEGORIES = ("animals", "food", "people", "recreation", "transportation")


def load_openclipart(
    *,
    max_samples: int | None = None,
    seed: int = 0,
    categories: Sequence[str] = OPENCLIPART_CATEGORIES,
    max_bytes: int = 1_000_000,
) -> LabeledDataset:
    """Debian ``openclipart-png`` (public domain clip art): the top-level category folder of a drawing (files in
    sub-folders count for their top folder). Files over ``max_bytes`` (a few posters of many MB) are skipped;
    transparency is composited onto white when decoded."""
    root = Path(OPENCLIPART_DIR)
    if not root.is_dir():
        raise missing_package("openclipart", "openclipart-png", OPENCLIPART_DIR)
    paths, names = _category_files(
        root, categories, "*.png", "clip-art", recursive=True, keep=lambda path: path.stat().st_size <= int(max_bytes)
    )
    ids = [Path(p).relative_to(root).as_posix() for p in paths]
    return build_dataset("openclipart", "image", paths, names, ids=ids, max_samples=max_samples, seed=seed)


def _category_files(
    root: Path,
    categories: Sequence[str] | str,
    pattern: str,
    what: str,
    *,
    recursive: bool = False,
    keep: Callable[[Path], bool] | None = None,
) -> tuple[list[str], list[str]]:
    """Files matching ``pattern`` in each category folder under ``root``, labelled by that folder (sorted paths).

    ``categories`` may be a comma-separated string; a missing folder raises a ValueError listing the ones there are.
    """
    if isinstance(categories, str):
        categories = [c for c in categories.split(",") if c]
    paths, names = [], []
    for category in categories:
        folder = root / category
        if not folder.is_dir():
            available = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise ValueError(f"categories: no {what} folder {category!r} in {root}; choose from {available}.")
        for path in sorted(folder.rglob(pattern) if recursive else folder.glob(pattern)):
            if keep is None or keep(path):
                paths.append(str(path))
                names.append(category)
    return paths, names


# ------------------------------------------------------------------------------------------ asterisk prompts
def load_asterisk_prompts(
    *,
    max_samples: int | None = None,
    seed: int = 0,
    categories: Sequence[str] = ("digits", "letters", "phonetic"),
) -> LabeledDataset:
    """Debian ``asterisk-core-sounds-en-wav`` (one professional voice, 8 kHz): which prompt folder a clip is
    from (number words / spelled letters / NATO phonetic words). One voice and one clip per word, so a
    per-digit task has a single example per class; the folder task is the usable one."""
    root = _first_existing(ASTERISK_DIRS)
    if root is None or not (root / "digits").is_dir():
        raise missing_package("asterisk-prompts", "asterisk-core-sounds-en-wav", ASTERISK_DIRS[0])
    paths, names = _category_files(root, categories, "*.wav", "prompt")
    ids = [Path(p).relative_to(root).as_posix() for p in paths]
    ds = build_dataset(
        "asterisk-prompts", "audio", paths, names, ids=ids, max_samples=max_samples, seed=seed,
        sample_rate=TARGET_SAMPLE_RATE,
    )  # fmt: skip
    for path in ds.items:
        check_audio_file(path)
    return ds


# ------------------------------------------------------------------------------------------- espeak-synthetic
def default_cache_dir() -> Path:
    """``$DENSATTN_CACHE`` or ``~/.cache/densattn``."""
    return Path(os.environ.get("DENSATTN_CACHE", Path.home() / ".cache" / "densattn"))


def _espeak_version() -> str:
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise missing_package("espeak-synthetic", "espeak-ng", "the espeak-ng program") from err
    match = re.search(r"(\d+(?:\.\d+)+)", out)
    return match.group(1) if match else "unknown"


def synthesize_clip(text: str, path: Path, *, voice: str, rate: int, pitch: int) -> None:
    """Speak ``text`` with espeak-ng (``--stdout``) and store it as 16 kHz 16-bit mono wav at ``path``."""
    import soundfile as sf

    cmd = ["espeak-ng", "--stdout", "-v", voice, "-s", str(rate), "-p", str(pitch), text]
    try:
        raw = subprocess.run(cmd, capture_output=True, check=True).stdout
        wave, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as err:
        raise ValueError(f"espeak-ng failed for voice={voice!r} ({' '.join(cmd)}): {err}") from err
    mono = resample(wave.mean(axis=1), int(sr))
    # atomic: parallel workers never see half a file, and a failed write leaves no temporary file
    atomic_write(path, lambda tmp: sf.write(tmp, mono, TARGET_SAMPLE_RATE, subtype="PCM_16", format="WAV"))


def load_espeak_synthetic(
    *,
    max_samples: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    keywords: Sequence[str] = ESPEAK_KEYWORDS,
    voices: Sequence[str] = ESPEAK_VOICES,
    rates: Sequence[int] = ESPEAK_RATES,
    pitches: Sequence[int] = ESPEAK_PITCHES,
) -> LabeledDataset:
    """SYNTHETIC keyword clips spoken by espeak-ng, one class per keyword, groups = voice.

    Not real speech: use it for smoke tests and demos, never as evidence about real audio. Clips are generated
    on first use (only the ones the subsample keeps) into ``cache_dir/espeak-synthetic/<espeak version>/``.
    """
    version = _espeak_version()
    split = {"keywords": keywords, "voices": voices, "rates": rates, "pitches": pitches}
    for key, value in split.items():
        if isinstance(value, str):
            split[key] = [v for v in value.split(",") if v]
    keywords, voices = list(split["keywords"]), list(split["voices"])
    rates, pitches = [int(r) for r in split["rates"]], [int(p) for p in split["pitches"]]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / "espeak-synthetic" / version
    remove_stale_temp_files(folder)  # clips half-written by a killed process
    plan = [(w, v, r, p) for w in keywords for v in voices for r in rates for p in pitches]
    names = [w for w, _, _, _ in plan]
    classes = sorted(set(names))
    keep = stratified_indices([classes.index(n) for n in names], max_samples, seed=seed)
    items, ids = [], []
    for k in keep:
        word, voice, rate, pitch = plan[k]
        path = folder / word / f"{voice}_s{rate}_p{pitch}.wav"
        if not path.is_file():
            synthesize_clip(word, path, voice=voice, rate=rate, pitch=pitch)
        items.append(str(path))
        ids.append(f"{word}/{voice}_s{rate}_p{pitch}")
    return LabeledDataset(
        name="espeak-synthetic",
        modality="audio",
        classes=classes,
        items=items,
        labels=[classes.index(names[k]) for k in keep],
        groups=[plan[k][1] for k in keep],
        ids=ids,
        sample_rate=TARGET_SAMPLE_RATE,
    )

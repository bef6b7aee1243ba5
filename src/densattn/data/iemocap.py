"""``iemocap:PATH``: the IEMOCAP release layout (Busso et al. 2008), four-class speech emotion.

IEMOCAP is licensed by USC and must be supplied by the user. Expected layout under ``PATH``::

    Session1/dialog/EmoEvaluation/Ses01F_impro01.txt     one label file per dialog
    Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
    ...
    Session5/...

In a label file, each utterance has a summary line
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``; header lines (``%``) and
the per-evaluator lines that follow (``C-E2: ...``, ``A-E3: ...``) are ignored. The usual four-class setup is
kept: angry, happy (happy and excited merged), neutral, sad; frustrated, surprised, fearful, disgusted, other
and no-agreement (``xxx``) are dropped. Groups are the sessions, for leave-one-session-out evaluation.

Paths in label files are not trusted: an utterance id must be a plain name (letters, digits, ``_ - .``, no path
separator, not ``..``), and every wav must resolve (symlinks followed) to a file inside ``PATH``; a label file that
breaks either rule is refused with an error naming it, so a crafted release cannot make densattn read files
elsewhere on the machine.
"""

from __future__ import annotations

import re
from pathlib import Path

from densattn.data.audio import TARGET_SAMPLE_RATE, check_audio_file
from densattn.data.dataset import LabeledDataset, build_dataset

IEMOCAP_LABELS = {"ang": "ang", "hap": "hap", "exc": "hap", "neu": "neu", "sad": "sad"}
_SUMMARY = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[")
_SESSION = re.compile(r"^Session(\d+)$")
_UTTERANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_emo_evaluation(text: str) -> list[tuple[str, str]]:
    """``(utterance, raw label)`` for every summary line of one EmoEvaluation file.

    Example:
        >>> text = "% header\\n\\n[6.29 - 8.23]\\tSes01F_impro01_F000\\tneu\\t[2.5, 2.5, 2.5]\\n"
        >>> text += "C-E2:\\tNeutral;\\t()\\nA-E3:\\tval 3; act 2; dom  2;\\t()\\n"
        >>> parse_emo_evaluation(text)
        [('Ses01F_impro01_F000', 'neu')]
    """
    out = []
    for line in text.splitlines():
        match = _SUMMARY.match(line)
        if match:
            out.append((match.group(1), match.group(2)))
    return out


def load_iemocap(
    spec: str, path: str, *, max_samples: int | None = None, seed: int = 0, verify: bool = True
) -> LabeledDataset:
    """Load the IEMOCAP layout at ``path`` as 4-class (ang, hap+exc, neu, sad) audio, groups = session.

    Raises:
        ValueError: missing path, no ``SessionN`` folders, no label files, a labelled utterance without its
            wav, an utterance id that is not a plain name or a wav outside ``path`` (a link leading out), no
            examples in the four classes, or an unreadable wav (with ``verify``).
    """
    if not path:
        raise ValueError(f"source {spec!r} has no path; write it as 'iemocap:/path/to/IEMOCAP_full_release'.")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"source {spec!r}: folder {str(root)!r} does not exist; point it at the IEMOCAP release.")
    real_root = root.resolve()
    sessions = sorted(
        (d for d in root.iterdir() if d.is_dir() and _SESSION.match(d.name)),
        key=lambda d: int(_SESSION.match(d.name).group(1)),  # type: ignore[union-attr]
    )
    if not sessions:
        raise ValueError(
            f"source {spec!r}: {str(root)!r} has no Session1..Session5 folders; point it at the folder that "
            "holds them (the IEMOCAP release root)."
        )
    paths: list[str] = []
    names: list[str] = []
    groups: list[str] = []
    ids: list[str] = []
    label_files = 0
    for session in sessions:
        eval_dir = session / "dialog" / "EmoEvaluation"
        files = sorted(f for f in eval_dir.glob("*.txt") if not f.name.startswith(".")) if eval_dir.is_dir() else []
        label_files += len(files)
        for label_file in files:
            dialog = label_file.stem
            if not label_file.resolve().is_relative_to(real_root):
                raise ValueError(
                    f"source {spec!r}: label file {str(label_file)!r} is a link to {str(label_file.resolve())!r}, "
                    f"outside the dataset folder {str(real_root)!r}; refusing to read it. Copy it into the release."
                )
            try:
                text = label_file.read_text(encoding="utf-8", errors="replace")
            except OSError as err:
                raise ValueError(f"source {spec!r}: cannot read label file {str(label_file)!r} ({err}).") from err
            for utterance, raw in parse_emo_evaluation(text):
                label = IEMOCAP_LABELS.get(raw)
                if label is None:
                    continue
                if not _UTTERANCE.match(utterance) or ".." in utterance:
                    raise ValueError(
                        f"source {spec!r}: label file {str(label_file)!r} names utterance {utterance!r}, which is "
                        "not a plain utterance id (path separators or '..'); refusing to read files it points at. "
                        "Restore the release's original label file."
                    )
                wav = session / "sentences" / "wav" / dialog / f"{utterance}.wav"
                if wav.exists() and not wav.resolve().is_relative_to(real_root):
                    raise ValueError(
                        f"source {spec!r}: {str(wav)!r} is a link to {str(wav.resolve())!r}, outside the dataset "
                        f"folder {str(real_root)!r}; refusing to read it. Copy the audio into the release folder."
                    )
                if not wav.is_file():
                    raise ValueError(
                        f"source {spec!r}: utterance {utterance} is labelled in {str(label_file)!r} but its "
                        "audio "
                        f"{str(wav)!r} is missing; restore the release's sentences/wav folder."
                    )
                paths.append(str(wav))
                names.append(label)
                groups.append(session.name)
                ids.append(utterance)
    if label_files == 0:
        raise ValueError(
            f"source {spec!r}: no label files SessionN/dialog/EmoEvaluation/*.txt under {str(root)!r}; "
            "is this the IEMOCAP release root?"
        )
    if not paths:
        raise ValueError(f"source {spec!r}: no utterance labelled ang, hap, exc, neu or sad under {str(root)!r}.")
    ds = build_dataset(
        f"iemocap:{root}", "audio", paths, names, ids=ids, groups=groups, max_samples=max_samples, seed=seed,
        sample_rate=TARGET_SAMPLE_RATE,
    )  # fmt: skip
    if verify:
        for p in ds.items:
            check_audio_file(p)
    return ds

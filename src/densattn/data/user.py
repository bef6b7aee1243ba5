"""The user's own data: ``folder:PATH`` (a subfolder per class) and ``csv:PATH`` (text + label columns)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from densattn.data.audio import AUDIO_EXTENSIONS, TARGET_SAMPLE_RATE, check_audio_file
from densattn.data.dataset import LabeledDataset, build_dataset
from densattn.data.images import IMAGE_EXTENSIONS, check_image_file

#: labels that spreadsheets, pandas and R write for a missing value; a CSV label equal to one (any case) is refused
MISSING_LABELS = frozenset({"nan", "-nan", "+nan", "<na>", "#n/a", "n/a", "null", "#null!"})


def _existing_path(spec: str, path: str, *, directory: bool) -> Path:
    if not path:
        raise ValueError(f"source {spec!r} has no path; write it as '{spec.split(':')[0]}:/path/to/data'.")
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"source {spec!r}: path {str(p)!r} does not exist; check the spelling.")
    if directory and not p.is_dir():
        raise ValueError(f"source {spec!r}: {str(p)!r} is not a folder; give a folder with one subfolder per class.")
    if not directory and not p.is_file():
        raise ValueError(f"source {spec!r}: {str(p)!r} is not a file; give the path of a .csv/.tsv file.")
    return p


def load_folder(
    spec: str, path: str, *, max_samples: int | None = None, seed: int = 0, verify: bool = True
) -> LabeledDataset:
    """``folder:PATH``: each subfolder of ``PATH`` is a class; its image (.png .jpg .jpeg .bmp .gif) or audio
    (.wav .flac .ogg .mp3) files, searched recursively, are the examples. Hidden files and other extensions
    are ignored. With ``verify`` the header of every kept file is read (fast) so a corrupt file fails here.
    Links are resolved: a file (or class folder) that is a link leading outside ``PATH`` is skipped with one
    warning that counts them, so a dataset folder cannot make densattn read files elsewhere on the machine.

    Raises:
        ValueError: missing path, no class subfolders, a class folder with no usable file, image and audio
            files mixed, or an unreadable file.
    """
    root = _existing_path(spec, path, directory=True)
    real_root = root.resolve()
    outside: list[tuple[Path, Path]] = []  # (file, where its link leads), skipped
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"source {spec!r}: {str(root)!r} has no subfolders; put each class's files in its own subfolder "
            f"({str(root)}/<class>/<file>)."
        )
    paths: list[str] = []
    names: list[str] = []
    kinds: set[str] = set()
    for class_dir in class_dirs:
        found = 0
        for file in sorted(class_dir.rglob("*")):
            if not file.is_file() or any(part.startswith(".") for part in file.relative_to(root).parts):
                continue
            ext = file.suffix.lower()
            if ext not in IMAGE_EXTENSIONS and ext not in AUDIO_EXTENSIONS:
                continue
            target = file.resolve()
            if not target.is_relative_to(real_root):  # a link (or a linked class folder) leading out of the root
                outside.append((file, target))
                continue
            if ext in IMAGE_EXTENSIONS:
                kinds.add("image")
            elif ext in AUDIO_EXTENSIONS:
                kinds.add("audio")
            else:
                continue
            paths.append(str(file))
            names.append(class_dir.name)
            found += 1
        if found == 0:
            linked = sum(1 for f, _ in outside if f.is_relative_to(class_dir))
            why = f" (its {linked} file(s) are links leading outside {str(real_root)!r}, which are not followed)"
            raise ValueError(
                f"source {spec!r}: class folder {str(class_dir)!r} is empty (no "
                f"{' '.join(IMAGE_EXTENSIONS)} or "
                f"{' '.join(AUDIO_EXTENSIONS)} files){why if linked else ''}; add examples or remove the folder."
            )
    if outside:
        file, target = outside[0]
        warnings.warn(
            f"source {spec!r}: skipped {len(outside)} file(s) that are links leading outside {str(real_root)!r} "
            f"(e.g. {str(file)!r} -> {str(target)!r}); copy them into the folder to use them",
            stacklevel=2,
        )
    if len(kinds) > 1:
        raise ValueError(f"source {spec!r} mixes image and audio files; keep one modality per dataset folder.")
    modality = kinds.pop()
    ids = [Path(p).relative_to(root).as_posix() for p in paths]
    ds = build_dataset(
        f"folder:{root}", modality, paths, names, ids=ids, max_samples=max_samples, seed=seed,  # type: ignore[arg-type]
        sample_rate=TARGET_SAMPLE_RATE if modality == "audio" else None,
    )  # fmt: skip
    if verify:
        check = check_audio_file if modality == "audio" else check_image_file
        for p in ds.items:
            check(p)
    return ds


def load_csv(
    spec: str,
    path: str,
    *,
    max_samples: int | None = None,
    seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    delimiter: str | None = None,
) -> LabeledDataset:
    """``csv:PATH``: a text classification table with a header row. The delimiter is ``\\t`` for .tsv files,
    else sniffed among ``, ; \\t |`` unless given. Rows with an empty label, or a missing-value marker as label
    (``NaN``, ``N/A``, ``null``, ``<NA>``, ``#N/A``: see :data:`MISSING_LABELS`), are an error (the message gives
    the row number); the id of an example is its data row number (1 = first row after the header).

    Raises:
        ValueError: missing file, unknown text/label/group column (the message lists the columns), empty or
            missing-value label, fewer than 2 classes, no rows.
    """
    file = _existing_path(spec, path, directory=False)
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            sample = handle.read(65536)
            handle.seek(0)
            if delimiter is None:
                if file.suffix.lower() == ".tsv":
                    delimiter = "\t"
                else:
                    try:
                        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
                    except csv.Error:
                        delimiter = ","
            reader = csv.DictReader(handle, delimiter=delimiter)
            columns = list(reader.fieldnames or [])
            for option, column in (("text_column", text_column), ("label_column", label_column)):
                if column not in columns:
                    raise ValueError(
                        f"source {spec!r}: {option}={column!r} is not a column of {str(file)!r}; "
                        f"its columns are {columns}; pass {option}=<one of them>."
                    )
            if group_column is not None and group_column not in columns:
                raise ValueError(
                    f"source {spec!r}: group_column={group_column!r} is not a column of {str(file)!r}; "
                    f"its columns are {columns}; pass group_column=<one of them> or leave it unset."
                )
            rows = list(reader)
    except UnicodeDecodeError as err:
        raise ValueError(f"source {spec!r}: {str(file)!r} is not UTF-8 text ({err}); re-save it as UTF-8.") from err
    except csv.Error as err:
        raise ValueError(f"source {spec!r}: cannot parse {str(file)!r} as CSV ({err}); fix the file.") from err
    texts, names, groups, ids = [], [], [], []
    for number, row in enumerate(rows, start=1):
        label = (row.get(label_column) or "").strip()
        if not label:
            raise ValueError(
                f"source {spec!r}: data row {number} of {str(file)!r} has an empty {label_column!r}; "
                "fill it in or delete the row."
            )
        if label.lower() in MISSING_LABELS:
            raise ValueError(
                f"source {spec!r}: data row {number} of {str(file)!r} has {label_column}={label!r}, which reads as a "
                "missing value (as a spreadsheet or pandas writes it), not a class; fill it in or delete the row."
            )
        texts.append(row.get(text_column) or "")
        names.append(label)
        groups.append((row.get(group_column) or "").strip() if group_column else "")
        ids.append(f"row:{number}")
    if not texts:
        raise ValueError(f"source {spec!r}: {str(file)!r} has a header but no data rows; add examples.")
    return build_dataset(
        f"csv:{file}", "text", texts, names, ids=ids, groups=groups if group_column else None,
        max_samples=max_samples, seed=seed,
    )  # fmt: skip

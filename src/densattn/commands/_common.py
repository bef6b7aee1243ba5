"""Shared pieces of the sub-commands: argument groups and argument parsing. No library logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_data_arguments(p: argparse.ArgumentParser, *, encoder_required: bool = True) -> None:
    p.add_argument(
        "--encoder",
        required=encoder_required,
        default=None,
        help="minilm | whisper-tiny | efficientnet-lite0 | a Hugging Face model folder",
    )
    p.add_argument(
        "--encoder-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="encoder option, e.g. window_seconds=8 or image_size=112 (repeatable)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="fortunes | fashion-mnist | fillets-cs | asterisk-prompts | espeak-synthetic | "
        "folder:PATH | csv:PATH | iemocap:PATH",
    )
    p.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. text_column=review (repeatable)",
    )
    p.add_argument("--max-samples", type=int, default=None, help="stratified, seeded subsample size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/densattn/features)")
    p.add_argument("--batch-size-encode", type=int, default=16, help="encoder batch size")


def parse_options(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def show_progress() -> bool:
    return sys.stderr.isatty()


def check_data_arguments(args: argparse.Namespace) -> None:
    """Checks of the data arguments that need no data (run before any work)."""
    if args.max_samples is not None and args.max_samples < 2:
        raise ValueError(f"--max-samples must be at least 2, got {args.max_samples}")
    if args.batch_size_encode < 1:
        raise ValueError(f"--batch-size-encode must be >= 1, got {args.batch_size_encode}")
    parse_options(args.encoder_option, "--encoder-option")
    parse_options(args.data_option, "--data-option")


def task_from_args(args: argparse.Namespace):
    """``(dataset, encoder, encoder_record)`` of the data arguments."""
    from densattn.distributed import local_device
    from densattn.pipeline import load_task

    check_data_arguments(args)
    return load_task(
        args.data,
        args.encoder,
        data_options=parse_options(args.data_option, "--data-option"),
        encoder_options=parse_options(args.encoder_option, "--encoder-option"),
        max_samples=args.max_samples,
        seed=args.seed,
        device=local_device(getattr(args, "device", None) or "cpu"),  # this rank's GPU under torchrun
    )


def features_from_args(args: argparse.Namespace, dataset=None, encoder=None):
    """``(features, encoder_record, dataset)`` of the data arguments, through the feature cache."""
    from densattn.data.cache import cached_features
    from densattn.pipeline import encoder_record

    if dataset is None or encoder is None:
        dataset, encoder, info = task_from_args(args)
    else:
        info = encoder_record(encoder, args.encoder, parse_options(args.encoder_option, "--encoder-option"))
    features = cached_features(
        encoder, dataset, cache_dir=args.cache_dir, batch_size=args.batch_size_encode, progress=show_progress()
    )
    return features, info, dataset


def data_record(args: argparse.Namespace) -> dict[str, Any]:
    """The data part of a run's ``config.json`` (what rebuilds the dataset)."""
    from densattn.data.sources import resolve_data_spec

    return {
        "data": resolve_data_spec(args.data),  # user paths resolved, so the run works from any directory
        "data_options": parse_options(args.data_option, "--data-option"),
        "max_samples": args.max_samples,
    }

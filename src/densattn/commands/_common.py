"""Shared pieces of the sub-commands: data/encoder arguments and feature loading."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder", required=True, help="minilm | whisper-tiny | efficientnet-lite0 | a Hugging Face model folder"
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


def load_data_and_encoder(args: argparse.Namespace):
    """``(dataset, encoder, encoder_options)`` for the data/encoder arguments, checked against each other."""
    from densattn.data import load_dataset
    from densattn.encoders import get_encoder

    if args.max_samples is not None and args.max_samples < 2:
        raise ValueError(f"--max-samples must be at least 2, got {args.max_samples}")
    enc_opts = parse_options(args.encoder_option, "--encoder-option")
    dataset = load_dataset(
        args.data, max_samples=args.max_samples, seed=args.seed, **parse_options(args.data_option, "--data-option")
    )
    encoder = get_encoder(args.encoder, **enc_opts)
    if encoder.modality != dataset.modality:
        raise ValueError(
            f"--encoder {args.encoder} reads {encoder.modality} but --data {args.data} is {dataset.modality}; "
            "pick an encoder of the data's modality"
        )
    return dataset, encoder, enc_opts


def load_features(args: argparse.Namespace):
    """(FeatureSet, encoder_info, dataset) for the data/encoder arguments, through the feature cache."""
    from densattn.data.cache import cached_features

    dataset, encoder, enc_opts = load_data_and_encoder(args)
    features = cached_features(
        encoder, dataset, cache_dir=args.cache_dir, batch_size=args.batch_size_encode, progress=show_progress()
    )
    info = {"name": str(args.encoder), "options": enc_opts, **encoder.identity(), **encoder_parameters(encoder)}
    return features, info, dataset


def encoder_parameters(encoder) -> dict[str, int]:
    """``{"frozen_params": N}``: every weight of the frozen encoder (a head run trains none of them)."""
    return {"frozen_params": sum(p.numel() for p in encoder.raw_model().parameters())}

"""``densattn train``: a head, a fusion head, or an encoder tuned end to end (LoRA, LoRA+, IA3), with k-fold metrics
and a reusable adapter.

Every argument is checked before any work: flags first, then the run directory (opened and locked), then the data
and encoder specs and the head's options against the encoder's shape; only then are features extracted.
"""

from __future__ import annotations

import sys

from densattn.commands._common import (
    add_data_arguments,
    check_data_arguments,
    data_record,
    features_from_args,
    parse_options,
    show_progress,
    task_from_args,
)
from densattn.heads import HEAD_OPTIONS, HEAD_TYPES

METHODS = ("head", "lora", "loraplus", "ia3", "daam-peft")
#: flags of DAAM's kernel that --method daam-peft takes for its gates
GATE_OPTIONS = ("preset", "num_heads", "num_gaussians")
#: head option -> flag
HEAD_FLAGS = {
    "preset": "--preset",
    "num_heads": "--num-heads",
    "num_gaussians": "--num-gaussians",
    "num_query_heads": "--num-query-heads",
    "num_kv_heads": "--num-kv-heads",
    "layer": "--probe-layer",
}


def add_train_arguments(p) -> None:
    p.add_argument(
        "--head",
        default="daam",
        choices=HEAD_TYPES,
        help="daam | gqdaam | mha | mha_bn | conv (no attention) | pool | linear",
    )
    p.add_argument(
        "--method",
        default="head",
        choices=METHODS,
        help="train a head on cached features (default) or tune the encoder end to end: lora | loraplus | ia3 | "
        "daam-peft (DAAM gates inside the encoder)",
    )
    p.add_argument("--preset", default=None, help="DAAM preset (daam, gqdaam): paper | mixture_of_densities | mixture")
    p.add_argument(
        "--num-heads", type=int, default=None, help="DAAM heads along the layer axis (daam, gqdaam), or MHA heads"
    )
    p.add_argument("--num-gaussians", type=int, default=None, help="Gaussians per DAAM head (daam, gqdaam)")
    p.add_argument("--num-query-heads", type=int, default=None, help="GQA query heads (gqdaam)")
    p.add_argument("--num-kv-heads", type=int, default=None, help="GQA key/value heads (gqdaam)")
    p.add_argument("--probe-layer", default=None, help="linear head: best | last | INDEX")
    p.add_argument("--folds", default="5", help="k for stratified k-fold, 1 for one 80/20 split, or logo")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for heads, 5e-4 end to end)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW decay of weight matrices")
    p.add_argument("--loss", default="ce", choices=("ce", "focal"))
    p.add_argument("--patience", type=int, default=8, help="early stopping patience (epochs)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (CUDA when available)")
    p.add_argument(
        "--on-nonfinite",
        default="error",
        choices=("error", "skip-fold"),
        help="when a fold's loss turns NaN/inf: stop the run with an error (default), or record the fold as "
        "failed and go on with the next (the summary counts failed folds; no NaN weights are ever saved)",
    )
    p.add_argument("--out", required=True, help="run directory (new, or existing with --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--name", default=None, help="display name of the run in compare tables (default: the method)")
    # end to end
    p.add_argument("--rank", type=int, default=None, help="LoRA rank r (lora, loraplus; default 8)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha, update scaled by alpha / r (default 16)")
    p.add_argument("--target-modules", default=None, help="comma-separated module names (default per encoder)")
    p.add_argument(
        "--norm-axis",
        default=None,
        choices=("features", "tokens"),
        help="daam-peft: statistics over each token's features (default) or over the tokens of each feature",
    )
    p.add_argument("--loraplus-ratio", type=float, default=None, help="LoRA+: lr of B = ratio x lr of A (default 16)")
    # fusion of several encoders' features of the same examples
    p.add_argument(
        "--fusion",
        default=None,
        choices=("concat", "ban", "man"),
        help="fuse --encoder's features with every --fusion-encoder's (same --data) through a fusion head",
    )
    p.add_argument(
        "--fusion-encoder",
        action="append",
        default=[],
        metavar="ENC",
        help="an additional encoder whose features are fused with --encoder's (repeatable; needs --fusion)",
    )
    p.add_argument(
        "--fusion-encoder-option",
        action="append",
        default=[],
        metavar="[I:]KEY=VALUE",
        help="option of the fusion encoders (all of them, or the I-th --fusion-encoder, 1-based; repeatable)",
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a head on a frozen encoder (or tune the encoder end to end)",
        description="Train a DAAM head (or a baseline) on cached features of a frozen encoder, a fusion head, "
        "or tune the encoder end to end with LoRA / LoRA+ / IA3.",
    )
    add_data_arguments(p)
    add_train_arguments(p)
    p.set_defaults(func=run)


def parse_folds(value: str) -> int | str:
    if value == "logo":
        return "logo"
    try:
        folds = int(value)
    except ValueError:
        raise ValueError(f"--folds must be a positive integer or 'logo', got {value!r}") from None
    if folds < 1:
        raise ValueError(f"--folds must be >= 1, got {folds}")
    return folds


def head_options_from_args(args) -> dict:
    """The head options the user gave; one that does not apply to ``--head`` is an error naming its flag."""
    given = {
        "preset": args.preset,
        "num_heads": args.num_heads,
        "num_gaussians": args.num_gaussians,
        "num_query_heads": args.num_query_heads,
        "num_kv_heads": args.num_kv_heads,
        "layer": args.probe_layer,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.method == "daam-peft":
        bad = [HEAD_FLAGS[k] for k in given if k not in GATE_OPTIONS]
        if bad:
            raise ValueError(f"{', '.join(bad)} do(es) not apply to --method daam-peft")
        return {}
    if args.method != "head" or args.fusion:
        if given:
            what = f"--method {args.method}" if args.method != "head" else f"--fusion {args.fusion}"
            raise ValueError(f"{', '.join(HEAD_FLAGS[k] for k in given)} apply to heads, not to {what}")
        return {}
    bad = [HEAD_FLAGS[k] for k in given if k not in HEAD_OPTIONS[args.head]]
    if bad:
        allowed = [HEAD_FLAGS[k] for k in HEAD_OPTIONS[args.head] if k in HEAD_FLAGS]
        raise ValueError(
            f"{', '.join(bad)} do(es) not apply to --head {args.head}; it takes {', '.join(allowed) or 'none of them'}"
        )
    if "layer" in given:
        layer = given["layer"]
        given["layer"] = int(layer) if layer.lstrip("-").isdigit() else layer
    return given


def tuner_options_from_args(args) -> dict:
    """The tuner options of an end-to-end method (LoRA flags only for lora/loraplus)."""
    lora_flags = {"rank": args.rank, "alpha": args.alpha}
    if args.norm_axis is not None and args.method != "daam-peft":
        raise ValueError("--norm-axis applies to --method daam-peft only")
    if args.method == "head":
        given = [f"--{k}" for k, v in lora_flags.items() if v is not None]
        given += ["--target-modules"] if args.target_modules else []
        given += ["--loraplus-ratio"] if args.loraplus_ratio is not None else []
        if given:
            raise ValueError(f"{', '.join(given)} apply to --method lora|loraplus|ia3, not to heads")
        return {}
    options = {}
    if args.method in ("lora", "loraplus"):
        options.update({k: v for k, v in lora_flags.items() if v is not None})
        if args.rank is not None and args.rank < 1:
            raise ValueError(f"--rank must be a positive integer, got {args.rank}")
    else:
        bad = [f"--{k}" for k, v in lora_flags.items() if v is not None]
        if bad:
            raise ValueError(f"{', '.join(bad)} apply to --method lora|loraplus, not {args.method}")
    if args.method == "daam-peft":
        gate = {"preset": args.preset, "num_heads": args.num_heads, "num_gaussians": args.num_gaussians}
        options.update({k: v for k, v in gate.items() if v is not None})
        if args.norm_axis is not None:
            options["norm_axis"] = args.norm_axis
    if args.loraplus_ratio is not None and args.method != "loraplus":
        raise ValueError("--loraplus-ratio applies to --method loraplus only")
    if args.target_modules:
        options["target_modules"] = [t.strip() for t in args.target_modules.split(",") if t.strip()]
    return options


#: TrainConfig field -> the flag that sets it (errors name the flag)
TRAIN_FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "loss": "--loss",
    "early_stopping": "--patience",
    "seed": "--seed",
    "device": "--device",
    "on_nonfinite": "--on-nonfinite",
}


def train_config_from_args(args):
    """The :class:`~densattn.train.TrainConfig` of the training flags (``--lr`` defaults per method); an invalid
    value is an error that names its flag."""
    from densattn.train import TrainConfig

    default_lr = 1e-3 if args.method == "head" else 5e-4
    try:
        return TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr if args.lr is not None else default_lr,
            weight_decay=args.weight_decay,
            loss=args.loss,
            early_stopping=args.patience,
            seed=args.seed,
            device=args.device,
            on_nonfinite=args.on_nonfinite,
        )
    except ValueError as err:
        text = str(err)
        field, _, rest = text.partition(" ")
        if field in TRAIN_FLAGS:
            text = f"{TRAIN_FLAGS[field]} {rest}"
        raise ValueError(text) from None


def fusion_encoder_options(pairs: list[str], count: int) -> list[dict]:
    """``--fusion-encoder-option`` values -> per fusion encoder options (``I:KEY=VALUE`` targets the I-th
    ``--fusion-encoder``, 1-based; a plain ``KEY=VALUE`` applies to all of them)."""
    per: list[list[str]] = [[] for _ in range(count)]
    for pair in pairs:
        head, sep, rest = pair.partition(":")
        if sep and head.isdigit() and "=" not in head:
            index = int(head)
            if not 1 <= index <= count:
                raise ValueError(
                    f"--fusion-encoder-option {pair!r}: index {index} is out of range; "
                    f"there are {count} --fusion-encoder (indices 1..{count})"
                )
            per[index - 1].append(rest)
        else:
            for options in per:
                options.append(pair)
    return [parse_options(o, "--fusion-encoder-option") for o in per]


def _check_fusion(args) -> list[dict]:
    if args.fusion_encoder and not args.fusion:
        raise ValueError("--fusion-encoder needs --fusion concat|ban|man (how to fuse the encoders' features)")
    if not args.fusion:
        if args.fusion_encoder_option:
            raise ValueError("--fusion-encoder-option needs --fusion and --fusion-encoder")
        return []
    if args.method != "head":
        raise ValueError(
            f"--fusion trains a fusion head on cached features; it cannot be combined with --method {args.method}"
        )
    if not args.fusion_encoder:
        raise ValueError(
            f"--fusion {args.fusion} needs at least one --fusion-encoder ENC (the other view of the data); e.g. "
            "--encoder efficientnet-lite0 --fusion-encoder efficientnet-lite0 --fusion-encoder-option image_size=224"
        )
    if args.fusion == "ban" and len(args.fusion_encoder) != 1:
        raise ValueError(f"--fusion ban fuses exactly two encoders; got --encoder plus {len(args.fusion_encoder)}")
    return fusion_encoder_options(list(args.fusion_encoder_option), len(args.fusion_encoder))


def run(args) -> int:
    from densattn.train import RunDirectory

    # 1. every flag, before any work
    folds = parse_folds(args.folds)
    config = train_config_from_args(args)
    head_options = head_options_from_args(args)
    tuner_options = tuner_options_from_args(args)
    if args.method != "head":
        from densattn.adapters.tuners import make_tuner
        from densattn.train.end_to_end import END_TO_END_METHODS

        make_tuner(END_TO_END_METHODS[args.method.replace("-", "_")], **tuner_options)  # checks the options now
    fusion_options = _check_fusion(args)
    check_data_arguments(args)
    extra = {**data_record(args), **({"name": args.name} if args.name else {})}
    # 2. the run directory: validated and locked before the encoder loads
    with RunDirectory(args.out, resume=args.resume) as run_dir:
        # 3. data and encoder specs, and the method's options against them
        dataset, encoder, info = task_from_args(args)
        if args.fusion:
            metrics = _train_fusion(args, run_dir, dataset, encoder, fusion_options, config, folds, extra)
        elif args.method == "head":
            metrics = _train_head(args, run_dir, dataset, encoder, head_options, config, folds, extra)
        else:
            metrics = _train_end_to_end(args, run_dir, dataset, encoder, info, tuner_options, config, folds, extra)
    from densattn.distributed import current

    if not current().is_main:  # under torchrun every rank trains; one reports
        return 0
    print(
        f"{metrics['method']}: accuracy {metrics['accuracy_mean']:.3f} ± {metrics['accuracy_std']:.3f}, "
        f"macro-F1 {metrics['macro_f1_mean']:.3f}, trainable params {metrics['trainable_params']:,} -> {args.out}"
    )
    failed = metrics.get("failed_folds") or []
    if failed:
        total, which = len(failed) + metrics["num_folds"], ", ".join(str(f["fold"]) for f in failed)
        print(
            f"densattn train: warning: {len(failed)} of {total} folds failed (folds {which}: "
            f"{failed[0]['reason']}); the summary covers the other {metrics['num_folds']}",
            file=sys.stderr,
        )
    return 0


def _train_head(args, run_dir, dataset, encoder, head_options, config, folds, extra) -> dict:
    from densattn.heads import build_head
    from densattn.train import run_experiment
    from densattn.train.loop import check_trainable

    try:  # fails fast: before any feature is extracted or file written
        probe = build_head(args.head, encoder.num_layers, encoder.dim, len(dataset.classes), **head_options)
    except ValueError as err:
        given = " ".join(f"{HEAD_FLAGS[k]} {v}" for k, v in head_options.items() if k in HEAD_FLAGS)
        raise ValueError(f"--head {args.head} {given}".strip() + f" on --encoder {args.encoder}: {err}") from None
    check_trainable(probe, config)
    features, info, _ = features_from_args(args, dataset, encoder)
    return run_experiment(
        features,
        head=args.head,
        out=run_dir,
        head_options=head_options,
        train_config=config,
        folds=folds,
        progress=show_progress(),
        encoder_info=info,
        extra_config=extra,
    )


def _train_end_to_end(args, run_dir, dataset, encoder, info, tuner_options, config, folds, extra) -> dict:
    from densattn.data.cache import cached_features
    from densattn.train.end_to_end import run_end_to_end_experiment

    # the cached frozen features (shared with head runs) give the classifier's input statistics for free
    features = cached_features(
        encoder, dataset, cache_dir=args.cache_dir, batch_size=args.batch_size_encode, progress=show_progress()
    )
    return run_end_to_end_experiment(
        encoder,
        [dataset.load(i) for i in range(len(dataset))],
        features.labels,
        features.classes,
        out=run_dir,
        method=args.method.replace("-", "_"),
        tuner_options=tuner_options,
        loraplus_ratio=args.loraplus_ratio if args.loraplus_ratio is not None else 16.0,
        train_config=config,
        folds=folds,
        groups=dataset.groups,
        pooled_features=features.features[:, -1],
        progress=show_progress(),
        encoder_info=info,
        extra_config={
            **extra,
            "feature_cache": {k: features.manifest.get(k) for k in ("dataset", "dataset_fingerprint", "dtype")},
        },
    )


def _train_fusion(args, run_dir, dataset, encoder, fusion_options, config, folds, extra) -> dict:
    from densattn.pipeline import task_features
    from densattn.train import run_fusion_experiment

    features, info, _ = features_from_args(args, dataset, encoder)
    feature_sets, infos = [features], [info]
    for name, options in zip(args.fusion_encoder, fusion_options):
        features, info, _ = task_features(
            args.data,
            name,
            data_options=parse_options(args.data_option, "--data-option"),
            encoder_options=options,
            max_samples=args.max_samples,
            seed=args.seed,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size_encode,
            progress=show_progress(),
        )
        feature_sets.append(features)
        infos.append(info)
    return run_fusion_experiment(
        feature_sets,
        method=args.fusion,
        out=run_dir,
        train_config=config,
        folds=folds,
        progress=show_progress(),
        encoder_infos=infos,
        extra_config=extra,
    )

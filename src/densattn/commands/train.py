"""``densattn train``: a head (or LoRA) on a frozen encoder, with k-fold metrics and a reusable adapter."""

from __future__ import annotations

from densattn.commands._common import add_data_arguments, load_features, parse_options, show_progress
from densattn.heads import HEAD_TYPES


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
        choices=("head", "lora", "loraplus"),
        help="train a head on cached features (default) or fine-tune the encoder with LoRA / LoRA+",
    )
    p.add_argument("--preset", default="paper", help="DAAM preset: paper | mixture_of_densities | mixture")
    p.add_argument("--num-heads", type=int, default=None, help="DAAM heads along the layer axis (default: auto)")
    p.add_argument("--num-gaussians", type=int, default=1)
    p.add_argument("--probe-layer", default="best", help="linear head: best | last | INDEX")
    p.add_argument("--folds", default="5", help="k for stratified k-fold, 1 for one 80/20 split, or logo")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for heads, 5e-4 for LoRA)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--loss", default="ce", choices=("ce", "focal"))
    p.add_argument("--patience", type=int, default=8, help="early stopping patience (epochs)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (CUDA when available, with mixed precision)")
    p.add_argument("--out", required=True, help="run directory (new, or existing with --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    # LoRA / LoRA+ (used with --method lora|loraplus)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scaling alpha / r)")
    p.add_argument("--target-modules", default=None, help="comma-separated module names (default per encoder)")
    p.add_argument("--loraplus-ratio", type=float, default=16.0, help="LoRA+: lr of B = ratio x lr of A")
    # Fusion of several encoders' features of the same examples (densattn.fusion_train)
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
        help="train a head on a frozen encoder (or LoRA)",
        description="Train a DAAM head (or a baseline) on cached features of a frozen encoder.",
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
    if args.head in ("daam", "gqdaam"):
        opts = {"preset": args.preset, "num_gaussians": args.num_gaussians}
        if args.num_heads and args.head == "daam":
            opts["num_heads"] = args.num_heads
        return opts
    if args.head == "linear":
        layer = args.probe_layer
        return {"layer": int(layer) if layer.lstrip("-").isdigit() else layer}
    return {}


def train_config_from_args(args, *, default_lr: float = 1e-3):
    """The :class:`~densattn.train.TrainConfig` of the training flags (``--lr`` defaults per method)."""
    from densattn.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else default_lr,
        weight_decay=args.weight_decay,
        loss=args.loss,
        early_stopping=args.patience,
        seed=args.seed,
        device=getattr(args, "device", "cpu"),
    )


def run(args) -> int:
    if args.fusion_encoder and not args.fusion:
        raise ValueError("--fusion-encoder needs --fusion concat|ban|man (how to fuse the encoders' features)")
    if args.fusion:
        from densattn.fusion_train import train_fusion_from_args

        return train_fusion_from_args(args)
    from densattn.train import run_experiment

    folds = parse_folds(args.folds)
    if args.method != "head":
        from densattn.lora import train_lora_from_args

        return train_lora_from_args(args)
    config = train_config_from_args(args)
    features, info, _ = load_features(args)
    metrics = run_experiment(
        features,
        head=args.head,
        out=args.out,
        head_options=head_options_from_args(args),
        train_config=config,
        folds=folds,
        resume=args.resume,
        progress=show_progress(),
        encoder_info=info,
        extra_config={
            "data": args.data,
            "data_options": parse_options(args.data_option, "--data-option"),
            "max_samples": args.max_samples,
            "method": "head",
        },
    )
    print(
        f"{args.head}: accuracy {metrics['accuracy_mean']:.3f} ± {metrics['accuracy_std']:.3f}, "
        f"macro-F1 {metrics['macro_f1_mean']:.3f}, trainable params {metrics['trainable_params']:,} -> {args.out}"
    )
    return 0

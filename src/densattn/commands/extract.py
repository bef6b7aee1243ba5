"""``densattn extract``: encode a dataset with a frozen encoder into the feature cache."""

from __future__ import annotations

from densattn.commands._common import add_data_arguments, features_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="encode a dataset into the feature cache",
        description="Encode a dataset with a frozen encoder (pooled per layer) and cache it. Under torchrun "
        "(torchrun --nproc-per-node N $(which densattn) extract ...) the ranks share the work.",
    )
    add_data_arguments(p)
    p.add_argument("--device", default="auto", help="where the encoder runs: cpu | cuda | cuda:N | auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from densattn.distributed import current

    features, info, _ = features_from_args(args)
    m = features.manifest
    if current().is_main:  # under torchrun every rank extracts; one reports
        print(
            f"{m['dataset']}: {len(features)} examples x {features.num_layers} layers x {features.dim} "
            f"({info['name']}); classes {features.classes}"
        )
    return 0

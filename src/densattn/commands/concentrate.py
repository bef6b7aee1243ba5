"""``densattn concentrate``: the concentration domain-generalisation experiment (soft and hard prompts).

Paper: "Concentrate Attention: Towards Domain-Generalizable Prompt Optimization for Language Models"
(NeurIPS 2024, https://arxiv.org/abs/2406.10584). See :mod:`densattn.concentration.experiment`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from densattn.concentration.experiment import DOMAINS, ExperimentConfig, run_experiment, to_markdown


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = ExperimentConfig()
    p = subparsers.add_parser(
        "concentrate",
        help="multi-source domain generalisation of soft prompts with/without the concentration loss",
        description="Train soft prompts on a frozen MiniLM-L6 over three source domains of Debian "
        "fortunes and test on an unseen one, with and without the concentration-reweighting loss; rank hard "
        "prompts by global concentration score.",
    )
    p.add_argument("--target-domain", type=int, default=defaults.target_domain, help="held-out domain 0..3")
    p.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--per-domain-label", type=int, default=defaults.per_domain_label)
    p.add_argument("--prompt-length", type=int, default=defaults.prompt_length)
    p.add_argument("--max-length", type=int, default=defaults.max_length, help="text tokens kept per example")
    p.add_argument("--reweight", type=float, default=defaults.reweight, help="lambda_w of the per-example weights")
    p.add_argument("--strength-weight", type=float, default=defaults.strength_weight, help="lambda_s")
    p.add_argument("--fluctuation-weight", type=float, default=defaults.fluctuation_weight, help="lambda_f")
    p.add_argument("--beta", type=float, default=defaults.beta, help="score = mean - beta * std (hard prompts)")
    p.add_argument("--no-hard-prompts", action="store_true", help="skip the hard-prompt ranking")
    p.add_argument("--output", type=Path, default=None, help="write OUTPUT.json and OUTPUT.md (path stem)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not 0 <= args.target_domain < len(DOMAINS):
        raise ValueError(f"--target-domain: must be in 0..{len(DOMAINS) - 1}, got {args.target_domain}")
    if args.steps < 1 or args.batch_size < 1 or args.per_domain_label < 4:
        raise ValueError("--steps and --batch-size must be >= 1 and --per-domain-label >= 4")
    config = ExperimentConfig(
        target_domain=args.target_domain,
        seeds=tuple(args.seeds),
        steps=args.steps,
        batch_size=args.batch_size,
        per_domain_label=args.per_domain_label,
        prompt_length=args.prompt_length,
        max_length=args.max_length,
        reweight=args.reweight,
        strength_weight=args.strength_weight,
        fluctuation_weight=args.fluctuation_weight,
        beta=args.beta,
    )
    result = run_experiment(config, hard_prompts=not args.no_hard_prompts)
    markdown = to_markdown(result)
    print(markdown)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(markdown)
    return 0

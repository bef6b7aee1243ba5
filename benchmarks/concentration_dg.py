"""Concentration DG experiment (https://arxiv.org/abs/2406.10584) on Debian fortunes + MiniLM-L6.

Writes benchmarks/results/concentration_dg.{json,md}. Same as
``densattn concentrate --output benchmarks/results/concentration_dg``; about 8 minutes on 2 oversubscribed
cores (3 min of CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

from densattn.concentration.experiment import ExperimentConfig, run_experiment, to_markdown


def main() -> None:
    result = run_experiment(ExperimentConfig())
    out = Path(__file__).resolve().parent / "results" / "concentration_dg"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()

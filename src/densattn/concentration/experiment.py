"""Multi-source domain generalisation with concentrated soft prompts, on real text (Debian fortunes).

Task (a sub-population shift, built as BREEDS does for images, https://arxiv.org/abs/2008.04859): three topic
labels shared by every domain, each label made of several Debian fortune collections; a *domain* takes one
collection per label, so the source and target domains share the label set but not a single collection:

======  ===============  ==========  ===========
domain  technology       society     private life
======  ===============  ==========  ===========
0       computers        politics    men-women
1       linux            law         love
2       perl             education   kids
3       linuxcookie      work        food
======  ===============  ==========  ===========

Collections differ in authorship, era and style (Unix-lore one-liners, IRC quotes of Linux developers, Larry
Wall quotes, aphorisms, jokes), so a classifier that latches onto one collection's surface cues fails on
another. Trailing attributions (``-- Author``, ``(By Author)``) are stripped so names cannot give the label
away. Training uses the three source domains; the target domain (default 3) is never seen until the final
test. Source accuracy is measured on held-out source examples. No model selection: every run trains a fixed
number of steps.

Compared: soft-prompt tuning (a learned prompt after ``[CLS]``, linear classifier on ``[CLS]``) with and
without the concentration-reweighting loss (:mod:`densattn.concentration.prompting`), over several seeds; and a
hard-prompt ranking by global concentration score, checked against the target accuracy of a linear probe on each
prompted ``[CLS]``.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densattn.concentration.metrics import (
    concentration_fluctuation,
    global_concentration_score,
    hard_prompt_strengths,
    load_text_encoder,
)
from densattn.concentration.prompting import SoftPromptClassifier, evaluate_soft_prompt, train_soft_prompt

FORTUNES_DIR = Path("/usr/share/games/fortunes")
LABELS = ("technology", "society", "private life")
DOMAINS = (
    ("computers", "politics", "men-women"),
    ("linux", "law", "love"),
    ("perl", "education", "kids"),
    ("linuxcookie", "work", "food"),
)
HARD_PROMPTS = (
    "Topic:",
    "The topic of this quote is",
    "Is this about technology, society or private life?",
    "Classify the following fortune cookie.",
    "Read carefully.",
    "Once upon a time",
    "banana staple umbrella",
    "the the the the",
)
_ATTRIBUTION = re.compile(r"(\s+--\s.*|\s*\(By [^)]*\)\s*)$", re.DOTALL)


@dataclass
class ExperimentConfig:
    """Settings of the DG experiment (defaults: 8 min wall, 3.2 min CPU, on 2 oversubscribed cores)."""

    target_domain: int = 3
    per_domain_label: int = 60  # examples drawn from each (domain, label) collection
    source_test_fraction: float = 0.25
    max_length: int = 24  # text tokens after truncation
    prompt_length: int = 8
    steps: int = 80
    batch_size: int = 16
    learning_rate: float = 3e-3
    prompt_learning_rate: float = 3e-2
    reweight: float = 1.0
    strength_weight: float = 0.5
    fluctuation_weight: float = 50.0
    concentration_layers: tuple[int, ...] = (3, 4, 5)
    seeds: tuple[int, ...] = (0, 1, 2)
    beta: float = 1.0
    hard_prompts: tuple[str, ...] = field(default=HARD_PROMPTS)
    num_threads: int = 1  # one thread is several times faster than two on a shared, oversubscribed machine


def read_fortunes(collection: str, *, directory: Path = FORTUNES_DIR) -> list[str]:
    """Entries of one Debian fortune collection (split on ``%`` lines), whitespace-normalised, without
    trailing attribution."""
    path = directory / collection
    if not path.is_file():
        raise ValueError(
            f"collection: {path} not found; install the Debian data with `apt-get install fortunes fortunes-min`"
        )
    entries = []
    for raw in re.split(r"^%$", path.read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE):
        while "\x08" in raw:  # undo backspace overstrike (underline/bold in old fortunes): "_\ba" -> "a"
            raw = re.sub("[^\x08]\x08", "", raw, count=0, flags=re.DOTALL).lstrip("\x08")
        text = " ".join(_ATTRIBUTION.sub("", raw.strip()).split())
        if len(text) >= 20:
            entries.append(text)
    return entries


def build_splits(config: ExperimentConfig, *, seed: int = 0) -> dict[str, dict[str, list]]:
    """Source-train, source-test and target splits: ``{split: {"texts", "labels", "domains"}}``."""
    if not 0 <= config.target_domain < len(DOMAINS):
        raise ValueError(f"target_domain: must be in 0..{len(DOMAINS) - 1}, got {config.target_domain}")
    rng = np.random.default_rng(seed)
    splits: dict[str, dict[str, list]] = {
        name: {"texts": [], "labels": [], "domains": []} for name in ("train", "source_test", "target")
    }
    for domain, collections in enumerate(DOMAINS):
        for label, collection in enumerate(collections):
            entries = read_fortunes(collection)
            chosen = [entries[i] for i in rng.permutation(len(entries))[: config.per_domain_label]]
            if domain == config.target_domain:
                parts = {"target": chosen}
            else:
                cut = int(round(len(chosen) * (1 - config.source_test_fraction)))
                parts = {"train": chosen[:cut], "source_test": chosen[cut:]}
            for name, texts in parts.items():
                splits[name]["texts"] += texts
                splits[name]["labels"] += [label] * len(texts)
                splits[name]["domains"] += [domain] * len(texts)
    return splits


def _token_cache(model: SoftPromptClassifier, tokenizer: Any, texts: list[str], max_length: int):
    """Frozen word embeddings of ``[CLS] x [SEP]`` (computed once per split, reused by every run)."""
    batch = tokenizer(texts, truncation=True, max_length=max_length + 2, padding=True, return_tensors="pt")
    return model.embed_tokens(batch["input_ids"]), batch["attention_mask"].bool()


def _mean_std(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def run_soft_prompt_dg(config: ExperimentConfig, encoder: Any, tokenizer: Any, splits: dict) -> dict[str, Any]:
    """Train plain and concentration-loss soft prompts per seed; evaluate on source-test and target."""
    probe = SoftPromptClassifier(encoder, num_classes=len(LABELS), prompt_length=config.prompt_length)
    caches = {name: _token_cache(probe, tokenizer, s["texts"], config.max_length) for name, s in splits.items()}
    labels = {name: torch.tensor(s["labels"]) for name, s in splits.items()}
    methods = {
        "prompt tuning": {"reweight": 0.0, "strength_weight": 0.0, "fluctuation_weight": 0.0},
        "+ concentration loss": {
            "reweight": config.reweight,
            "strength_weight": config.strength_weight,
            "fluctuation_weight": config.fluctuation_weight,
        },
    }
    runs = []
    for seed in config.seeds:
        for method, weights in methods.items():
            generator = torch.Generator().manual_seed(seed)
            model = SoftPromptClassifier(
                encoder,
                num_classes=len(LABELS),
                prompt_length=config.prompt_length,
                concentration_layers=config.concentration_layers,
                generator=generator,
            )
            start = time.perf_counter()
            history = train_soft_prompt(
                model,
                *caches["train"],
                labels["train"],
                steps=config.steps,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                prompt_learning_rate=config.prompt_learning_rate,
                generator=generator,
                **weights,
            )
            seconds = time.perf_counter() - start
            source = evaluate_soft_prompt(model, *caches["source_test"], labels["source_test"])
            target = evaluate_soft_prompt(model, *caches["target"], labels["target"])
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "train_seconds": seconds,
                    "final_loss": history[-1],
                    "source": source,
                    "target": target,
                }
            )
            print(
                f"seed {seed} {method:22s} source {source['accuracy']:.3f} target {target['accuracy']:.3f} "
                f"strength {target['strength']:.4f} fluct {target['fluctuation']:.2e} ({seconds:.0f}s)",
                flush=True,
            )
    summary = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        summary[method] = {
            f"{split}_{key}": _mean_std([r[split][key] for r in mine])
            for split in ("source", "target")
            for key in ("accuracy", "strength", "fluctuation")
        }
    return {"runs": runs, "summary": summary}


def run_hard_prompt_ranking(config: ExperimentConfig, encoder: Any, tokenizer: Any, splits: dict) -> list[dict]:
    """Rank the candidate pool by global concentration score over the source-train texts (as
    :func:`~densattn.concentration.metrics.rank_hard_prompts`), and add each prompt's linear-probe accuracies."""
    from sklearn.linear_model import LogisticRegression

    kwargs = {"layers": list(config.concentration_layers), "max_length": config.max_length}
    table = []
    for prompt in config.hard_prompts:
        outputs = {
            name: hard_prompt_strengths(encoder, tokenizer, prompt, s["texts"], **kwargs) for name, s in splits.items()
        }
        strengths = outputs["train"][0]
        classifier = LogisticRegression(max_iter=2000, C=1.0)
        classifier.fit(outputs["train"][1].numpy(), splits["train"]["labels"])
        table.append(
            {
                "prompt": prompt,
                "score": float(global_concentration_score(strengths, beta=config.beta)),
                "strength": float(strengths.mean()),
                "fluctuation": float(concentration_fluctuation(strengths)),
                "target_strength": float(outputs["target"][0].mean()),
                "probe_source_accuracy": float(
                    classifier.score(outputs["source_test"][1].numpy(), splits["source_test"]["labels"])
                ),
                "probe_target_accuracy": float(
                    classifier.score(outputs["target"][1].numpy(), splits["target"]["labels"])
                ),
            }
        )
    return sorted(table, key=lambda row: -row["score"])


def run_experiment(config: ExperimentConfig, *, hard_prompts: bool = True) -> dict[str, Any]:
    """The whole experiment: data, soft-prompt DG table, hard-prompt ranking. Returns a JSON-ready dict."""
    torch.manual_seed(0)
    torch.set_num_threads(config.num_threads)
    encoder, tokenizer = load_text_encoder()
    splits = build_splits(config, seed=0)
    start = time.perf_counter()
    result: dict[str, Any] = {
        "config": asdict(config),
        "labels": list(LABELS),
        "domains": [list(d) for d in DOMAINS],
        "sizes": {name: len(s["texts"]) for name, s in splits.items()},
        "torch_threads": torch.get_num_threads(),
    }
    result["soft_prompt"] = run_soft_prompt_dg(config, encoder, tokenizer, splits)
    if hard_prompts:
        ranking = run_hard_prompt_ranking(config, encoder, tokenizer, splits)
        from scipy.stats import spearmanr

        rho = spearmanr([r["score"] for r in ranking], [r["probe_target_accuracy"] for r in ranking])
        result["hard_prompt_ranking"] = ranking
        result["hard_prompt_spearman_score_vs_target"] = float(rho.statistic)
    result["seconds"] = time.perf_counter() - start
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """The DG table and the hard-prompt ranking as markdown."""
    config = result["config"]
    target = DOMAINS[config["target_domain"]]
    lines = [
        "# Concentration: multi-source domain generalisation (Debian fortunes, MiniLM-L6)",
        "",
        f"Labels {', '.join(LABELS)}; target domain {config['target_domain']} = "
        f"{', '.join(target)} (unseen); "
        f"sizes {result['sizes']}; {len(config['seeds'])} seeds; prompt length {config['prompt_length']}; "
        f"{config['steps']} steps of {config['batch_size']}; "
        f"strength over layers {config['concentration_layers']}; "
        f"loss weights reweight {config['reweight']}, strength {config['strength_weight']}, "
        f"fluctuation {config['fluctuation_weight']}. Mean ± std over seeds.",
        "",
        "| method | source acc | target acc | source strength | target strength | target fluctuation |",
        "|---|---|---|---|---|---|",
    ]
    for method, s in result["soft_prompt"]["summary"].items():

        def cell(key: str, digits: int = 3, s: dict = s) -> str:
            return f"{s[key]['mean']:.{digits}f} ± {s[key]['std']:.{digits}f}"

        fluct = s["target_fluctuation"]
        lines.append(
            f"| {method} | {cell('source_accuracy')} | {cell('target_accuracy')} | "
            f"{cell('source_strength', 4)} | "
            f"{cell('target_strength', 4)} | {fluct['mean']:.2e} ± {fluct['std']:.1e} |"
        )
    if "hard_prompt_ranking" in result:
        lines += [
            "",
            f"Hard prompts ranked by global concentration score (mean − {config['beta']}·std of strength "
            "over the source training texts); probe = logistic regression on the prompted [CLS] feature, "
            "trained on source.",
            "",
            "| rank | prompt | score | strength | fluctuation | probe source acc | probe target acc |",
            "|---|---|---|---|---|---|---|",
        ]
        for rank, row in enumerate(result["hard_prompt_ranking"], 1):
            lines.append(
                f"| {rank} | {row['prompt']} | {row['score']:.4f} | {row['strength']:.4f} | "
                f"{row['fluctuation']:.2e} | {row['probe_source_accuracy']:.3f} | "
                f"{row['probe_target_accuracy']:.3f} |"
            )
        lines += [
            "",
            f"Spearman(score, probe target acc) = {result['hard_prompt_spearman_score_vs_target']:.3f}",
        ]
    lines += ["", f"Total time {result['seconds']:.0f} s on {result['torch_threads']} threads."]
    return "\n".join(lines) + "\n"

"""AdamW parameter groups: weight decay on weight matrices only.

Decoupled weight decay pulls a parameter toward 0. That is a prior for weight matrices, but not for biases, norm
scales, or DAAM's offsets and spreads: decay would pull a DAAM spread (initialised at 2) toward 0, i.e. toward a
sharper gate than the model chose. So, as nanoGPT's ``configure_optimizers`` and timm's ``param_groups_weight_decay``
do, a parameter is decayed only when it is a matrix (``ndim >= 2``), is not a DAAM density parameter, and is not
listed by its module's ``no_weight_decay()``. LoRA+ puts its ``B`` matrices at a higher learning rate
(``lr_scale``); groups are split by (decay, lr scale).

Example:
    >>> from densattn.heads import build_head
    >>> groups = optimizer_groups(build_head("daam", 7, 16, 3), lr=1e-3, weight_decay=0.01)
    >>> [(g["name"], g["weight_decay"]) for g in groups]
    [('decay', 0.01), ('no_decay', 0.0)]
    >>> "attention.spread" in groups[1]["param_names"]
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["describe_groups", "optimizer_groups"]


def _no_decay_names(model: nn.Module) -> set[str]:
    from densattn.attention.density import DensityAdaptiveAttention

    names: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        listed = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
        for name, p in module.named_parameters(recurse=False):
            if p.ndim < 2 or name in listed or isinstance(module, DensityAdaptiveAttention):
                names.add(prefix + name)
    return names


def optimizer_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    lr_scale: Callable[[str], float] | None = None,
) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``model``'s trainable parameters (every one in exactly one group).

    Args:
        model: the module to optimise.
        lr: base learning rate.
        weight_decay: decay of the decayed group.
        lr_scale: ``name -> factor`` of the learning rate (e.g. LoRA+'s ratio for ``lora_B``); default 1.

    Returns:
        ``[{"params", "param_names", "lr", "weight_decay", "name"}, ...]``; ``name`` is ``decay`` / ``no_decay``,
        suffixed ``@xS`` for an lr scale S != 1.

    Raises:
        ValueError: the model has no trainable parameter.

    Example:
        Matrices are decayed, biases and norm scales are not; a LoRA+-style scale splits off a faster group:

        >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        >>> _ = model[2].weight.requires_grad_(False)  # frozen: in no group
        >>> faster = lambda name: 4.0 if name == "1.weight" else 1.0
        >>> groups = optimizer_groups(model, lr=1e-3, weight_decay=0.1, lr_scale=faster)
        >>> for g in groups:
        ...     print(g["name"], g["lr"], g["weight_decay"], g["param_names"])
        decay 0.001 0.1 ['0.weight']
        no_decay 0.001 0.0 ['0.bias', '1.bias', '2.bias']
        no_decay@x4 0.004 0.0 ['1.weight']
    """
    no_decay = _no_decay_names(model)
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = name not in no_decay
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        key = (decay, scale)
        if key not in groups:
            label = ("decay" if decay else "no_decay") + (f"@x{scale:g}" if scale != 1.0 else "")
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "weight_decay": weight_decay if decay else 0.0,
                "name": label,
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters; nothing to optimise")
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], k[1]))]


def describe_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-ready description of :func:`optimizer_groups` (names, lr, decay, parameter counts), for run configs.

    Example:
        >>> groups = optimizer_groups(nn.Linear(3, 2), lr=1e-2, weight_decay=0.05)
        >>> for g in describe_groups(groups):
        ...     print(g)
        {'name': 'decay', 'lr': 0.01, 'weight_decay': 0.05, 'num_params': 6, 'param_names': ['weight']}
        {'name': 'no_decay', 'lr': 0.01, 'weight_decay': 0.0, 'num_params': 2, 'param_names': ['bias']}
    """
    return [
        {
            "name": g["name"],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
            "num_params": int(sum(p.numel() for p in g["params"])),
            "param_names": list(g["param_names"]),
        }
        for g in groups
    ]

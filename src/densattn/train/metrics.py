"""Classification metrics and losses."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, f1_score
from torch import Tensor


def focal_loss(logits: Tensor, target: Tensor, *, alpha: float = 0.25, gamma: float = 2.5) -> Tensor:
    """Focal loss (Lin et al. 2017, arXiv 1708.02002): ``mean(-alpha (1 - p_t)^gamma log p_t)``.

    ``p_t`` is the softmax probability of the true class; ``gamma = 0`` gives ``alpha`` times cross-entropy.

    Shapes:
        ``logits (B, C)``, ``target (B,)`` int64 -> a scalar.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
        >>> torch.allclose(focal_loss(logits, target, alpha=1.0, gamma=0.0), F.cross_entropy(logits, target))
        True
        >>> p_t = logits.softmax(-1)[:, 0]
        >>> torch.allclose(focal_loss(logits, target), (-0.25 * (1 - p_t) ** 2.5 * p_t.log()).mean())
        True
    """
    log_p = F.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return (-alpha * (1 - log_p.exp()).pow(gamma) * log_p).mean()


def classification_loss(logits: Tensor, target: Tensor, kind: str = "ce", **focal) -> Tensor:
    """Cross-entropy or focal loss; ``logits (B, C)`` or per-layer ``(B, L, C)`` (losses summed over layers)."""
    if logits.dim() == 3:
        return sum(classification_loss(logits[:, i], target, kind, **focal) for i in range(logits.shape[1]))
    if kind == "ce":
        return F.cross_entropy(logits, target)
    if kind == "focal":
        return focal_loss(logits, target, **focal)
    raise ValueError(f"loss must be 'ce' or 'focal', got {kind!r}")


def classification_metrics(y_true, y_pred, num_classes: int) -> dict:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix (rows = true class).

    Example:
        >>> m = classification_metrics([0, 0, 1, 2], [0, 1, 1, 1], num_classes=3)
        >>> m["accuracy"], m["confusion_matrix"]
        (0.5, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])
        >>> [round(f, 3) for f in m["per_class_f1"]], round(m["macro_f1"], 3)
        ([0.667, 0.5, 0.0], 0.389)
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(num_classes))
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class_f1": [float(v) for v in f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def accuracy(logits: Tensor, target: Tensor) -> float:
    return float((logits.argmax(-1) == target).float().mean())

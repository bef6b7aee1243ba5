"""Plots of a run: training curves and the confusion matrix (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from densattn.io import save_figure  # noqa: E402

__all__ = ["plot_confusion", "plot_curves", "plt", "save_figure"]


def plot_curves(histories: list[list[dict]], path: Path, *, title: str = "training curves") -> None:
    """Training loss and validation accuracy per epoch, one line per fold.

    Example:
        >>> import tempfile
        >>> history = [{"epoch": e, "train_loss": 1 / e, "val_accuracy": 0.5 + e / 10} for e in (1, 2, 3)]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_curves([history, history[:2]], Path(folder) / "curves.png")
        ...     (Path(folder) / "curves.png").stat().st_size > 1000, plt.get_fignums()
        (True, [])
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for k, hist in enumerate(histories):
        epochs = [h["epoch"] for h in hist]
        ax1.plot(epochs, [h["train_loss"] for h in hist], label=f"fold {k}")
        ax2.plot(epochs, [h["val_accuracy"] for h in hist], label=f"fold {k}")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="validation accuracy", title="validation")
    ax2.legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, *, title: str = "confusion matrix") -> None:
    """Row-normalised confusion matrix with counts: cell ``(i, j)`` is coloured by ``M[i, j] / sum_j M[i, j]``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_confusion(np.array([[5, 1], [0, 4]]), ["neg", "pos"], Path(folder) / "confusion.png")
        ...     (Path(folder) / "confusion.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    matrix = np.asarray(matrix)
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(3.5, 0.55 * len(classes) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)

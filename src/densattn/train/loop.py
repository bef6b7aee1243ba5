"""Training loop for heads on cached features: AdamW, ReduceLROnPlateau on the validation metric, early stopping,
gradient clipping, best/last checkpoints and exact resume."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from densattn.train.metrics import classification_loss


@dataclass
class TrainConfig:
    """Optimisation settings (DESIGN.md §3)."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    loss: str = "ce"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.5
    grad_clip: float = 1.0
    early_stopping: int = 8
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "early_stopping"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.loss not in ("ce", "focal"):
            raise ValueError(f"loss must be 'ce' or 'focal', got {self.loss!r}")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available here; use --device cpu (or auto)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Logits of ``model`` (eval mode) for ``x``, batch by batch on the model's device, returned on the CPU."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def _val_scores(logits: Tensor, y: Tensor) -> Tensor:
    """Validation accuracy, per layer for a selecting probe's ``(N, L, C)`` logits."""
    return (logits.argmax(-1) == (y if logits.dim() == 2 else y[:, None])).float().mean(0)


def train_model(
    model: nn.Module,
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    config: TrainConfig,
    *,
    state_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` and return ``{"history", "best_epoch", "best_val_accuracy", "best_state", "last_state",
    "selected_layer"}``; the model is left holding the best validation state.

    With ``state_path``, the full training state (model, optimiser, scheduler, RNGs, history) is saved after every
    epoch; ``resume=True`` continues from it and gives the same result as an uninterrupted run.
    ``stop_after_epochs`` stops early (to simulate an interruption in tests).
    """
    from tqdm.auto import tqdm

    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError("training and validation splits must be non-empty; raise --max-samples or lower --folds")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model.to(device)
    use_amp = config.amp and device.type == "cuda"  # mixed precision on GPU; plain float32 on CPU
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
    )
    history: list[dict[str, float]] = []
    best = {"score": -1.0, "epoch": -1, "state": copy.deepcopy(model.state_dict()), "layer_scores": None}
    bad_epochs, start_epoch = 0, 0
    path = Path(state_path) if state_path is not None else None
    if resume and path is not None and path.exists():
        state = torch.load(path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        history, best, bad_epochs, start_epoch = state["history"], state["best"], state["bad_epochs"], state["epoch"]
    focal = {"alpha": config.focal_alpha, "gamma": config.focal_gamma} if config.loss == "focal" else {}
    n = len(train_x)
    bar = tqdm(range(start_epoch, config.epochs), desc="train", disable=not progress, leave=False)
    for epoch in bar:
        if bad_epochs >= config.early_stopping:
            break
        model.train()
        order = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm needs > 1 example; fold the straggler into nothing
                continue
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(train_x[idx].to(device))
                loss = classification_loss(logits.float(), train_y[idx].to(device), config.loss, **focal)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        scores = _val_scores(predict_logits(model, val_x), val_y)
        score = float(scores.max())
        scheduler.step(score)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / max(seen, 1),
                "val_accuracy": score,
                "lr": optimizer.param_groups[0]["lr"],
            }
        )
        if score > best["score"]:
            best = {
                "score": score,
                "epoch": epoch + 1,
                "state": copy.deepcopy(model.state_dict()),
                "layer_scores": scores.tolist() if scores.dim() else None,
            }
            bad_epochs = 0
        else:
            bad_epochs += 1
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{score:.3f}")
        if path is not None:
            _atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "scaler": scaler.state_dict(),
                    "history": history,
                    "best": best,
                    "bad_epochs": bad_epochs,
                    "epoch": epoch + 1,
                    "config": config.to_dict(),
                },
                path,
            )
        if stop_after_epochs is not None and epoch + 1 >= stop_after_epochs:
            return {"interrupted": True, "history": history}
    bar.close()
    model.to("cpu")
    last_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best["state"])
    selected = None
    if best["layer_scores"] is not None and hasattr(model, "select_layer"):
        selected = int(torch.tensor(best["layer_scores"]).argmax())
        model.select_layer(selected)
    return {
        "history": history,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["score"],
        "best_state": best["state"],
        "last_state": last_state,
        "selected_layer": selected,
        "interrupted": False,
    }

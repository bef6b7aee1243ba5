"""The one training loop: heads, fusion heads and end-to-end tuned encoders all train here.

AdamW (parameter groups of :mod:`densattn.train.optim`), ReduceLROnPlateau on the validation accuracy, early
stopping, gradient clipping after unscaling, mixed precision on CUDA, an atomic checkpoint after every epoch and an
exact resume from it. The loop has no global side effects: randomness (batch order, dropout) comes from a local
generator and a forked RNG seeded with ``config.seed``, and the model stays on the device it was trained on.

Data-parallel training (``dist=`` a :class:`~densattn.distributed.Distributed` of several ranks, under ``torchrun``):
every rank draws the same batch order, takes its contiguous part of every batch and runs the model wrapped in
``DistributedDataParallel``, which averages the gradients; each rank's loss is weighted by its share of the batch,
so the update is that of the whole batch's mean loss. Validation is split across the ranks the same way. Rank 0
writes the checkpoint (with every rank's RNG state); resuming needs the same number of ranks.

Checkpoints hold tensors and plain values only and are read with ``torch.load(weights_only=True)``, so a run
directory from someone else cannot run code on this machine.
"""

from __future__ import annotations

import math
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from densattn.distributed import Distributed, rank_seed
from densattn.io import atomic_torch_save
from densattn.train.config import TrainConfig
from densattn.train.inputs import Inputs
from densattn.train.metrics import classification_loss
from densattn.train.optim import optimizer_groups

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "check_trainable",
    "load_checkpoint",
    "predict_logits",
    "train_model",
]


class NonFiniteLossError(ValueError):
    """Training produced a NaN/inf loss or parameter; nothing of that epoch is saved.

    Example:
        >>> x, y = torch.tensor([[1e38, -1e38]]).repeat(8, 1), torch.tensor([0, 1] * 4)
        >>> train_model(nn.Linear(2, 2), x, y, x, y, TrainConfig(epochs=1, lr=1e3, batch_size=4))
        Traceback (most recent call last):
        ...
        densattn.train.loop.NonFiniteLossError: ...
        >>> issubclass(NonFiniteLossError, ValueError)
        True
    """


@dataclass
class TrainResult:
    """What :func:`train_model` returns.

    Attributes:
        history: one dict per epoch (``epoch``, ``train_loss``, ``val_accuracy``, ``lr``, ``seconds``).
        best_epoch: epoch (1-based) of the best validation score; the model holds that state on return.
        best_score: that validation score (accuracy; the best layer's for a selecting probe).
        best_state: the model's adapter state at ``best_epoch``.
        last_state: the state after the last epoch.
        seconds: training time of this call plus that of the resumed checkpoint.
        groups: the optimiser groups (:func:`~densattn.train.optim.describe_groups`).

    Example:
        >>> x = torch.randn(24, 3, generator=torch.Generator().manual_seed(0))
        >>> y = (x[:, 0] > 0).long()
        >>> result = train_model(nn.Linear(3, 2), x[:16], y[:16], x[16:], y[16:], TrainConfig(epochs=3, lr=0.1))
        >>> [h["epoch"] for h in result.history], sorted(result.best_state), result.groups[0]["name"]
        ([1, 2, 3], ['bias', 'weight'], 'decay')
        >>> result.best_score == max(h["val_accuracy"] for h in result.history)
        True
    """

    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    best_state: dict[str, Tensor]
    last_state: dict[str, Tensor]
    seconds: float
    groups: list[dict[str, Any]] = field(default_factory=list)


def _state(model: nn.Module) -> dict[str, Tensor]:
    if hasattr(model, "adapter_state_dict"):
        return model.adapter_state_dict()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _load_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    if hasattr(model, "load_adapter_state_dict"):
        model.load_adapter_state_dict(state)
    else:
        model.load_state_dict(state)


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def predict_logits(
    model: nn.Module, inputs: Inputs | Tensor, *, batch_size: int = 256, dist: Distributed | None = None
) -> Tensor:
    """Logits of ``model`` (eval mode) for every example of ``inputs``, in order, as float32 on the CPU.

    With ``dist`` of several ranks, each rank predicts every ``world_size``-th batch and every rank gets all logits
    (the batches are the same as in one process, so are the logits). Logits stay on the device until the end: one
    copy to the host, not one per batch.

    Shapes:
        ``inputs (N, ...)`` -> logits ``(N, C)`` (a selecting probe: ``(N, L, C)``), in the order of ``inputs``.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> x = torch.randn(10, 3)
        >>> logits = predict_logits(model, x, batch_size=4)
        >>> logits.shape, torch.allclose(logits, model(x)), model.training
        (torch.Size([10, 2]), True, False)
    """
    inputs = inputs if isinstance(inputs, Inputs) else Inputs(inputs)
    model.eval()
    device = _device(model)
    batches = inputs.eval_batches(batch_size)
    mine = dist.share(batches) if dist is not None else batches
    parts = [model(inputs.batch(index, device)).float() for index in mine]
    order = torch.cat(mine) if mine else torch.zeros(0, dtype=torch.long)
    logits = torch.cat(parts).cpu() if parts else None
    if dist is not None and dist.enabled:
        gathered = [(o, l) for o, l in dist.all_gather((order, logits)) if l is not None]
        order, logits = torch.cat([o for o, _ in gathered]), torch.cat([l for _, l in gathered])
    out = torch.empty_like(logits)
    out[order] = logits
    return out


def _scores(logits: Tensor, y: Tensor) -> Tensor:
    """Validation accuracy; per layer for a selecting probe's ``(N, L, C)`` logits."""
    return (logits.argmax(-1) == (y if logits.dim() == 2 else y[:, None])).float().mean(0)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)``.

    Only a torch zip archive is handed to the (restricted) unpickler; anything else is refused unread.

    Raises:
        ValueError: the file is not a densattn checkpoint: not a torch archive (empty, truncated, other bytes), or
            it holds Python objects that safe loading refuses (nothing in it is executed). The message names the
            file and says how to continue.

    Example:
        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = pathlib.Path(tmp.name)
        >>> torch.save({"epoch": 2, "model": {"w": torch.zeros(2)}}, folder / "state.pt")
        >>> load_checkpoint(folder / "state.pt")["epoch"]
        2
        >>> _ = (folder / "cut.pt").write_bytes((folder / "state.pt").read_bytes()[:50])
        >>> load_checkpoint(folder / "cut.pt")
        Traceback (most recent call last):
        ...
        ValueError: .../cut.pt is not a torch checkpoint archive (empty, truncated or overwritten); delete it and ...
        >>> tmp.cleanup()
    """
    path = Path(path)
    fix = "delete it and rerun with --resume: this fold then restarts from its first epoch"
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a torch checkpoint archive (empty, truncated or overwritten); {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line for line in str(err).splitlines() if "GLOBAL" in line), str(err).splitlines()[0])
        raise ValueError(
            f"refusing to load {path}: it holds Python objects that safe loading (weights_only) does not allow, so "
            f"it was not written by densattn and was not executed ({detail.strip()[:160]}); {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError) as err:
        raise ValueError(f"{path} is not a readable checkpoint ({str(err).splitlines()[0][:160]}); {fix}") from None


def check_trainable(model: nn.Module, config: TrainConfig) -> None:
    """Refuse settings that cannot train ``model``: ``batch_size=1`` with BatchNorm layers (one example has no
    batch statistics).

    Raises:
        ValueError: the message names ``--batch-size`` and the fix.

    Example:
        >>> bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        >>> check_trainable(bn, TrainConfig(batch_size=1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: batch_size=1 cannot train this model: it has BatchNorm, ...
    """
    if config.batch_size == 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(
            "batch_size=1 cannot train this model: it has BatchNorm, which needs at least 2 examples per batch; "
            "use --batch-size 2 or more"
        )


def train_model(
    model: nn.Module,
    train: Inputs | Tensor,
    train_y: Tensor,
    val: Inputs | Tensor,
    val_y: Tensor,
    config: TrainConfig,
    *,
    groups: list[dict[str, Any]] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    dist: Distributed | None = None,
) -> TrainResult:
    """Train ``model`` on ``train`` with model selection on ``val``; the model is left holding the best state.

    Args:
        model: the module (an adapter: its ``adapter_state_dict`` is what checkpoints hold).
        train, val: model inputs (:class:`~densattn.train.Inputs`, or one tensor); ``train_y``, ``val_y`` their
            labels ``(N,)``.
        config: optimisation settings (``config.seed`` seeds batch order and dropout).
        groups: AdamW parameter groups (default :func:`~densattn.train.optim.optimizer_groups`).
        checkpoint: where to save the full training state after every epoch (atomically).
        resume: continue from ``checkpoint`` when it exists: the result equals an uninterrupted run.
        progress: show a progress bar.
        dist: train data-parallel over these ranks (every rank calls this with the same arguments; see the module
            docstring); ``None`` trains in this process alone.

    Shapes:
        ``train (N, ...)``, ``train_y (N,)`` int64 in ``[0, C)``; ``val (M, ...)``, ``val_y (M,)``; the model maps a
        batch ``(B, ...)`` to logits ``(B, C)``.

    Raises:
        ValueError: empty splits, a model that cannot train with these settings, fewer examples per batch than
            ranks, or a checkpoint written by another number of ranks.
        NonFiniteLossError: the loss or a parameter became NaN/inf (lower the learning rate); nothing of the
            failing epoch is saved.

    Example:
        A linearly separable toy problem; resuming from the checkpoint of a 2-epoch run gives the 4-epoch run:

        >>> import copy, tempfile, pathlib
        >>> x = torch.randn(48, 4, generator=torch.Generator().manual_seed(0))
        >>> y = (x[:, 0] + x[:, 1] > 0).long()
        >>> cfg = TrainConfig(epochs=4, lr=0.3, batch_size=8)
        >>> with torch.random.fork_rng():  # a fixed initialisation, without touching the global RNG
        ...     _ = torch.manual_seed(0)
        ...     full = nn.Linear(4, 2)
        >>> part = copy.deepcopy(full)  # the same initialisation, trained in two calls below
        >>> result = train_model(full, x[:32], y[:32], x[32:], y[32:], cfg)
        >>> len(result.history), result.best_epoch, result.best_score  # val accuracy of 16 examples
        (4, 2, 0.875)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     state = pathlib.Path(folder) / "state.pt"
        ...     _ = train_model(part, x[:32], y[:32], x[32:], y[32:], cfg.replace(epochs=2), checkpoint=state)
        ...     resumed = train_model(part, x[:32], y[:32], x[32:], y[32:], cfg, checkpoint=state, resume=True)
        >>> torch.equal(part.weight, full.weight), resumed.best_epoch == result.best_epoch
        (True, True)
    """
    from tqdm.auto import tqdm

    train = train if isinstance(train, Inputs) else Inputs(train)
    val = val if isinstance(val, Inputs) else Inputs(val)
    if len(train) == 0 or len(val) == 0:
        raise ValueError("training and validation splits must be non-empty; raise --max-samples or lower --folds")
    if len(train) != len(train_y) or len(val) != len(val_y):
        raise ValueError("inputs and labels must have the same number of examples")
    check_trainable(model, config)
    dist = dist if dist is not None and dist.enabled else None
    if dist is not None and config.batch_size < dist.world_size:
        raise ValueError(
            f"--batch-size {config.batch_size} is smaller than the {dist.world_size} ranks that share every batch; "
            f"use --batch-size {dist.world_size} or more"
        )
    device = torch.device(config.device)
    model.to(device)
    net = dist.data_parallel(model) if dist is not None else model
    train, val = train.to(device), val.to(device)  # resident on the GPU when they fit: no copies per batch
    train_y, val_y = train_y.to(device), val_y.cpu()
    use_amp = config.amp and device.type == "cuda"  # mixed precision on GPU; plain float32 on CPU
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    groups = groups if groups is not None else optimizer_groups(model, lr=config.lr, weight_decay=config.weight_decay)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
    )
    focal = {"alpha": config.focal_alpha, "gamma": config.focal_gamma} if config.loss == "focal" else {}
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "state": _state(model)}
    bad_epochs, start_epoch, seconds_before = 0, 0, 0.0
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    path = Path(checkpoint) if checkpoint is not None else None
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    with torch.random.fork_rng(devices=devices):  # dropout draws from a forked RNG: no global side effect
        torch.manual_seed(rank_seed(config.seed, rank))  # ranks drop out differently; rank 0 as one process
        if resume and path is not None and path.exists():
            state = load_checkpoint(path)
            if state.get("world_size", 1) != world:
                raise ValueError(
                    f"--resume: {path} was written by a run on {state.get('world_size', 1)} rank(s), this one has "
                    f"{world}; resume with the same number of processes (torchrun --nproc-per-node ...), since "
                    "another count splits every batch differently and could not continue the run exactly"
                )
            try:
                _load_state(model, state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                scaler.load_state_dict(state["scaler"])
                generator.set_state(state["generator"])
                cpu_rng, cuda_rng = state.get("rank_rng", [(state["torch_rng"], state.get("cuda_rng"))])[rank]
                torch.set_rng_state(cpu_rng)
                if devices and cuda_rng is not None:
                    torch.cuda.set_rng_state(cuda_rng, device)
                history, bad_epochs, start_epoch = state["history"], state["bad_epochs"], state["epoch"]
                best = {"score": state["best_score"], "epoch": state["best_epoch"], "state": state["best_state"]}
                seconds_before = state.get("seconds", 0.0)
            except (KeyError, TypeError, RuntimeError, ValueError) as err:  # another model's or a hand-made file
                raise ValueError(
                    f"{path} does not fit this run ({type(err).__name__}: {str(err).splitlines()[0][:160]}); delete "
                    "it and rerun with --resume: this fold then restarts from its first epoch"
                ) from None
        t0 = time.perf_counter()
        bar = tqdm(range(start_epoch, config.epochs), desc="train", disable=not progress or rank > 0, leave=False)
        for epoch in bar:
            if bad_epochs >= config.early_stopping:
                break
            model.train()
            total = torch.zeros((), device=device)
            for idx in train.train_batches(config.batch_size, generator):
                idx, weight = dist.batch_share(idx) if dist is not None else (idx, 1.0)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = net(train.batch(idx, device))
                    target = train_y[idx.to(device, non_blocking=True)]
                    loss = classification_loss(logits.float(), target, config.loss, **focal)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss * weight if dist is not None else loss).backward()  # DDP averages over ranks
                scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                try:
                    scaler.step(optimizer)
                except RuntimeError as err:  # AdamW's step size lr / (1 - beta1^t) overflows float32
                    if "overflow" not in str(err):
                        raise
                    raise NonFiniteLossError(
                        f"training diverged at epoch {epoch + 1}: the optimiser step overflows float32 "
                        f"(lr={config.lr:g}); lower --lr. Nothing of this epoch was saved"
                    ) from None
                scaler.update()
                total += loss.detach() * (len(idx) if weight else 0)
            if dist is not None:
                dist.all_reduce_sum(total)
            train_loss = float(total) / len(train)  # one device sync per epoch
            finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
            if not (math.isfinite(train_loss) and bool(finite)):
                what = f"the loss is {train_loss}" if not math.isfinite(train_loss) else "a parameter is NaN/inf"
                raise NonFiniteLossError(
                    f"training diverged at epoch {epoch + 1}: {what} (lr={config.lr:g}); lower --lr. Nothing of "
                    "this epoch was saved"
                )
            scores = _scores(predict_logits(model, val, dist=dist), val_y)
            score = float(scores.max())
            scheduler.step(score)
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "val_accuracy": score,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": seconds_before + time.perf_counter() - t0,
                }
            )
            if score > best["score"]:
                best = {"score": score, "epoch": epoch + 1, "state": _state(model)}
                bad_epochs = 0
            else:
                bad_epochs += 1
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{score:.3f}")
            rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if devices else None)
            rank_rng = dist.all_gather(rng) if dist is not None else [rng]  # every rank's dropout stream
            if path is not None and rank == 0:
                atomic_torch_save(
                    {
                        "model": _state(model),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "rank_rng": rank_rng,
                        "world_size": world,
                        "cuda_rng": torch.cuda.get_rng_state(device) if devices else None,
                        "history": history,
                        "best_score": best["score"],
                        "best_epoch": best["epoch"],
                        "best_state": best["state"],
                        "bad_epochs": bad_epochs,
                        "epoch": epoch + 1,
                        "seconds": seconds_before + time.perf_counter() - t0,
                        "config": config.to_dict(),
                    },
                    path,
                )
        bar.close()
    last_state = _state(model)
    _load_state(model, best["state"])
    return TrainResult(
        history=history,
        best_epoch=best["epoch"],
        best_score=best["score"],
        best_state=best["state"],
        last_state=last_state,
        seconds=seconds_before + time.perf_counter() - t0,
        groups=groups,
    )

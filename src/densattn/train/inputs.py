"""Model inputs for the training loop: one tensor (cached features) or a dict of tensors (prepared raw inputs).

:class:`Inputs` knows how to cut itself into batches: shuffled slices for training, or — for text, where
``lengths`` are given — batches of similar length (within pools of 16 batches, then shuffled), so little compute
goes to padding; and how to move a batch to a device (the whole inputs once when they fit, else each batch through
pinned memory with a non-blocking copy).

Example:
    >>> import torch
    >>> inputs = Inputs(torch.arange(10.0).view(5, 2))
    >>> [b.tolist() for b in inputs.train_batches(2, torch.Generator().manual_seed(0))]
    [[4, 0], [1, 3, 2]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from densattn.distributed import to_device

__all__ = ["Inputs"]


@dataclass
class Inputs:
    """Model inputs of N examples.

    Attributes:
        data: a tensor ``(N, ...)`` or a dict of tensors ``(N, ...)`` (e.g. ``input_ids``, ``attention_mask``).
        lengths: optional ``(N,)`` sequence lengths; batches then group examples of similar length.

    Example:
        Text inputs: a batch is trimmed to its longest sequence, and the eval batches go by length.

        >>> ids = torch.tensor([[5, 6, 7, 0], [5, 0, 0, 0], [5, 6, 0, 0]])
        >>> inputs = Inputs({"input_ids": ids, "attention_mask": ids > 0}, lengths=torch.tensor([3, 1, 2]))
        >>> len(inputs), [b.tolist() for b in inputs.eval_batches(2)]
        (3, [[1, 2], [0]])
        >>> inputs.batch(torch.tensor([1, 2]))["input_ids"].tolist()
        [[5, 0], [5, 6]]
        >>> inputs.select([0]).lengths.tolist(), inputs.nbytes
        ([3], 108)
    """

    data: Tensor | dict[str, Tensor]
    lengths: Tensor | None = None

    def __post_init__(self) -> None:
        sizes = {len(v) for v in self._tensors()}
        if len(sizes) != 1:
            raise ValueError(f"every input tensor must have the same number of examples, got sizes {sorted(sizes)}")
        if self.lengths is not None and len(self.lengths) != len(self):
            raise ValueError(f"lengths has {len(self.lengths)} entries for {len(self)} examples")

    def _tensors(self) -> list[Tensor]:
        return list(self.data.values()) if isinstance(self.data, dict) else [self.data]

    def __len__(self) -> int:
        return len(self._tensors()[0])

    def select(self, index: Tensor | list[int]) -> Inputs:
        """The examples at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        data = {k: v[index] for k, v in self.data.items()} if isinstance(self.data, dict) else self.data[index]
        return Inputs(data, None if self.lengths is None else self.lengths[index])

    @property
    def nbytes(self) -> int:
        """Bytes held by the input tensors."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def to(self, device: torch.device | str, *, max_bytes: int = 1 << 30) -> Inputs:
        """These inputs with their tensors moved to ``device`` once, when they fit in ``max_bytes``: every batch is
        then cut on the device, with no host-to-device copy in the training loop. Larger inputs stay on the host and
        each batch travels through pinned memory (:meth:`batch`). ``lengths`` stay on the CPU: they decide batches
        and trimming without a device sync."""
        device = torch.device(device)
        if device.type == "cpu" or self.nbytes > max_bytes:
            return self
        data = {k: v.to(device) for k, v in self.data.items()} if isinstance(self.data, dict) else self.data.to(device)
        return Inputs(data, self.lengths)

    def batch(self, index: Tensor, device: torch.device | str = "cpu") -> Tensor | dict[str, Tensor]:
        """Rows ``index`` on ``device``: cut on the device when the inputs live there (:meth:`to`), else through
        pinned memory with a non-blocking copy on CUDA. Text batches are trimmed to the longest sequence in the
        batch (from the CPU ``lengths``)."""
        device = torch.device(device)
        width = None if self.lengths is None else int(self.lengths[index].max())

        def rows(name: str | None, t: Tensor) -> Tensor:
            if t.device.type != "cpu":
                t = t[index.to(t.device, non_blocking=True)]
            else:
                t = t[index]
            if width is not None and name not in (None, "pixel_values") and t.dim() >= 2:
                t = t[:, :width]
            return to_device(t, device) if t.device.type == "cpu" else t.to(device)

        if not isinstance(self.data, dict):
            return rows(None, self.data)
        return {k: rows(k, v) for k, v in self.data.items()}

    def train_batches(self, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        """Shuffled mini-batches covering every example once. A trailing batch of a single example joins the
        previous batch (BatchNorm cannot train on one example), so no example is ever skipped."""
        n = len(self)
        order = torch.randperm(n, generator=generator)
        if self.lengths is None:
            batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        else:
            batches = []
            pool = batch_size * 16
            for start in range(0, n, pool):
                chunk = order[start : start + pool]
                chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
                batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        if batch_size == 1:
            return batches
        merged: list[Tensor] = []
        for b in batches:
            if len(b) == 1 and merged:
                merged[-1] = torch.cat([merged[-1], b])
            else:
                merged.append(b)
        if len(merged) > 1 and len(merged[0]) == 1:
            merged[1] = torch.cat([merged[0], merged[1]])
            del merged[0]
        return merged

    def eval_batches(self, batch_size: int) -> list[Tensor]:
        """Batches in order (by length for text, so little padding is computed; callers restore the order)."""
        n = len(self)
        order = torch.arange(n) if self.lengths is None else torch.argsort(self.lengths, stable=True)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]

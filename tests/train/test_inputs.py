"""Model inputs: batches are the rows asked for, text batches are trimmed to their longest sequence (never pixels),
training batches cover every example once, and moving inputs to the CPU is free."""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from densattn.train import Inputs


def test_tensor_batch_is_the_rows():
    data = torch.arange(30.0).view(10, 3)
    index = torch.tensor([7, 2, 5])
    assert torch.equal(Inputs(data).batch(index), data[index])


def test_text_batch_is_trimmed_to_its_longest_sequence():
    ids = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [6, 7, 8, 9, 1]])
    mask = (ids != 0).long()
    mask[2, -1] = 1
    lengths = mask.sum(1)
    inputs = Inputs({"input_ids": ids, "attention_mask": mask, "pixel_values": torch.ones(3, 5), "y": lengths}, lengths)
    batch = inputs.batch(torch.tensor([1, 0]))
    assert torch.equal(batch["input_ids"], ids[[1, 0], :3]) and torch.equal(batch["attention_mask"], mask[[1, 0], :3])
    assert batch["pixel_values"].shape == (2, 5) and torch.equal(batch["y"], lengths[[1, 0]])
    assert inputs.batch(torch.tensor([2]))["input_ids"].shape == (1, 5)


def test_moving_to_the_cpu_is_free_and_bytes_are_counted():
    inputs = Inputs({"a": torch.zeros(4, 3), "b": torch.zeros(4, dtype=torch.long)})
    assert inputs.to("cpu") is inputs and inputs.nbytes == 4 * 3 * 4 + 4 * 8


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), batch_size=st.integers(1, 70), text=st.booleans(), seed=st.integers(0, 10))
def test_training_batches_cover_every_example_once(n, batch_size, text, seed):
    lengths = torch.randint(1, 50, (n,), generator=torch.Generator().manual_seed(seed)) if text else None
    inputs = Inputs(torch.zeros(n, 2), lengths)
    batches = inputs.train_batches(batch_size, torch.Generator().manual_seed(seed))
    assert torch.equal(torch.sort(torch.cat(batches)).values, torch.arange(n))
    assume(batch_size > 1 and n > 1)
    assert all(len(b) > 1 for b in batches)  # no batch of one example (BatchNorm cannot train on it)

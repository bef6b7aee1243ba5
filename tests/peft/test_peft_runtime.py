"""Running a DensityModel: concurrent calls with different masks, reduced precision, and CUDA (skipped without)."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from densattn.peft import DensityConfig, DensityModel, get_density_model


def live_model(bert, **options) -> DensityModel:
    model = get_density_model(bert, DensityConfig(norm_axis="tokens", **options))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.adapter_parameters():
            p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
    return model


def test_concurrent_calls_each_see_their_own_mask(tiny_bert, batch):
    model = live_model(tiny_bert)
    ids = batch["input_ids"]
    masks = [batch["attention_mask"], torch.ones_like(batch["attention_mask"])]
    with torch.no_grad():
        expected = [model(input_ids=ids, density_mask=m).last_hidden_state for m in masks]
        assert (expected[0] - expected[1]).abs().max() > 1e-3

        def call(i):
            return model(input_ids=ids, density_mask=masks[i % 2]).last_hidden_state

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(call, range(16)))
    for i, result in enumerate(results):
        assert torch.equal(result, expected[i % 2])


def test_inner_model_called_directly_gets_no_mask(tiny_bert, batch):
    """The mask lives only for the DensityModel call: calling ``model.model`` takes the statistics over all tokens,
    padding included (as a DensityModel call with an all-True density_mask does)."""
    model = live_model(tiny_bert)
    with torch.no_grad():
        inner = model.model(**batch).last_hidden_state
        everything = model(**batch, density_mask=torch.ones_like(batch["attention_mask"])).last_hidden_state
        masked = model(**batch).last_hidden_state
    torch.testing.assert_close(inner, everything, rtol=1e-5, atol=1e-5)
    assert (inner[2, :4] - masked[2, :4]).abs().max() > 1e-3


def test_deep_copy_keeps_its_own_mask_plumbing(tiny_bert, batch):
    model = live_model(tiny_bert)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        want = model(**batch).last_hidden_state
        assert torch.equal(twin(**batch).last_hidden_state, want)
        for p in twin.adapter_parameters():
            p.mul_(0.5)
        assert not torch.equal(twin(**batch).last_hidden_state, want)
        assert torch.equal(model(**batch).last_hidden_state, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_is_identical_at_init(tiny_bert, batch, dtype):
    base = tiny_bert.to(dtype)
    reference = copy.deepcopy(base)(**batch).last_hidden_state
    model = get_density_model(base, DensityConfig(norm_axis="tokens"))
    assert all(p.dtype == torch.float32 for p in model.adapter_parameters())  # adapter weights stay float32
    assert torch.equal(model(**batch).last_hidden_state, reference)


def test_cpu_autocast(tiny_bert, batch):
    reference = copy.deepcopy(tiny_bert)
    model = get_density_model(tiny_bert, DensityConfig(norm_axis="tokens"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = reference(**batch).last_hidden_state
        got = model(**batch).last_hidden_state
        model(**batch).last_hidden_state.float().sum().backward()
    assert torch.equal(got, want)
    assert all(p.grad is not None for p in model.adapter_parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_identity_training_step_and_reload(tiny_bert, batch, tmp_path):
    device = torch.device("cuda")
    reference = copy.deepcopy(tiny_bert).to(device)
    pristine = copy.deepcopy(tiny_bert)
    batch = {k: v.to(device) for k, v in batch.items()}
    model = get_density_model(tiny_bert.to(device), DensityConfig(norm_axis="tokens"))
    assert all(p.device.type == "cuda" for p in model.adapter_parameters())
    assert torch.equal(model(**batch).last_hidden_state, reference(**batch).last_hidden_state)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.0)
    for _ in range(2):
        optimiser.zero_grad()
        model(**batch).last_hidden_state.square().mean().backward()
        optimiser.step()
    want = model(**batch).last_hidden_state
    model.save_pretrained(tmp_path)
    loaded = DensityModel.from_pretrained(pristine.to(device), tmp_path)
    assert torch.equal(loaded(**batch).last_hidden_state, want)
    with torch.autocast("cuda", dtype=torch.float16):
        assert torch.isfinite(loaded(**batch).last_hidden_state).all()

"""Registry-wide test matrix: every token mixer behind the one contract.

For each ``list_attention(kind="token_mixer")`` entry: masked and unmasked forward, float64 gradcheck, mask
invariance (padded tokens never change kept outputs), need_weights shapes, the keyword-only signature, and short
sequences with default options.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from densattn.attention.registry import allowed_options, create_attention, list_attention

D, H = 8, 2  # D is a multiple of 4 * H for the quaternion mixers
OPTIONS = {
    "softmax": {},
    "pb_relax": {"alpha": 4.0},
    "daam": {},
    "gqdaam": {},
    "quaternion_shared": {},
    "quaternion_hamilton": {},
    "clustered": {"clusters": 3, "seed": 0},
    "improved_clustered": {"clusters": 3, "topk": 3, "seed": 0},
}
MIXERS = sorted(OPTIONS)


def weights_shape(name: str, b: int, length: int) -> tuple[int, ...]:
    if name == "daam":
        return (b, length, D)
    if name == "quaternion_hamilton":
        return (b, 4, H, length, length)
    return (b, H, length, length)


def build(name: str, dtype=torch.float32, **extra):
    torch.manual_seed(0)
    return create_attention(name, embed_dim=D, num_heads=H, dtype=dtype, **{**OPTIONS[name], **extra}).eval()


def padding_mask(b: int, length: int) -> torch.Tensor:
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, length - 3 :] = False  # the second sequence has 3 padded tokens
    return mask


def test_the_matrix_covers_every_token_mixer():
    assert set(OPTIONS) == set(list_attention(kind="token_mixer"))


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("masked", [False, True])
def test_forward_and_weights_shapes(name, masked):
    mixer = build(name)
    x = torch.randn(2, 7, D)
    mask = padding_mask(2, 7) if masked else None
    y = mixer(x, mask=mask)
    y2, weights = mixer(x, mask=mask, need_weights=True)
    assert y.shape == (2, 7, D) and torch.isfinite(y).all()
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-5)  # the weights path computes the same output
    assert weights.shape == weights_shape(name, 2, 7)
    if masked and name != "daam":  # attention maps give padded keys no weight
        assert weights[1, ..., 4:].abs().max() == 0


@pytest.mark.parametrize("name", MIXERS)
def test_contract_is_keyword_only(name):
    params = inspect.signature(build(name).forward).parameters
    assert params["mask"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["need_weights"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("name", MIXERS)
def test_mask_invariance(name):
    """Changing padded tokens (mask False) does not change the outputs of kept tokens."""
    mixer = build(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, D, generator=g)
    mask = padding_mask(2, 9)
    x_other = torch.where(mask[..., None], x, 100 * torch.randn(2, 9, D, generator=g))
    y, y_other = mixer(x, mask=mask), mixer(x_other, mask=mask)
    torch.testing.assert_close(y[mask], y_other[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MIXERS)
def test_gradcheck_float64(name):
    mixer = build(name, dtype=torch.float64)
    x = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    assert torch.autograd.gradcheck(lambda t: mixer(t, mask=mask), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", MIXERS)
def test_default_options_work_on_short_sequences(name):
    mixer = create_attention(name, embed_dim=D, num_heads=H)  # e.g. clustered asks for 100 clusters, L = 3
    y = mixer(torch.randn(2, 3, D), mask=torch.tensor([[True] * 3, [True, True, False]]))
    assert y.shape == (2, 3, D) and torch.isfinite(y).all()


def test_softmax_mixer_matches_a_literal_reference():
    mixer = build("softmax", dtype=torch.float64)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    mask = padding_mask(2, 6)
    q, k, v = mixer.qkv_proj(x).split(D, dim=-1)

    def heads(t):  # (B, L, D) -> (B, H, L, d)
        return t.view(2, 6, H, D // H).transpose(1, 2)

    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(D // H)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    ref = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(2, 6, D)
    torch.testing.assert_close(mixer(x, mask=mask), mixer.out_proj(ref))


def test_pb_relax_mixer_equals_softmax_mixer_in_float64():
    softmax, relaxed = build("softmax", dtype=torch.float64), build("pb_relax", dtype=torch.float64)
    relaxed.load_state_dict(softmax.state_dict())
    x = 30 * torch.randn(2, 6, D, dtype=torch.float64)
    mask = padding_mask(2, 6)
    torch.testing.assert_close(relaxed(x, mask=mask), softmax(x, mask=mask))


def test_daam_mixer_gate_uses_kept_token_statistics_only():
    """The gate is the DAAM density of the value projection over the kept tokens (literal reference)."""
    mixer = build("daam", dtype=torch.float64)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    mask = padding_mask(2, 6)
    _, gate = mixer(x, mask=mask, need_weights=True)
    v = mixer.value_proj(x)
    for b in range(2):
        kept = v[b, mask[b]]  # (n, D)
        z = (kept - kept.mean(0) - mixer.density.mean_offset[0, 0]) / (kept.var(0, unbiased=False) + 1e-5).sqrt()
        torch.testing.assert_close(gate[b, mask[b]], torch.exp(-(z**2) / (2 * mixer.density.spread[0, 0])))


def test_registry_errors_name_the_fix():
    with pytest.raises(ValueError, match="accepted: .*clusters"):
        create_attention("clustered", embed_dim=D, num_heads=H, num_clusters=4)
    with pytest.raises(ValueError, match="needs \\['num_heads'\\]"):
        create_attention("softmax", embed_dim=D)
    with pytest.raises(ValueError, match="unknown argument"):
        create_attention("quaternion_shared", embed_dim=D, num_heads=H, mode="hamilton")  # fixed by the entry
    with pytest.raises(ValueError, match="kind must be one of"):
        list_attention(kind="mixer")
    with pytest.raises(ValueError, match="registered as"):
        create_attention("softmax", kind="fusion", embed_dim=D, num_heads=H)
    assert "alpha" in allowed_options("pb_relax")


def test_shared_names_resolve_by_kind():
    from densattn.attention import DensityAdaptiveAttention, DensityTokenMixer

    assert isinstance(create_attention("daam", embed_dim=D, num_heads=H), DensityTokenMixer)
    assert isinstance(create_attention("daam", num_features=D, num_heads=H), DensityAdaptiveAttention)
    assert isinstance(create_attention("daam", kind="feature_gate", num_features=D), DensityAdaptiveAttention)
    assert set(list_attention(kind="fusion")) == {"bilinear", "ban", "multilinear"}

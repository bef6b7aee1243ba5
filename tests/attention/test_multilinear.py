"""Multi-linear attention (MAN): exact map against loop references, random-feature estimate properties."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from densattn.attention.bilinear import joint_pair_softmax, pair_mask
from densattn.attention.multilinear import MultiLinearAttention, orthogonal_gaussian_features

F64 = torch.float64


def make(dims, *, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("attn_dim", 4)
    kwargs.setdefault("value_dim", 3)
    return MultiLinearAttention(dims, generator=torch.Generator().manual_seed(seed), dtype=F64, **kwargs)


def exact_copy(module):
    twin = copy.deepcopy(module)
    twin.exact = True
    return twin


def inputs(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=F64) for shape in shapes]


def reference(module, xs, masks=None):
    """Loops over batch, head and every position tuple: z = sqrt(s)·D^{1/4}·normalize(W x), v = V x,
    w(tuple) = exp(Σ_{m<n} ⟨z_m, z_n⟩/sqrt(D) - Σ_{m<n} (t_m - t_n)²/(2σ²)) normalised over valid tuples."""
    count, heads, dim, vdim = len(xs), module.num_heads, module.attn_dim, module.value_dim
    batch = xs[0].shape[0]
    masks = masks or [None] * count
    out = torch.zeros(batch, heads, vdim, dtype=F64)
    weights = torch.zeros(batch, heads, *(x.shape[1] for x in xs), dtype=F64)
    for b in range(batch):
        valid = [[i for i in range(x.shape[1]) if m is None or m[b, i]] for x, m in zip(xs, masks)]
        t = [{i: (k / max(len(v) - 1, 1)) for k, i in enumerate(v)} for v in valid]
        for h in range(heads):
            z, v = [], []
            for m, x in enumerate(xs):
                q = x[b] @ module.query_proj[m].weight[h * dim : (h + 1) * dim].T
                z.append(q / q.norm(dim=-1, keepdim=True) * module.query_scale**0.5 * dim**0.25)
                v.append(x[b] @ module.value_proj[m].weight[h * vdim : (h + 1) * vdim].T)
            kernels = {}
            for tup in itertools.product(*valid):
                logit = 0.0
                for m in range(count):
                    for n in range(m + 1, count):
                        logit = logit + z[m][tup[m]] @ z[n][tup[n]] / math.sqrt(dim)
                        if module.local_constraint is not None:
                            gap = t[m][tup[m]] - t[n][tup[n]]
                            logit = logit - gap**2 / (2 * module.local_constraint**2)
                kernels[tup] = torch.exp(logit)
            total = sum(kernels.values())
            for tup, kernel in kernels.items():
                weights[(b, h, *tup)] = kernel / total
                product = torch.ones(vdim, dtype=F64)
                for m in range(count):
                    product = product * v[m][tup[m]]
                out[b, h] += kernel / total * product
    return out.flatten(1), weights


@pytest.mark.parametrize("local_constraint", [None, 0.5])
def test_exact_matches_loop_reference_with_masks(local_constraint):
    module = make([5, 3, 4], attn_dim=4, value_dim=2, num_heads=2, exact=True, local_constraint=local_constraint)
    xs = inputs([(2, 3, 5), (2, 4, 3), (2, 2, 4)])
    masks = [
        torch.tensor([[True, False, True], [True, True, True]]),
        None,
        torch.tensor([[True, True], [False, True]]),
    ]
    out, weights = module(*xs, masks=masks, need_weights=True)
    ref_out, ref_weights = reference(module, xs, masks)
    assert_close(weights, ref_weights)
    assert_close(out, ref_out)


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), seed=st.integers(0, 2**16))
def test_exact_weights_sum_to_one_and_masked_tuples_are_zero(sizes, seed):
    module = make([3] * len(sizes), exact=True, num_heads=2, seed=seed)
    xs = inputs([(2, n, 3) for n in sizes], seed=seed)
    generator = torch.Generator().manual_seed(seed)
    masks = [torch.rand(2, n, generator=generator) > 0.4 for n in sizes]
    for mask in masks:
        mask[:, 0] = True
    _, weights = module(*xs, masks=masks, need_weights=True)
    assert_close(weights.flatten(2).sum(-1), torch.ones(2, 2, dtype=F64))
    keep = torch.ones_like(weights, dtype=torch.bool)
    for m, mask in enumerate(masks):
        shape = [2, 1] + [1] * len(sizes)
        shape[2 + m] = sizes[m]
        keep = keep & mask.reshape(shape)
    assert torch.all(weights[~keep] == 0)


def test_two_modalities_equal_bilinear_attention_with_those_logits():
    module = make([5, 3], attn_dim=6, num_heads=2, exact=True)
    xs = inputs([(3, 4, 5), (3, 6, 3)])
    masks = [torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool), None]
    _, weights = module(*xs, masks=masks, need_weights=True)
    z1, z2 = module.queries(*xs)
    logits = z1 @ z2.transpose(-2, -1) / math.sqrt(6)  # (B, H, Nx, Ny), the bilinear logits
    assert_close(weights, joint_pair_softmax(logits, pair_mask(masks[0], None, 4, 6)))


def relative_error(module, xs, masks=None):
    estimate, exact = module(*xs, masks=masks), exact_copy(module)(*xs, masks=masks)
    return ((estimate - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize(("local_constraint", "feature_shift"), [(None, 0.0), (0.5, 0.0), (None, -1 / 12)])
def test_random_feature_error_falls_as_features_grow(local_constraint, feature_shift):
    xs = inputs([(4, 6, 5), (4, 5, 4), (4, 7, 3)])
    masks = [None, torch.arange(5)[None].expand(4, -1) < 4, None]
    curve = []
    for features in (8, 512, 8192):
        errors = [
            relative_error(
                make(
                    [5, 4, 3],
                    attn_dim=8,
                    num_features=features,
                    seed=s,
                    local_constraint=local_constraint,
                    feature_shift=feature_shift,
                ),
                xs,
                masks,
            )
            for s in range(4)
        ]
        curve.append(sum(errors) / len(errors))
    assert curve[0] > curve[1] > curve[2]
    assert curve[2] < 0.3 * curve[0]


@settings(max_examples=15, deadline=None)
@given(scale=st.floats(1e-3, 1e3), modality=st.integers(0, 2))
def test_scaling_one_modality_scales_output_and_keeps_relative_error(scale, modality):
    module = make([5, 4, 3], attn_dim=8, num_features=32)
    xs = inputs([(2, 4, 5), (2, 3, 4), (2, 5, 3)])
    scaled = list(xs)
    scaled[modality] = xs[modality] * scale
    assert_close(module(*scaled), scale * module(*xs), rtol=1e-9, atol=1e-12 * scale)
    assert math.isclose(relative_error(module, scaled), relative_error(module, xs), rel_tol=1e-8)


@pytest.mark.parametrize("exact", [True, False])
def test_permuting_positions_within_a_modality_leaves_output_unchanged(exact):
    module = make([5, 4, 3], attn_dim=6, num_heads=2, exact=exact)
    xs = inputs([(2, 4, 5), (2, 6, 4), (2, 5, 3)])
    masks = [None, torch.tensor([[1, 1, 1, 0, 1, 1], [1, 0, 1, 1, 1, 1]], dtype=torch.bool), None]
    permutation = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    permuted = [xs[0], xs[1][:, permutation], xs[2]]
    permuted_masks = [None, masks[1][:, permutation], None]
    assert_close(module(*permuted, masks=permuted_masks), module(*xs, masks=masks))
    local = make([5, 4, 3], attn_dim=6, num_heads=2, exact=exact, local_constraint=0.2)
    assert not torch.allclose(local(*permuted), local(*xs))  # the constraint makes order matter


def test_local_constraint_favours_aligned_positions():
    module = make([2, 2], attn_dim=2, exact=True, local_constraint=0.1)
    with torch.no_grad():  # all-equal queries: only the positional factor shapes the map
        for proj in module.query_proj:
            proj.weight.fill_(1.0)
    xs = [torch.ones(1, 5, 2, dtype=F64), torch.ones(1, 5, 2, dtype=F64)]
    _, weights = module(*xs, need_weights=True)
    assert torch.equal(weights[0, 0].argmax(dim=1), torch.arange(5))


@pytest.mark.parametrize("exact", [True, False])
def test_padding_excluded_by_masks_leaves_output_unchanged(exact):
    module = make([3, 2], attn_dim=4, exact=exact, local_constraint=0.5)
    xs = inputs([(2, 3, 3), (2, 4, 2)])
    padded = [torch.cat([xs[0], 50 * torch.randn(2, 2, 3, dtype=F64)], 1), xs[1]]
    masks = [torch.arange(5)[None].expand(2, -1) < 3, None]
    assert_close(module(*padded, masks=masks), module(*xs))


def test_fully_masked_modality_gives_zeros_not_nan():
    for exact in (True, False):
        module = make([3, 2], exact=exact)
        xs = inputs([(2, 3, 3), (2, 4, 2)])
        masks = [torch.tensor([[True, True, True], [False, False, False]]), None]
        out = module(*xs, masks=masks)
        assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros_like(out[1]))


def test_random_features_finite_for_large_query_scale_float32():
    module = MultiLinearAttention([4, 4, 4], attn_dim=64, value_dim=2, query_scale=64.0)
    out = module(*(100 * torch.randn(2, 9, 4) for _ in range(3)))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("exact", [True, False])
def test_gradcheck_float64(exact):
    module = make([3, 2, 2], attn_dim=3, value_dim=2, num_features=5, exact=exact, local_constraint=0.7)
    xs = [x.requires_grad_() for x in inputs([(2, 3, 3), (2, 2, 2), (2, 2, 2)])]
    masks = [torch.tensor([[True, True, False], [True, True, True]]), None, None]
    assert torch.autograd.gradcheck(lambda *a: module(*a, masks=masks), tuple(xs))


def test_features_are_orthogonal_gaussian_and_seeded_only_by_generator():
    first = orthogonal_gaussian_features(2, 10, 4, generator=torch.Generator().manual_seed(5))
    again = orthogonal_gaussian_features(2, 10, 4, generator=torch.Generator().manual_seed(5))
    other = orthogonal_gaussian_features(2, 10, 4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    block = first[0, :4] / first[0, :4].norm(dim=-1, keepdim=True)
    assert_close(block @ block.T, torch.eye(4))
    assert first.shape == (2, 10, 4)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="dims"):
        MultiLinearAttention([4], attn_dim=2, value_dim=2)
    with pytest.raises(ValueError, match="feature_shift"):
        MultiLinearAttention([4, 4], attn_dim=2, value_dim=2, feature_shift=0.2)
    with pytest.raises(ValueError, match="local_constraint"):
        MultiLinearAttention([4, 4], attn_dim=2, value_dim=2, local_constraint=0.0)
    module = MultiLinearAttention([4, 3], attn_dim=2, value_dim=2)
    with pytest.raises(ValueError, match="exact=True"):
        module(torch.randn(1, 2, 4), torch.randn(1, 2, 3), need_weights=True)
    with pytest.raises(ValueError, match=r"xs\[1\]"):
        module(torch.randn(1, 2, 4), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        module(torch.randn(1, 2, 4), torch.randn(1, 2, 3), masks=[torch.ones(1, 3, dtype=torch.bool), None])


def test_random_features_and_anchors_come_only_from_the_generator_and_survive_state_dict():
    xs = inputs([(2, 3, 4), (2, 5, 4)])
    first = make([4, 4], local_constraint=0.3, seed=1)
    second = make([4, 4], local_constraint=0.3, seed=1)
    assert_close(first(*xs), second(*xs))
    clone = make([4, 4], local_constraint=0.3, seed=2)
    clone.load_state_dict(first.state_dict())  # features and anchors are saved buffers
    assert_close(clone(*xs), first(*xs))
    second.redraw_features(torch.Generator().manual_seed(9))
    assert not torch.allclose(second(*xs), first(*xs))


@pytest.mark.parametrize("exact", [True, False])
def test_bfloat16_autocast_keeps_the_kernel_in_float32(exact):
    torch.manual_seed(0)
    module = MultiLinearAttention([4, 4, 4], attn_dim=8, value_dim=2, exact=exact)
    xs = [torch.randn(2, 6, 4) for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = module(*xs)
    assert torch.isfinite(low).all()
    assert_close(low.float(), module(*xs), atol=0.05, rtol=0.05)

"""The DAAM kernel against literal loop references, gradcheck, and numerical-safety properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from densattn.functional import density_attention, head_chunk_sizes


def reference_daam(
    x,
    delta,
    xi,
    *,
    num_heads,
    spread_param,
    combine,
    normalize,
    logits_w=None,
    eps=1e-5,
    mask=None,
    unbiased=False,
):
    """Plain loops over (batch, feature, head, position, gaussian) for x (B, m, F), norm over m, params per F.

    delta, xi: (H, N, F). mask: (B, m) bool or None. Follows docs/design.md ("The DAAM kernel") term by term.
    """
    B, m, F = x.shape
    H, N, _ = delta.shape
    c = m // H
    w = torch.zeros(B, m, F, dtype=torch.float64)
    x64 = x.double()
    for b in range(B):
        for f in range(F):
            for h in range(H):
                idx = [i for i in range(h * c, (h + 1) * c) if mask is None or mask[b, i]]
                if not idx:
                    continue
                vals = [x64[b, i, f].item() for i in idx]
                mu = sum(vals) / len(vals)
                var = sum((v - mu) ** 2 for v in vals) / (len(vals) - (1 if unbiased else 0))
                L = {}
                for i in idx:
                    terms = []
                    for k in range(N):
                        z = (x64[b, i, f].item() - mu - delta[h, k, f].item()) / math.sqrt(var + eps)
                        s = xi[h, k, f].item() if spread_param == "linear" else xi[h, k, f].item() ** 2
                        terms.append(-z * z / (2 * s))
                    if combine == "product":
                        L[i] = sum(terms)
                    else:
                        lw = torch.log_softmax(logits_w[h].double(), 0)
                        L[i] = torch.logsumexp(torch.tensor(terms, dtype=torch.float64) + lw, 0).item()
                if normalize == "none":
                    for i in idx:
                        w[b, i, f] = math.exp(L[i])
                else:
                    top = max(L.values())
                    total = sum(math.exp(v - top) for v in L.values())
                    for i in idx:
                        w[b, i, f] = math.exp(L[i] - top) / total
    out = x64 * w
    if mask is not None:
        out = torch.where(mask[..., None], out, x64)
    return out, w


CONFIGS = [
    ("linear", "product", "none"),  # paper
    ("square", "product", "softmax"),  # mixture_of_densities
    ("square", "mixture", "none"),  # mixture
    ("linear", "mixture", "softmax"),
]


@pytest.mark.parametrize("spread_param,combine,normalize", CONFIGS)
@pytest.mark.parametrize("num_gaussians", [1, 3])
def test_matches_loop_reference(spread_param, combine, normalize, num_gaussians):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    delta = 0.5 * torch.randn(2, num_gaussians, 3, generator=g, dtype=torch.float64)
    xi = 0.5 + torch.rand(2, num_gaussians, 3, generator=g, dtype=torch.float64)
    logits_w = torch.randn(2, num_gaussians, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 5] = mask[1, 4] = False
    for m in (None, mask):
        out, w = density_attention(
            x,
            delta,
            xi,
            norm_dim=1,
            num_heads=2,
            spread_param=spread_param,
            combine=combine,
            mixture_logits=logits_w if combine == "mixture" else None,
            normalize=normalize,
            mask=m,
        )
        ref_out, ref_w = reference_daam(
            x,
            delta,
            xi,
            num_heads=2,
            spread_param=spread_param,
            combine=combine,
            normalize=normalize,
            logits_w=logits_w,
            mask=m,
        )
        assert_close(w, ref_w)
        assert_close(out, ref_out)


def test_float32_close_to_reference_and_scalar_params():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 5, generator=g)
    delta = torch.randn(4, 2, generator=g)
    xi = 1 + torch.rand(4, 2, generator=g)
    out, w = density_attention(
        x, delta, xi, norm_dim=1, param_dim=None, num_heads=4, spread_param="square", normalize="softmax"
    )
    ref_out, ref_w = reference_daam(
        x,
        delta[..., None].expand(4, 2, 5),
        xi[..., None].expand(4, 2, 5),
        num_heads=4,
        spread_param="square",
        combine="product",
        normalize="softmax",
    )
    assert_close(w, ref_w.float(), rtol=1e-4, atol=1e-6)
    assert w.dtype == torch.float32 and out.dtype == torch.float32


def test_param_axis_not_last_and_norm_axis_last():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)  # (B, F, m): params on axis 1, norm on axis 2
    delta = torch.randn(3, 1, 5, generator=g, dtype=torch.float64)
    xi = 1 + torch.rand(3, 1, 5, generator=g, dtype=torch.float64)
    out, w = density_attention(x, delta, xi, norm_dim=2, param_dim=1, num_heads=3)
    ref_out, ref_w = reference_daam(
        x.transpose(1, 2), delta, xi, num_heads=3, spread_param="linear", combine="product", normalize="none"
    )
    assert_close(w, ref_w.transpose(1, 2))
    assert_close(out, ref_out.transpose(1, 2))


def test_gradcheck_all_configs():
    g = torch.Generator().manual_seed(3)
    for spread_param, combine, normalize in CONFIGS:
        x = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
        delta = (0.3 * torch.randn(2, 2, 3, generator=g, dtype=torch.float64)).requires_grad_()
        xi = (1 + torch.rand(2, 2, 3, generator=g, dtype=torch.float64)).requires_grad_()
        lw = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
        mask = torch.tensor([[True, True, False, True], [True, True, True, True]])

        def f(x, delta, xi, lw, spread_param=spread_param, combine=combine, normalize=normalize, mask=mask):
            return density_attention(
                x,
                delta,
                xi,
                norm_dim=1,
                num_heads=2,
                spread_param=spread_param,
                combine=combine,
                mixture_logits=lw if combine == "mixture" else None,
                normalize=normalize,
                mask=mask,
            )

        assert torch.autograd.gradcheck(f, (x, delta, xi, lw))


def test_product_never_underflows_to_zero_row():
    # 8 sharp Gaussians far from the data: the linear-space product is exp(-huge) = 0 for every item
    x = torch.randn(4, 24, 16)
    delta = torch.full((8, 8), 3.0)
    xi = torch.full((8, 8), 0.05)
    _, w = density_attention(
        x, delta, xi, norm_dim=1, param_dim=None, num_heads=8, spread_param="square", normalize="softmax"
    )
    sums = w.unflatten(1, (8, 3)).sum(2)
    assert_close(sums, torch.ones_like(sums))


def test_ragged_heads():
    assert head_chunk_sizes(10, 3, allow_ragged_heads=True) == [3, 3, 4]
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    delta, xi = torch.zeros(3, 1, 4, dtype=torch.float64), torch.full((3, 1, 4), 2.0, dtype=torch.float64)
    _, w = density_attention(x, delta, xi, norm_dim=1, num_heads=3, allow_ragged_heads=True, normalize="softmax")
    assert_close(w[:, 6:].sum(1), torch.ones(2, 4, dtype=torch.float64))
    _, w_last = density_attention(x[:, 6:], delta[:1], xi[:1], norm_dim=1, num_heads=1, normalize="softmax")
    assert_close(w[:, 6:], w_last)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"norm_dim": 5}, "norm_dim=5 is out of range"),
        ({"norm_dim": 1, "num_heads": 4}, "does not divide"),
        ({"norm_dim": 1, "num_heads": 7}, "larger than the norm axis"),
        ({"norm_dim": 1, "eps": -1.0}, "eps must be >= 0"),
        ({"norm_dim": 1, "mask": torch.ones(2, 6)}, "mask must be a bool tensor"),
        ({"norm_dim": 1, "mask": torch.ones(3, 6, dtype=torch.bool)}, "does not broadcast"),
        ({"norm_dim": 1, "normalize": "sigmoid"}, "normalize must be"),
        ({"norm_dim": 1, "combine": "mixture"}, "needs mixture_logits"),
        ({"norm_dim": 1, "param_dim": 1}, "both point at axis 1"),
    ],
)
def test_errors_name_the_argument(kwargs, match):
    x = torch.randn(2, 6, 3)
    with pytest.raises(ValueError, match=match):
        density_attention(x, torch.zeros(1, 1, 3), torch.ones(1, 1, 3), **kwargs)


def test_wrong_parameter_shape():
    with pytest.raises(ValueError, match="need \\(num_heads, num_gaussians, num_features\\)"):
        density_attention(torch.randn(2, 6, 3), torch.zeros(2, 1), torch.ones(2, 1), norm_dim=1, num_heads=2)
    with pytest.raises(ValueError, match="last dimension is 4"):
        density_attention(torch.randn(2, 6, 3), torch.zeros(1, 1, 4), torch.ones(1, 1, 4), norm_dim=1)


# ---------------------------------------------------------------- property tests ----------------------------------
finite_magnitudes = st.sampled_from([1e-30, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e30])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    magnitude=finite_magnitudes,
    heads=st.sampled_from([1, 2, 3, 6]),
    gaussians=st.integers(1, 4),
    config=st.sampled_from(CONFIGS),
    constant=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    eps=st.sampled_from([0.0, 1e-8, 1e-5]),
    masked=st.booleans(),
)
def test_properties_finite_masked_untouched_softmax_sums(
    seed, magnitude, heads, gaussians, config, constant, dtype, eps, masked
):
    spread_param, combine, normalize = config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 6, 4, generator=g) * magnitude
    if constant:
        x[0] = x[0, :1]  # constant rows along the norm axis
    x = x.to(dtype)
    if not torch.isfinite(x).all():  # magnitude beyond the dtype: not a finite input
        return
    delta = torch.randn(heads, gaussians, 4, generator=g)
    xi = 0.1 + 3 * torch.rand(heads, gaussians, 4, generator=g)
    lw = torch.randn(heads, gaussians, generator=g)
    mask = torch.rand(3, 6, generator=g) > 0.3 if masked else None
    out, w = density_attention(
        x,
        delta,
        xi,
        norm_dim=1,
        num_heads=heads,
        spread_param=spread_param,
        combine=combine,
        mixture_logits=lw if combine == "mixture" else None,
        normalize=normalize,
        mask=mask,
        eps=eps,
    )
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert out.dtype == dtype
    assert (w >= 0).all() and (w <= 1 + 1e-6).all()
    if mask is not None:
        keep = mask[..., None].expand_as(x)
        assert torch.equal(out[~keep], x[~keep])
        assert (w[~keep] == 0).all()
    if normalize == "softmax":
        kept = torch.ones(3, 6, dtype=torch.bool) if mask is None else mask
        sums = (w * kept[..., None]).unflatten(1, (heads, 6 // heads)).sum(2)  # (B, H, F)
        has_items = kept.unflatten(1, (heads, 6 // heads)).any(2)[..., None].expand_as(sums)
        assert_close(sums[has_items], torch.ones_like(sums[has_items]), rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), magnitude=finite_magnitudes)
def test_single_element_heads_are_finite(seed, magnitude):
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(seed)) * magnitude
    out, w = density_attention(
        x, torch.ones(4, 2, 3), torch.ones(4, 2, 3), norm_dim=1, num_heads=4, normalize="softmax"
    )
    assert torch.isfinite(out).all() and torch.allclose(w, torch.ones_like(w))


@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("package_compat", [False, True])
@pytest.mark.parametrize("layout", ["param_last", "param_first", "scalar"])
def test_fused_path_gradcheck_and_matches_general_path(normalize, package_compat, layout):
    """No mask + product uses the fused autograd function; an all-True mask takes the general path."""
    g = torch.Generator().manual_seed(4)
    if layout == "param_last":
        x, nd, pd, pshape = torch.randn(2, 6, 3, generator=g, dtype=torch.float64), 1, -1, (2, 3, 3)
    elif layout == "param_first":
        x, nd, pd, pshape = torch.randn(3, 2, 6, generator=g, dtype=torch.float64), 2, 0, (2, 3, 3)
    else:
        x, nd, pd, pshape = torch.randn(2, 3, 6, generator=g, dtype=torch.float64), -1, None, (2, 3)
    x.requires_grad_()
    delta = (0.3 * torch.randn(pshape, generator=g, dtype=torch.float64)).requires_grad_()
    xi = (1 + torch.rand(pshape, generator=g, dtype=torch.float64)).requires_grad_()
    kw = dict(
        norm_dim=nd,
        param_dim=pd,
        num_heads=2,
        spread_param="square",
        normalize=normalize,
        package_compat=package_compat,
    )

    def f(x, delta, xi):
        out, w = density_attention(x, delta, xi, **kw)
        return out, w

    assert torch.autograd.gradcheck(f, (x, delta, xi))
    full_mask = torch.ones(x.shape, dtype=torch.bool)
    fast = density_attention(x, delta, xi, **kw)
    general = density_attention(x, delta, xi, mask=full_mask, **kw) if not package_compat else fast
    for a, b in zip(fast, general):
        assert_close(a, b)
    if not package_compat:
        grads_fast = torch.autograd.grad(sum(t.sum() for t in fast), (x, delta, xi))
        grads_general = torch.autograd.grad(sum(t.sum() for t in general), (x, delta, xi))
        for a, b in zip(grads_fast, grads_general):
            assert_close(a, b)

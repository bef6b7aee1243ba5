"""The fused DAAM kernels: double backward, torch.compile, and parity with the general (reference) path."""

import pytest
import torch
from torch.testing import assert_close

from densattn.functional import density_attention

# (spread_param, combine, normalize) of the presets paper, mixture_of_densities, mixture
PRESETS = {
    "paper": ("linear", "product", "none"),
    "mixture_of_densities": ("square", "product", "softmax"),
    "mixture": ("square", "mixture", "none"),
}


def _inputs(seed=0, dtype=torch.float64, shape=(2, 6, 3), num_gaussians=2, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    delta = 0.3 * torch.randn(2, num_gaussians, shape[-1], generator=g, dtype=dtype)
    xi = 1 + torch.rand(2, num_gaussians, shape[-1], generator=g, dtype=dtype)
    logits = torch.randn(2, num_gaussians, generator=g, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (x, delta, xi, logits)]


def _daam(preset, mask=None, package_compat=False):
    spread_param, combine, normalize = PRESETS[preset]

    def f(x, delta, xi, logits):
        return density_attention(
            x,
            delta,
            xi,
            norm_dim=1,
            num_heads=2,
            spread_param=spread_param,
            combine=combine,
            mixture_logits=logits if combine == "mixture" else None,
            normalize=normalize,
            mask=mask,
            package_compat=package_compat,
        )

    return f


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("masked", [False, True])
def test_gradgradcheck_every_preset(preset, masked):
    """Second derivatives are right without a mask (fused path) as with one (general path)."""
    mask = torch.tensor([[True, True, False, True, True, True], [True] * 6]) if masked else None
    args = _inputs(seed=1)
    assert torch.autograd.gradgradcheck(_daam(preset, mask), args)


@pytest.mark.parametrize("package_compat", [False, True])
def test_gradgradcheck_softmax_package_compat(package_compat):
    args = _inputs(seed=2)
    assert torch.autograd.gradgradcheck(_daam("mixture_of_densities", package_compat=package_compat), args)


def test_hessian_vector_product_matches_general_path():
    """Double backward of the fused path equals the general path's (an all-True mask forces the general path)."""
    x, delta, xi, logits = _inputs(seed=3)
    full = torch.ones(x.shape, dtype=torch.bool)
    hvps = []
    for mask in (None, full):
        y, w = _daam("mixture_of_densities", mask)(x, delta, xi, logits)
        (gx,) = torch.autograd.grad((y * y).sum() + w.sum(), x, create_graph=True)
        hvps.append(torch.autograd.grad(gx.sin().sum(), (x, delta, xi)))
    for a, b in zip(*hvps):
        assert_close(a, b)


@pytest.mark.parametrize("preset", ["paper", "mixture_of_densities"])
def test_fused_path_traces_as_one_graph(preset):
    """No host sync or data-dependent branch: torch.compile captures the fused path in a single graph."""
    torch._dynamo.reset()
    x, delta, xi, logits = _inputs(seed=4, dtype=torch.float32, requires_grad=False)
    f = _daam(preset)
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for a, b in zip(compiled(x, delta, xi, logits), f(x, delta, xi, logits)):
        assert_close(a, b)


@pytest.mark.slow
def test_inductor_compiled_matches_eager():
    """torch.compile(density_attention, fullgraph=True) with the default (inductor) backend, forward and backward."""
    torch._dynamo.reset()
    x, delta, xi, logits = _inputs(seed=5, dtype=torch.float32, shape=(4, 8, 16))
    compiled = torch.compile(density_attention, fullgraph=True)
    kw = dict(norm_dim=1, num_heads=2, spread_param="square", normalize="softmax")
    ye, we = density_attention(x, delta, xi, **kw)
    yc, wc = compiled(x, delta, xi, **kw)
    assert_close(yc, ye)
    assert_close(wc, we)
    ge = torch.autograd.grad(ye.square().sum(), (x, delta, xi))
    gc = torch.autograd.grad(yc.square().sum(), (x, delta, xi))
    for a, b in zip(gc, ge):
        assert_close(a, b)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-3, 1.0, 1e15, 1e30])
def test_fused_path_overflow_safe_without_fallback(magnitude):
    """Huge and tiny inputs give the general path's finite weights (the fused path no longer checks and falls back)."""
    x, delta, xi, _ = _inputs(seed=6, dtype=torch.float32, requires_grad=False)
    x, delta = x * magnitude, torch.zeros_like(delta)  # offsets 0: logits O(1) at every scale (well conditioned)
    full = torch.ones(x.shape, dtype=torch.bool)
    for preset in ("paper", "mixture_of_densities"):
        fast = _daam(preset)(x, delta, xi, None)
        general = _daam(preset, full)(x, delta, xi, None)
        assert torch.isfinite(fast[1]).all()
        assert_close(fast[1], general[1])


# ------------------------------------------------------------------ compiled kernels against the PyTorch one -----
def _kernel_args(seed, shape, dim, dtype, param_shape, floor):
    g = torch.Generator().manual_seed(seed)
    cdt = torch.promote_types(dtype, torch.float32)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    prec = 0.5 + torch.rand(param_shape, generator=g, dtype=torch.float64)
    center = 0.3 * torch.randn(param_shape, generator=g, dtype=torch.float64)
    resid = torch.rand(param_shape, generator=g, dtype=torch.float64)
    # a floor near the chunks' log-sum-exp, so that both of its branches occur
    f = (0.5 * torch.randn(param_shape, generator=g, dtype=torch.float64) + 0.5) if floor else None
    return x, *(None if t is None else t.to(cdt) for t in (prec, center, resid, f))


# (x shape, chunk axis, parameter shape): per-feature after the chunk axis, scalar per head, a 4-d input
LAYOUTS = [((3, 2, 4, 5), 2, (1, 2, 1, 5)), ((2, 3, 6), 2, (1, 3, 1)), ((2, 2, 3, 2, 3), 2, (1, 2, 1, 2, 1))]


@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
@pytest.mark.parametrize("softmax,floor", [(False, False), (True, False), (True, True)])
def test_cpu_kernel_gradcheck_float64(layout, softmax, floor):
    from densattn.kernels import cpu
    from densattn.kernels.functions import CpuDensityProduct

    if cpu.load() is None:
        pytest.skip(f"CPU kernel not built: {cpu.status()}")
    shape, dim, pshape = LAYOUTS[layout]
    args = [
        t.requires_grad_() if t is not None else None for t in _kernel_args(7, shape, dim, torch.float64, pshape, floor)
    ]

    def f(*ts):
        return CpuDensityProduct.apply(*ts, dim, softmax, 1e-5, shape[dim] - 1)

    assert torch.autograd.gradcheck(f, tuple(args))
    assert torch.autograd.gradgradcheck(f, tuple(args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("softmax,floor", [(False, False), (True, False), (True, True)])
def test_cpu_kernel_matches_pytorch_kernel(dtype, softmax, floor):
    """Outputs match; gradients are as close to the float64 answer as the PyTorch kernel's in the same dtype.

    (Chunks of 3 items with unbiased variance are badly conditioned: float32 gradients of either kernel can be
    off by ~1e-2 relative, so the test compares errors against float64 rather than the two kernels directly.)
    """
    from densattn.kernels import cpu
    from densattn.kernels.functions import CpuDensityProduct
    from densattn.kernels.product import DensityProduct

    if cpu.load() is None:
        pytest.skip(f"CPU kernel not built: {cpu.status()}")
    shape, dim, pshape = (4, 8, 3, 70), 2, (1, 8, 1, 70)  # 70 > the kernel's tile of 64 columns
    x, *params = _kernel_args(8, shape, dim, dtype, pshape, floor)
    cdt = params[0].dtype
    opts = (dim, softmax, 1e-5, 3)
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    results = {}
    for name, fn, xin, ps in (
        ("cpu", CpuDensityProduct, x, params),
        ("torch", DensityProduct, x.to(cdt), params),
        ("float64", DensityProduct, x.double(), [None if p is None else p.double() for p in params]),
    ):
        xin = xin.detach().requires_grad_()
        ps = [None if p is None else p.detach().requires_grad_() for p in ps]
        y, a = fn.apply(xin, *ps, *opts)
        inputs = [t for t in (xin, *ps) if t is not None]
        grads = torch.autograd.grad((y.to(a.dtype) * probe.to(a.dtype)).sum() + a.sum(), inputs)
        results[name] = [t.detach().double() for t in (y, a, *grads)]
    assert results["cpu"][0].dtype == torch.float64  # (converted above; the kernel's own dtypes:)
    y, a = CpuDensityProduct.apply(x, *params, *opts)
    assert y.dtype == dtype and a.dtype == cdt
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for got, ref_same_dtype, exact in zip(results["cpu"], results["torch"], results["float64"]):
        err, err_ref = (got - exact).abs().max(), (ref_same_dtype - exact).abs().max()
        assert err <= 2 * err_ref + tol * max(exact.abs().max(), 1.0), (err, err_ref)


def test_cpu_kernel_falls_back_without_compiler(monkeypatch, tmp_path):
    """No compiler: load() returns None, status says why, density_attention still runs (PyTorch kernel)."""
    from densattn.kernels import cpu

    monkeypatch.setattr(cpu, "_state", {})
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DENSATTN_KERNEL_CACHE", str(tmp_path / "cache"))
    assert cpu.load() is None
    assert "unavailable" in cpu.status()
    x, delta, xi, _ = _inputs(seed=10, requires_grad=False)
    fast = _daam("mixture_of_densities")(x, delta, xi, None)
    general = _daam("mixture_of_densities", torch.ones(x.shape, dtype=torch.bool))(x, delta, xi, None)
    for a, b in zip(fast, general):
        assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset", ["paper", "mixture_of_densities"])
def test_cuda_kernel_matches_cpu(dtype, preset):
    from densattn.kernels import cuda

    spread_param, _, normalize = PRESETS[preset]
    g = torch.Generator().manual_seed(11)
    x = torch.randn(8, 24, 64, generator=g).to(dtype)
    delta, xi = 0.3 * torch.randn(8, 3, 64, generator=g), 0.5 + torch.rand(8, 3, 64, generator=g)
    kw = dict(norm_dim=1, num_heads=8, spread_param=spread_param, normalize=normalize, package_compat=True)
    results = []
    for device in ("cpu", "cuda"):
        xd, dd, sd = (t.to(device).requires_grad_() for t in (x, delta, xi))
        y, a = density_attention(xd, dd, sd, **kw)
        grads = torch.autograd.grad(y.float().square().sum() + a.sum(), (xd, dd, sd))
        results.append([t.detach().cpu().float() for t in (y, a, *grads)])
    assert "compiled" in cuda.status(), cuda.status()
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    for got, want in zip(*reversed(results)):
        assert_close(got, want, **tol)


# ------------------------------------------------ one autograd node from the Gaussians' parameters (CPU kernel) -----
# (x shape, norm_dim, param_dim): per-feature parameters after the norm axis, scalar parameters, parameters on a
# middle axis of several after the norm axis (the kernel maps column i to parameter (i // pdiv) % F)
GAUSSIAN_LAYOUTS = [((3, 6, 5), 1, 2), ((3, 6, 5), 1, None), ((2, 4, 3, 2), 1, 2), ((2, 2, 6, 3), 2, 3)]


def _graph_has(t, name):
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if name in type(fn).__name__:
            return True
        todo.extend(f for f, _ in fn.next_functions)
    return False


def _cpu_kernel_or_skip():
    from densattn.kernels import cpu

    if cpu.load() is None:
        pytest.skip(f"CPU kernel not built: {cpu.status()}")
    return cpu


@pytest.mark.parametrize("layout", range(len(GAUSSIAN_LAYOUTS)))
@pytest.mark.parametrize("preset,package_compat", [("paper", False), ("mixture_of_densities", False),
                                                   ("mixture_of_densities", True)])  # fmt: skip
def test_gaussians_node_gradcheck_and_general_path(layout, preset, package_compat):
    """float64 gradcheck of the fused call (C++ forward and backward, parameters chained in C++), and its outputs and
    gradients equal the general path's (an all-True mask forces that path)."""
    _cpu_kernel_or_skip()
    shape, nd, pd = GAUSSIAN_LAYOUTS[layout]
    spread_param, _, normalize = PRESETS[preset]
    g = torch.Generator().manual_seed(20 + layout)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    pshape = (2, 3) if pd is None else (2, 3, shape[pd])
    delta = (0.4 * torch.randn(pshape, generator=g, dtype=torch.float64)).requires_grad_()
    xi = (0.6 + torch.rand(pshape, generator=g, dtype=torch.float64)).requires_grad_()
    kw = dict(norm_dim=nd, param_dim=pd, num_heads=2, spread_param=spread_param, normalize=normalize,
              package_compat=package_compat, eps=0.3 if package_compat else 1e-5)  # fmt: skip
    # eps = 0.3 puts the package's floor near the chunks' log-sum-exp, so both of its branches occur

    def fused(*args):
        return density_attention(*args, **kw)

    assert _graph_has(fused(x, delta, xi)[0], "CpuDensityGaussians")  # the C++ node, not a fallback
    assert torch.autograd.gradcheck(fused, (x, delta, xi))
    full = torch.ones(shape, dtype=torch.bool)
    ref = density_attention(x, delta, xi, mask=full, **kw)
    got = fused(x, delta, xi)
    probe = torch.randn(shape, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((y * probe).sum() + w.sum(), (x, delta, xi)) for y, w in (got, ref)]
    assert_close(got[0], ref[0])
    assert_close(got[1], ref[1])
    for a, b in zip(*grads):
        assert_close(a, b)


@pytest.mark.parametrize("floor", [False, True])
def test_cpu_gaussian_params_match_literal_formulas(floor):
    """P, C, R, F formed in C++ equal the literal definitions, and their gradients equal autograd's."""
    cpu = _cpu_kernel_or_skip()
    from densattn.kernels.functions import gaussian_params_backward

    g = torch.Generator().manual_seed(30)
    delta = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    s = (0.2 + torch.rand(3, 4, 5, generator=g, dtype=torch.float64)).requires_grad_()
    log_eps = -3.0 if floor else None
    got = cpu.gaussian_params(cpu.load(), delta.detach(), s.detach(), log_eps)
    # literal: expand sum_k (z - d_k)^2 / s_k = z^2 sum 1/s - 2 z sum d/s + sum d^2/s = P (z - C)^2 + R
    prec = (1 / s).sum(1)
    center = (delta / s).sum(1) / prec
    resid = (delta**2 / s).sum(1) - prec * center**2
    want = [prec, center, resid, (log_eps + 0.5 * torch.log(2 * torch.pi * s).sum(1)) if floor else None]
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)
    cot = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    outs = [w for w in want if w is not None]
    expected = torch.autograd.grad(outs, (delta, s), cot[: len(outs)])
    grads = [*cot[:3], cot[3] if floor else None]
    from_cpp = cpu.gaussian_params_backward(cpu.load(), delta.detach(), s.detach(), got, grads)
    from_torch = gaussian_params_backward(delta.detach(), s.detach(), got, grads)
    for a, b, c in zip(from_cpp, from_torch, expected):
        assert_close(a, c)
        assert_close(b, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_need_weights_false_gives_the_same_output_and_no_weights(dtype):
    """Without weights the kernel writes only y: the same y and the same gradients, and weights None."""
    from densattn import DensityAdaptiveAttention

    torch.manual_seed(0)
    attn = DensityAdaptiveAttention(16, num_heads=2, num_gaussians=3, norm_dim=1, preset="mixture_of_densities")
    x = torch.randn(4, 6, 16).to(dtype).requires_grad_()
    y_only = attn(x)
    y, w = attn(x, need_weights=True)
    assert w is not None and w.shape == x.shape
    assert torch.equal(y_only, y)
    g1 = torch.autograd.grad(y_only.float().square().sum(), (x, attn.spread))
    g2 = torch.autograd.grad(y.float().square().sum(), (x, attn.spread))
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    out, weights = density_attention(x, attn.mean_offset, attn.spread, norm_dim=1, num_heads=2, need_weights=False)
    assert weights is None and out.shape == x.shape


@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("preset,package_compat", [("paper", False), ("mixture_of_densities", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sixteen_column_path_matches_float64(scalar, preset, package_compat, dtype):
    """float32/bfloat16 blocks of 16 columns (vector path) plus a scalar tail give the float64 answer's gradients."""
    _cpu_kernel_or_skip()
    spread_param, _, normalize = PRESETS[preset]
    g = torch.Generator().manual_seed(40)
    x64 = torch.randn(4, 6, 40, generator=g, dtype=torch.float64)  # 40 columns: two blocks of 16 and a tail of 8
    x64 = x64.to(dtype).double()  # the same input values in both dtypes
    pshape = (2, 3) if scalar else (2, 3, 40)
    delta64 = 0.4 * torch.randn(pshape, generator=g, dtype=torch.float64)
    xi64 = 0.6 + torch.rand(pshape, generator=g, dtype=torch.float64)
    probe = torch.randn(4, 6, 40, generator=g, dtype=torch.float64)
    kw = dict(norm_dim=1, param_dim=None if scalar else 2, num_heads=2, spread_param=spread_param,
              normalize=normalize, package_compat=package_compat, eps=0.3 if package_compat else 1e-5)  # fmt: skip
    results = []
    for dt in (dtype, torch.float64):
        x = x64.to(dt).requires_grad_()
        delta, xi = delta64.float().requires_grad_(), xi64.float().requires_grad_()
        if dt == torch.float64:
            x, delta, xi = (t.detach().double().requires_grad_() for t in (x, delta, xi))
        y, w = density_attention(x, delta, xi, **kw)
        grads = torch.autograd.grad((y.double() * probe).sum() + w.double().sum(), (x, delta, xi))
        results.append([t.detach().double() for t in (y, w, *grads)])
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for got, want in zip(*results):
        assert_close(got, want, **tol)


# ------------------------------------------------------ the general path's hand-written backward (masks, mixture) -----
def _masked_case(seed, shape=(3, 6, 4), nd=1, pd=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = torch.rand(shape[: nd + 1], generator=g) > 0.3
    mask[0, :3] = False  # a fully masked chunk (head 0 of the first row)
    mask[1, 3:5] = False  # a chunk with one kept item
    return g, x, mask


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("package_compat", [False, True])
@pytest.mark.parametrize("layout", ["features_after", "features_before", "scalar"])
def test_hand_written_backward_equals_autograd_reference(preset, package_compat, layout, monkeypatch):
    """Masked and mixture calls: outputs and first and second derivatives equal autograd through every op."""
    import densattn.functional as functional

    spread_param, combine, normalize = PRESETS[preset]
    if layout == "features_before":  # x (B, F, m): norm axis last, parameters along the axis before it
        g, x, _ = _masked_case(50, shape=(3, 4, 6), nd=2)
        mask = torch.rand(3, 4, 6, generator=g) > 0.3
        nd, pd = 2, 1
    else:
        g, x, mask = _masked_case(51)
        nd, pd = 1, (2 if layout == "features_after" else None)
    n = 3
    pshape = (2, n) if pd is None else (2, n, x.shape[pd])
    delta = 0.4 * torch.randn(pshape, generator=g, dtype=torch.float64)
    xi = 0.6 + torch.rand(pshape, generator=g, dtype=torch.float64)
    logits = torch.randn(2, n, generator=g, dtype=torch.float64)
    kw = dict(norm_dim=nd, param_dim=pd, num_heads=2, spread_param=spread_param, combine=combine,
              normalize=normalize, mask=mask, package_compat=package_compat,
              eps=0.3 if package_compat else 1e-5)  # fmt: skip

    def f(x, delta, xi, logits):
        return density_attention(x, delta, xi, mixture_logits=logits if combine == "mixture" else None, **kw)

    args = [t.clone().requires_grad_() for t in (x, delta, xi, logits)]
    assert _graph_has(f(*args)[0], "DensityGeneral")
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    probe = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for hand in (True, False):
        monkeypatch.setattr(functional, "HAND_WRITTEN_BACKWARD", hand)
        args = [t.clone().requires_grad_() for t in (x, delta, xi, logits)]
        y, w = f(*args)
        used = args if combine == "mixture" else args[:3]
        grads = torch.autograd.grad((y * probe).sum() + (w * w).sum(), used)
        results.append([y, w, *grads])
    for a, b in zip(*results):
        assert_close(a, b)


def test_hand_written_backward_keeps_only_the_input():
    """The mixture preset with a mask saves x (in the compute dtype), the mask and the small parameters: nothing
    of size (..., c, N) and no weights."""
    from densattn import DensityAdaptiveAttention

    attn = DensityAdaptiveAttention(64, num_heads=4, num_gaussians=8, norm_dim=1, preset="mixture")
    x = torch.randn(8, 32, 64, requires_grad=True)
    mask = torch.rand(8, 32) > 0.2
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = attn(x, mask=mask)
    x_bytes = x.numel() * x.element_size()
    mask_bytes = x.numel()  # the bool mask broadcast to x's shape (one byte per item)
    params = sum(p.numel() * p.element_size() for p in attn.parameters())
    assert sum(saved) <= x_bytes + mask_bytes + 8 * params, (sum(saved), x_bytes)
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_general_path_in_slices_equals_one_pass(monkeypatch):
    """Working through the batch in slices changes nothing: outputs and gradients equal a single pass."""
    import densattn.kernels.general as general

    g = torch.Generator().manual_seed(60)
    x = torch.randn(5, 8, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 8, generator=g) > 0.25
    delta, xi = 0.3 * torch.randn(2, 3, 6, generator=g, dtype=torch.float64), 0.5 + torch.rand(2, 3, 6, generator=g)
    logits = torch.randn(2, 3, generator=g, dtype=torch.float64)
    results = []
    for budget in (1 << 20, 100):  # one slice; slices of one or two rows
        monkeypatch.setattr(general, "SLICE_ELEMENTS", budget)
        args = [t.clone().double().requires_grad_() for t in (x, delta, xi, logits)]
        y, w = density_attention(*args[:3], norm_dim=1, num_heads=2, combine="mixture", mixture_logits=args[3],
                                 spread_param="square", normalize="softmax", mask=mask)  # fmt: skip
        results.append([y, w, *torch.autograd.grad(y.square().sum() + w.sum(), args)])
    assert len(general._slices(x.transpose(1, 2).unflatten(-1, (2, 4)), [delta.permute(2, 0, 1)[..., None, :]],
                               "mixture")) > 1  # fmt: skip
    for a, b in zip(*results):
        assert_close(a, b)

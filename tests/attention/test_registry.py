"""Every registered feature gate, fusion module and layer builds from the registry and runs a forward pass on CPU.

Token mixers have their own matrix in ``test_mixers.py``; ``daam``/``gqdaam`` below resolve to the feature gates
because ``num_features`` is given.
"""

import pytest
import torch

from densattn.attention.registry import create_attention, list_attention

SMALL = {
    "daam": ({"num_features": 8, "num_heads": 2}, lambda m: m(torch.randn(2, 4, 8))),
    "daam_mixture_of_densities": (
        {"num_features": None, "num_heads": 2, "num_gaussians": 3},
        lambda m: m(torch.randn(2, 4, 8)),
    ),
    "daam_mixture": ({"num_features": 8, "num_gaussians": 2}, lambda m: m(torch.randn(2, 4, 8))),
    "density_block": ({"num_features": 8, "num_layers": 2}, lambda m: m(torch.randn(2, 4, 8))),
    "gqdaam": (
        {"num_features": 8, "embed_dim": 16, "num_query_heads": 4, "num_kv_heads": 2},
        lambda m: m(torch.randn(2, 4, 8)),
    ),
    "quaternion_shared": ({"embed_dim": 16, "num_heads": 2}, lambda m: m(torch.randn(2, 5, 16))),
    "quaternion_hamilton": ({"embed_dim": 16, "num_heads": 2}, lambda m: m(torch.randn(2, 5, 16))),
    "quaternion_encoder_layer": ({"embed_dim": 16, "num_heads": 2}, lambda m: m(torch.randn(2, 5, 16))),
    "clustered": ({"embed_dim": 16, "num_heads": 2, "clusters": 3}, lambda m: m(torch.randn(2, 9, 16))),
    "improved_clustered": (
        {"embed_dim": 16, "num_heads": 2, "clusters": 3, "topk": 4},
        lambda m: m(torch.randn(2, 9, 16)),
    ),
    "bilinear": ({"x_dim": 6, "y_dim": 5, "rank": 4}, lambda m: m(torch.randn(2, 3, 6), torch.randn(2, 4, 5))[0]),
    "ban": ({"x_dim": 6, "y_dim": 5, "hidden": 8}, lambda m: m(torch.randn(2, 3, 6), torch.randn(2, 4, 5))),
    "multilinear": (
        {"dims": [6, 5], "attn_dim": 8, "value_dim": 4, "exact": True},
        lambda m: m(torch.randn(2, 3, 6), torch.randn(2, 4, 5)),
    ),
}


def test_registry_covers_the_table():
    other = {n for kind in ("feature_gate", "fusion", "layer") for n in list_attention(kind=kind)}
    assert set(SMALL) == other | {"quaternion_shared", "quaternion_hamilton", "clustered", "improved_clustered"}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_build_and_forward(name):
    kwargs, call = SMALL[name]
    module = create_attention(name, **kwargs)
    out = call(module)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()


def test_unknown_name_and_argument():
    with pytest.raises(ValueError, match="unknown attention"):
        create_attention("nope")
    with pytest.raises(ValueError, match="unknown argument"):
        create_attention("daam", num_features=8, heads=2)

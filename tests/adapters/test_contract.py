"""The adapter contract: every adapter kind saves adapter-only files with a typed config derived from the module,
and load_adapter reopens it exactly; bad files fail with errors that name them."""

from __future__ import annotations

import json

import pytest
import torch

from densattn.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    DensityAdapterModel,
    FusionAdapter,
    FusionConfig,
    HeadConfig,
    load_adapter,
)
from densattn.heads import HEAD_OPTIONS, HEAD_TYPES


@pytest.mark.parametrize("head", HEAD_TYPES)
def test_every_head_round_trips(head, tmp_path):
    torch.manual_seed(0)
    model = DensityAdapterModel(head, num_layers=4, dim=6, classes=["a", "b", "c"]).eval()
    model.head.set_input_stats(torch.randn(20, 4, 6))
    if head == "linear":
        model.head.select_layer(2)  # what the runner does after training
    model.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)
    x = torch.randn(5, 4, 6)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.get_config() == model.get_config()
    assert set(loaded.get_config().head_options) <= set(HEAD_OPTIONS[head])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    trainable = load_adapter(tmp_path, is_trainable=True)
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


def test_linear_probe_config_follows_the_selected_layer(tmp_path):
    model = DensityAdapterModel("linear", num_layers=5, dim=4, classes=["a", "b"])
    assert model.get_config().head_options == {"layer": "best"}
    model.head.select_layer(3)
    assert model.get_config().head_options == {"layer": 3}
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["head_options"] == {"layer": 3}
    assert int(load_adapter(tmp_path).head.selected) == 3


def test_resolved_options_rebuild_the_same_head():
    model = DensityAdapterModel("gqdaam", num_layers=4, dim=16, classes=["a", "b"])
    options = model.get_config().head_options
    assert options == {
        "conv_channels": 16,
        "dropout": 0.1,
        "preset": "paper",
        "num_heads": 2,
        "num_gaussians": 1,
        "num_query_heads": 8,
        "num_kv_heads": 2,
    }
    again = DensityAdapterModel("gqdaam", num_layers=4, dim=16, classes=["a", "b"], head_options=options)
    assert again.get_config() == model.get_config()


def test_fusion_adapter_round_trips(tmp_path):
    torch.manual_seed(0)
    model = FusionAdapter([(3, 8), (2, 4)], ["a", "b"], method="man", fusion_options={"hidden": 16}, seed=5).eval()
    model.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)
    x = FusionAdapter.pack([torch.randn(4, 3, 8), torch.randn(4, 2, 4)])
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert isinstance(loaded.get_config(), FusionConfig) and loaded.get_config() == model.get_config()


def test_config_json_round_trip_and_unknown_keys():
    config = HeadConfig(head="pool", num_layers=3, dim=5, classes=["x", "y"], head_options={"hidden": 8})
    assert HeadConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        HeadConfig.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="type must be one of"):
        HeadConfig.from_dict({**config.to_dict(), "type": "fusion"})


def test_bad_adapter_folders_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        load_adapter(tmp_path)
    model = DensityAdapterModel("conv", num_layers=4, dim=6, classes=["a", "b"])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "type": "mystery"}))
    with pytest.raises(ValueError, match="unknown adapter type 'mystery'"):
        load_adapter(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"{CONFIG_NAME} is not valid JSON"):
        load_adapter(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    (tmp_path / WEIGHTS_NAME).write_bytes((tmp_path / WEIGHTS_NAME).read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_adapter(tmp_path)
    with pytest.raises(ValueError, match="holds a 'head' adapter"):
        FusionAdapter.from_pretrained(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    DensityAdapterModel("conv", num_layers=4, dim=6, classes=["a", "b"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "classes": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter(tmp_path)


def test_heads_refuse_options_that_do_not_apply():
    with pytest.raises(ValueError, match=r"\['preset'\] do not apply to the 'mha' head"):
        DensityAdapterModel("mha", num_layers=4, dim=8, classes=["a", "b"], head_options={"preset": "paper"})
    with pytest.raises(ValueError, match=r"\['num_heads'\] do not apply to the 'conv' head"):
        DensityAdapterModel("conv", num_layers=4, dim=8, classes=["a", "b"], head_options={"num_heads": 2})
    with pytest.raises(ValueError, match="num_heads=3 does not split the 4 layers"):
        DensityAdapterModel("gqdaam", num_layers=4, dim=8, classes=["a", "b"], head_options={"num_heads": 3})
    gq = DensityAdapterModel("gqdaam", num_layers=4, dim=8, classes=["a", "b"], head_options={"num_heads": 2})
    assert gq.head.attention.density.num_heads == 2  # gqdaam honours num_heads (it used to ignore it)

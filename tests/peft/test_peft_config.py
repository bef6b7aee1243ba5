"""DensityConfig: exact JSON round trip (property test), the adapter_config.json file, and its errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from densattn.attention import PRESETS
from densattn.peft import CONFIG_NAME, DensityConfig

names = st.lists(st.sampled_from(["query", "value", "output.dense", "fc2", "_project_conv"]), min_size=1, unique=True)


@st.composite
def configs(draw) -> DensityConfig:
    norm_axis = draw(st.sampled_from(["features", "tokens"]))
    return DensityConfig(
        target_modules=draw(st.none() | names | st.just(r".*\.layers\.\d+\.fc2")),
        exclude_modules=draw(st.none() | names),
        norm_axis=norm_axis,
        num_heads=draw(st.integers(1, 16)) if norm_axis == "features" else 1,
        num_gaussians=draw(st.integers(1, 8)),
        preset=draw(st.sampled_from(sorted(PRESETS))),
        eps=draw(st.floats(0, 1e-2)),
        init_gate=draw(st.floats(-2, 2)),
        modules_to_save=draw(st.none() | st.lists(st.sampled_from(["classifier", "score", "head"]), unique=True)),
        inference_mode=draw(st.booleans()),
        base_model_name_or_path=draw(st.none() | st.text(min_size=1, max_size=20)),
    )


@given(configs())
def test_json_round_trip_is_exact(config):
    text = config.to_json_string()
    assert DensityConfig.from_dict(json.loads(text)) == config
    assert json.loads(text)["type"] == "daam_peft" and json.loads(text)["peft_type"] == "DAAM_PEFT"


def test_adapter_config_file(tmp_path):
    config = DensityConfig(target_modules=["fc2"], norm_axis="tokens", preset="mixture", num_gaussians=3)
    path = config.save_pretrained(tmp_path)
    assert path == tmp_path / CONFIG_NAME
    data = json.loads(path.read_text())
    assert data == {
        "base_model_name_or_path": None,
        "eps": 1e-05,
        "exclude_modules": None,
        "inference_mode": False,
        "init_gate": 0.0,
        "modules_to_save": None,
        "norm_axis": "tokens",
        "num_gaussians": 3,
        "num_heads": 1,
        "peft_type": "DAAM_PEFT",
        "preset": "mixture",
        "target_modules": ["fc2"],
        "type": "daam_peft",
    }
    assert DensityConfig.from_pretrained(tmp_path) == config
    with pytest.raises(FileNotFoundError, match="has no adapter_config.json"):
        DensityConfig.from_pretrained(tmp_path / "missing")


def test_from_dict_rejects_other_configs():
    lora = {"peft_type": "LORA", "r": 8, "target_modules": ["query"]}
    with pytest.raises(ValueError, match="not a DAAM-PEFT config.*peft LORA adapter.*PeftModel.from_pretrained"):
        DensityConfig.from_dict(lora)
    with pytest.raises(ValueError, match=r"unknown DensityConfig keys \['rank'\]"):
        DensityConfig.from_dict({**DensityConfig().to_dict(), "rank": 4})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm_axis": "channels"}, r"norm_axis must be one of \('features', 'tokens'\)"),
        ({"preset": "gauss"}, r"preset must be one of \['mixture', 'mixture_of_densities', 'paper'\]"),
        ({"num_heads": 0}, "num_heads must be a positive int"),
        ({"num_gaussians": 1.5}, "num_gaussians must be a positive int"),
        ({"norm_axis": "tokens", "num_heads": 2}, "use num_heads=1 with norm_axis='tokens'"),
        ({"target_modules": "(unclosed"}, "is not a valid regex"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"target_modules": [3]}, "target_modules must be a list of module names or one regex string"),
        ({"modules_to_save": "classifier"}, r"wrap a single name as \['classifier'\]"),
        ({"eps": -1.0}, "eps must be a number >= 0"),
        ({"init_gate": float("nan")}, "init_gate must be a finite number"),
        ({"type": "lora"}, "type must be 'daam_peft'"),
    ],
)
def test_invalid_values_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DensityConfig(**kwargs)


def test_sets_and_tuples_become_lists():
    assert DensityConfig(target_modules={"value", "query"}).target_modules == ["query", "value"]
    assert DensityConfig(target_modules=("fc2",), exclude_modules=[]).to_dict()["target_modules"] == ["fc2"]
    assert DensityConfig(exclude_modules=[]).exclude_modules is None

"""What works with HF peft's machinery and what does not (each claim in docs/peft.md is tested here)."""

from __future__ import annotations

import copy

import pytest
import torch
from _peft_helpers import trainable_names
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import register_peft_method

from densattn.peft import (
    DensityConfig,
    DensityLayer,
    DensityModel,
    get_density_model,
    get_density_model_state_dict,
)


def lora_model(bert):
    return get_peft_model(bert, LoraConfig(target_modules=["query", "value"], r=2, init_lora_weights=False))


def test_density_layers_are_peft_tuner_layers(tiny_bert):
    model = get_density_model(tiny_bert, DensityConfig())
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(isinstance(m, DensityLayer) for m in layers)
    assert all(m.active_adapters == ["default"] for m in layers)


def test_daam_stacked_on_a_lora_peft_model(tiny_bert, batch):
    lora = lora_model(tiny_bert)
    lora_config = lora.peft_config["default"]
    reference = lora(**batch).last_hidden_state
    lora_keys = set(get_peft_model_state_dict(lora))
    model = get_density_model(lora, DensityConfig(norm_axis="tokens"))
    assert lora.peft_config == {"default": lora_config}  # LoRA's own config is left alone
    assert torch.equal(model(**batch).last_hidden_state, reference)  # identity on top of the LoRA model
    names = trainable_names(model)
    assert any(".lora_A." in n for n in names) and any(".daam_scale." in n for n in names)  # both train
    assert all(k.startswith("base_model.model.") for k in get_density_model_state_dict(model))
    # peft's own state dict of the LoRA model collects every tuner layer in it, the DAAM gates included:
    assert set(get_peft_model_state_dict(lora)) - lora_keys == set(get_density_model_state_dict(model))
    unloaded = model.unload()
    assert unloaded is lora and set(get_peft_model_state_dict(unloaded)) == lora_keys
    assert torch.equal(unloaded(**batch).last_hidden_state, reference)


def test_lora_on_top_of_density_gates(tiny_bert, batch):
    """peft's get_peft_model on a model that already holds DAAM gates: LoRA is added, the gates stay trainable."""
    gated = get_density_model(tiny_bert, DensityConfig())
    reference = gated(**batch).last_hidden_state
    stacked = get_peft_model(gated.model, LoraConfig(target_modules=["query", "value"], r=2))
    assert torch.equal(stacked(**batch).last_hidden_state, reference)  # LoRA's B = 0 at init
    names = trainable_names(stacked)
    assert any(".lora_A." in n for n in names) and any(".daam_scale." in n for n in names)


def test_modules_to_save_use_peft_wrapper_and_are_saved(tiny_bert_classifier, _bert_templates, batch, tmp_path):
    model = get_density_model(tiny_bert_classifier, DensityConfig(modules_to_save=["classifier"]))
    with torch.no_grad():
        model.model.classifier.modules_to_save["default"].weight.add_(1.0)
    model.save_pretrained(tmp_path)
    loaded = DensityModel.from_pretrained(copy.deepcopy(_bert_templates[1]), tmp_path)
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    with loaded.disable_adapter():  # the original classifier comes back too
        assert torch.equal(loaded(**batch).logits, _bert_templates[1](**batch).logits)


def test_no_modules_to_save_when_asked(tiny_bert_classifier):
    model = get_density_model(tiny_bert_classifier, DensityConfig(modules_to_save=[]))
    assert not any("classifier" in n for n in trainable_names(model))


def test_peft_functions_that_dispatch_on_peft_type_refuse_the_method(tiny_bert, tmp_path):
    model = get_density_model(tiny_bert, DensityConfig())
    with pytest.raises(ValueError, match="Unknown PEFT type"):
        get_peft_model_state_dict(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(KeyError, match="DAAM_PEFT"):
        PeftModel.from_pretrained(copy.deepcopy(tiny_bert), tmp_path)
    with pytest.raises(KeyError, match="DAAM_PEFT"):
        PeftConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Unknown PEFT type DAAM_PEFT"):
        register_peft_method(name="daam_peft", config_cls=DensityConfig, model_cls=DensityModel)


def test_all_linear_shorthand(tiny_bert):
    model = get_density_model(tiny_bert, DensityConfig(target_modules="all-linear"))
    resolved = model.peft_config["default"].target_modules
    assert resolved == model.targeted_module_names and len(resolved) == 2 * 6 + 1  # q k v o ffn-in ffn-out, pooler


def test_exclude_and_regex_targets(tiny_bert):
    model = get_density_model(
        tiny_bert,
        DensityConfig(target_modules=r".*layer\.\d+\.output\.dense", exclude_modules=["layer.1.output.dense"]),
    )
    assert model.targeted_module_names == ["encoder.layer.0.output.dense"]


def test_tuner_layer_bookkeeping_from_peft():
    """peft's BaseTunerLayer methods on a DensityLayer: set_adapter (which adapters gate, which train),
    enable_adapters and delete_adapter."""
    layer = DensityLayer(torch.nn.Linear(4, 6), "a", DensityConfig(), module_name="proj")
    layer.update_layer("b", DensityConfig(norm_axis="tokens"))
    with torch.no_grad():
        layer.daam_scale["a"].fill_(1.0)
        layer.daam_scale["b"].fill_(0.5)
    x = torch.randn(2, 5, 4)
    h = layer.base_layer(x)
    assert torch.equal(layer(x), layer.gate(h, "a"))  # only "a" is active
    assert not layer.daam_scale["b"].requires_grad
    layer.set_adapter(["a", "b"])
    assert torch.equal(layer(x), layer.gate(layer.gate(h, "a"), "b"))
    assert layer.daam_scale["b"].requires_grad
    layer.enable_adapters(False)
    assert torch.equal(layer(x), h)
    layer.enable_adapters(True)
    layer.delete_adapter("b")
    assert set(layer.daam_gate) == set(layer.daam_scale) == set(layer.daam_settings) == {"a"}
    assert layer.active_adapters == ["a"]


def test_peft_own_unload_would_strip_the_lora_underneath(tiny_bert):
    """Why DensityModel.unload is its own: peft's unwraps tuner layers recursively, then fails on a PeftModel."""
    model = get_density_model(lora_model(tiny_bert), DensityConfig())
    with pytest.raises(AttributeError, match="peft_config"):
        BaseTuner.unload(model)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())  # the LoRA layers went too

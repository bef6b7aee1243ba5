"""DensityModel on a tiny random BERT: identity at init, what trains, one and two optimiser steps, save/load,
disable_adapter, unload, merge refusal, and masks with norm_axis="tokens"."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from _peft_helpers import trainable_names

from densattn.peft import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    DensityConfig,
    DensityLayer,
    DensityModel,
    get_density_model,
    get_density_model_state_dict,
    set_density_model_state_dict,
)

PRESETS = ["paper", "mixture_of_densities", "mixture"]


def train_steps(model, batch, steps, *, lr=0.05):
    """AdamW without weight decay on the trainable parameters; returns the parameters' values after each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    target = torch.tensor([0, 1, 2])
    history = []
    for _ in range(steps):
        optimiser.zero_grad()
        out = model(**batch)
        logits = out.logits if hasattr(out, "logits") else out.last_hidden_state[:, 0, :3]
        torch.nn.functional.cross_entropy(logits, target).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        optimiser.step()
        history.append(grads)
    return history


@pytest.mark.parametrize("norm_axis", ["features", "tokens"])
@pytest.mark.parametrize("preset", PRESETS)
def test_identical_outputs_at_init(tiny_bert, batch, norm_axis, preset):
    reference = copy.deepcopy(tiny_bert)
    heads = 4 if norm_axis == "features" else 1
    model = get_density_model(
        tiny_bert, DensityConfig(norm_axis=norm_axis, preset=preset, num_heads=heads, num_gaussians=2)
    )
    assert len(list(model.density_layers())) == 4  # 2 layers x (attention output, FFN output)
    assert not any(m.training for m in model.modules())  # the base model's eval mode, gates included
    got = model(**batch).last_hidden_state
    assert torch.equal(got, reference(**batch).last_hidden_state)
    with torch.no_grad():  # the gate is live: a nonzero mixing weight changes the output
        for _, layer in model.density_layers():
            layer.daam_scale["default"].fill_(0.5)
    assert not torch.allclose(model(**batch).last_hidden_state, got)


def test_only_adapter_and_modules_to_save_train(tiny_bert_classifier):
    model = get_density_model(tiny_bert_classifier, DensityConfig())
    assert model.peft_config["default"].modules_to_save == ["classifier"]  # saved by construction
    names = trainable_names(model)
    assert names and all(".daam_" in n or ".modules_to_save.default." in n for n in names)
    gates = {n for n in names if ".daam_" in n}
    assert len(gates) == 4 * 3  # offset, spread, mixing weight per gated module
    assert {n for n in names if "modules_to_save" in n} == {
        "model.classifier.modules_to_save.default.weight",
        "model.classifier.modules_to_save.default.bias",
    }
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in model.parameters())


def test_print_trainable_parameters(tiny_bert, capsys):
    model = get_density_model(tiny_bert, DensityConfig(norm_axis="tokens"))
    model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 4 * 3 * 32  # offsets, spreads and mixing weights per feature
    assert capsys.readouterr().out.strip() == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    )


@pytest.mark.parametrize("norm_axis", ["features", "tokens"])
def test_one_step_moves_every_parameter_with_a_gradient_and_no_frozen_weight(tiny_bert_classifier, batch, norm_axis):
    model = get_density_model(tiny_bert_classifier, DensityConfig(norm_axis=norm_axis))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (grads,) = train_steps(model, batch, 1)
    after = dict(model.named_parameters())
    for name, p in after.items():
        if name not in grads:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
        elif grads[name].abs().max() > 0:
            assert not torch.equal(p, before[name]), f"{name} has a gradient but did not move"
        else:  # documented: at g = 0 the Gaussian offsets / spreads get exactly zero gradient
            assert ".daam_gate." in name
            assert torch.equal(p, before[name])
    assert all(grads[n].abs().max() > 0 for n in grads if ".daam_scale." in n)


@pytest.mark.parametrize("preset", PRESETS)
def test_second_step_moves_the_gaussian_parameters(tiny_bert_classifier, batch, preset):
    model = get_density_model(tiny_bert_classifier, DensityConfig(norm_axis="tokens", preset=preset, num_gaussians=2))
    gaussians = {n: p for n, p in model.named_parameters() if ".daam_gate." in n}
    before = {n: p.detach().clone() for n, p in gaussians.items()}
    history = train_steps(model, batch, 2)
    for name, p in gaussians.items():
        assert history[1][name].abs().max() > 0, f"{name} still has no gradient at step 2"
        assert not torch.equal(p, before[name]), f"{name} did not move in two steps"


@pytest.mark.parametrize("norm_axis", ["features", "tokens"])
def test_save_and_load_on_a_fresh_base_gives_identical_logits(
    tiny_bert_classifier, _bert_templates, batch, tmp_path, norm_axis
):
    model = get_density_model(tiny_bert_classifier, DensityConfig(norm_axis=norm_axis, preset="mixture"))
    train_steps(model, batch, 3)
    model.eval()
    logits = model(**batch).logits
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    fresh = copy.deepcopy(_bert_templates[1])
    loaded = DensityModel.from_pretrained(fresh, tmp_path)
    saved_config = DensityConfig.from_pretrained(tmp_path)
    assert saved_config == model.peft_config["default"]
    assert loaded.peft_config["default"] == dataclasses.replace(saved_config, inference_mode=True)
    assert torch.equal(loaded(**batch).logits, logits)
    assert not loaded.training and not trainable_names(loaded)
    base_keys = set(copy.deepcopy(_bert_templates[1]).state_dict())
    saved = get_density_model_state_dict(loaded)
    assert not set(saved) & base_keys - {"classifier.weight", "classifier.bias"}  # adapter weights only

    trainable = DensityModel.from_pretrained(copy.deepcopy(_bert_templates[1]), tmp_path, is_trainable=True)
    assert trainable_names(trainable) == trainable_names(model)


def test_state_dict_functions_round_trip_and_reject_mismatches(tiny_bert, _bert_templates, batch):
    model = get_density_model(tiny_bert, DensityConfig(norm_axis="tokens"))
    with torch.no_grad():
        for p in model.adapter_parameters():
            p.add_(torch.rand_like(p))
    state = get_density_model_state_dict(model)
    other = get_density_model(copy.deepcopy(_bert_templates[0]), DensityConfig(norm_axis="tokens"))
    set_density_model_state_dict(other, state)
    assert torch.equal(other(**batch).last_hidden_state, model(**batch).last_hidden_state)
    with pytest.raises(ValueError, match="missing .*daam_scale"):
        set_density_model_state_dict(other, {k: v for k, v in state.items() if not k.endswith("daam_scale")})
    with pytest.raises(ValueError, match="shape"):
        set_density_model_state_dict(other, {k: v[..., :1] if "spread" in k else v for k, v in state.items()})
    with pytest.raises(ValueError, match="no DAAM-PEFT adapter named 'other'"):
        get_density_model_state_dict(model, adapter_name="other")


def test_disable_adapter_gives_base_outputs(tiny_bert_classifier, _bert_templates, batch):
    model = get_density_model(tiny_bert_classifier, DensityConfig(norm_axis="tokens"))
    train_steps(model, batch, 3)
    base_logits = _bert_templates[1](**batch).logits
    adapted = model(**batch).logits
    assert not torch.allclose(adapted, base_logits)
    flags = trainable_names(model)
    with model.disable_adapter():
        assert torch.equal(model(**batch).logits, base_logits)
    assert torch.equal(model(**batch).logits, adapted)
    assert trainable_names(model) == flags


def test_disable_adapter_keeps_a_loaded_adapter_frozen(tiny_bert, _bert_templates, tmp_path, batch):
    get_density_model(tiny_bert, DensityConfig()).save_pretrained(tmp_path)
    loaded = DensityModel.from_pretrained(copy.deepcopy(_bert_templates[0]), tmp_path)
    with loaded.disable_adapter():
        loaded(**batch)
    assert not trainable_names(loaded)


def test_merge_and_unload_raises(tiny_bert):
    model = get_density_model(tiny_bert, DensityConfig())
    for merge in (model.merge_and_unload, model.merge_adapter):
        with pytest.raises(ValueError, match="cannot be merged into the model's weights.*unload"):
            merge()
    layer = next(layer for _, layer in model.density_layers())
    with pytest.raises(ValueError, match="cannot be merged"):
        layer.merge()


def test_unload_returns_the_untouched_base_model(tiny_bert_classifier, _bert_templates, batch):
    pristine = copy.deepcopy(_bert_templates[1])
    flags = {n: p.requires_grad for n, p in pristine.named_parameters()}
    model = get_density_model(tiny_bert_classifier, DensityConfig(norm_axis="tokens"))
    train_steps(model, batch, 2)
    base = model.unload()
    assert base is tiny_bert_classifier
    assert [(n, type(m)) for n, m in base.named_modules()] == [(n, type(m)) for n, m in pristine.named_modules()]
    assert not any(isinstance(m, DensityLayer) for m in base.modules())
    state, want = base.state_dict(), pristine.state_dict()
    assert list(state) == list(want) and all(torch.equal(state[k], want[k]) for k in want)
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags
    assert torch.equal(base(**batch).logits, pristine(**batch).logits)
    assert not hasattr(base, "peft_config")


def test_tokens_axis_padding_does_not_change_unpadded_tokens(tiny_bert, batch):
    """Each example alone (no padding) vs the padded batch, in float64: equal on the real tokens, with the mask taken
    from the call's attention_mask (keyword or positional). Without it, padding leaks into the statistics."""
    model = get_density_model(tiny_bert.double(), DensityConfig(norm_axis="tokens"))
    with torch.no_grad():
        for p in model.adapter_parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    padded = model(input_ids=ids, attention_mask=mask).last_hidden_state
    positional = model(ids, mask).last_hidden_state
    assert torch.equal(positional, padded)
    leaky = model(input_ids=ids, attention_mask=mask, density_mask=torch.ones_like(mask)).last_hidden_state
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        alone = model(input_ids=ids[row : row + 1, :n]).last_hidden_state[0]
        torch.testing.assert_close(padded[row, :n], alone, rtol=1e-10, atol=1e-10)
        if n < ids.shape[1]:
            assert (leaky[row, :n] - alone).abs().max() > 1e-2


def test_features_axis_needs_no_mask(tiny_bert, batch):
    model = get_density_model(tiny_bert.double(), DensityConfig(num_heads=2))
    with torch.no_grad():
        for p in model.adapter_parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    padded = model(**batch).last_hidden_state
    n = int(batch["attention_mask"][2].sum())
    alone = model(input_ids=batch["input_ids"][2:3, :n]).last_hidden_state[0]
    torch.testing.assert_close(padded[2, :n], alone, rtol=1e-10, atol=1e-10)


def test_get_density_model_leaves_the_callers_config_alone(tiny_bert):
    config = DensityConfig()
    model = get_density_model(tiny_bert, config)
    assert config.target_modules is None and config.modules_to_save is None
    assert model.peft_config["default"].target_modules == ["attention.output.dense", "output.dense"]
    assert model.peft_config["default"].modules_to_save == []

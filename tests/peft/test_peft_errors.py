"""Bad input: every mistake is a ValueError that names the module (or argument) and says what to do; nothing is
replaced in the model when construction fails."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from densattn.peft import DensityConfig, DensityLayer, get_density_model


def assert_untouched(model, pristine):
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in pristine.named_modules()]
    assert all(p.requires_grad for p in model.parameters())


def test_targets_matching_nothing(tiny_bert):
    pristine = copy.deepcopy(tiny_bert)
    with pytest.raises(ValueError, match=r"target_modules=\['q_proj'\] matches no module of BertModel") as info:
        get_density_model(tiny_bert, DensityConfig(target_modules=["q_proj"]))
    message = str(info.value)
    assert "output.dense" in message and "default_target_modules" in message  # what exists, and the defaults
    with pytest.raises(ValueError, match=r"target_modules='.\*nothing' matches no module"):
        get_density_model(tiny_bert, DensityConfig(target_modules=".*nothing"))
    assert_untouched(tiny_bert, pristine)


def test_target_whose_output_size_is_unknown(tiny_bert):
    with pytest.raises(ValueError, match=r"'encoder.layer.0' \(BertLayer\) has no known output size.*target e\.g\."):
        get_density_model(tiny_bert, DensityConfig(target_modules=r"encoder\.layer\.0"))


def test_heads_that_do_not_divide_the_features(tiny_bert):
    pristine = copy.deepcopy(tiny_bert)
    with pytest.raises(
        ValueError,
        match=r"num_heads=5 does not split the 32 output features of module "
        r"'encoder.layer.0.attention.output.dense'.*use num_heads in \[1, 2, 4, 8, 16\]",
    ):
        get_density_model(tiny_bert, DensityConfig(num_heads=5))
    with pytest.raises(ValueError, match=r"num_heads=32 .* chunks of >= 2"):
        get_density_model(tiny_bert, DensityConfig(num_heads=32))
    assert_untouched(tiny_bert, pristine)


def test_tokens_axis_on_an_output_without_tokens(tiny_bert, batch):
    model = get_density_model(
        tiny_bert, DensityConfig(target_modules=["output.dense", "pooler.dense"], norm_axis="tokens")
    )
    with pytest.raises(
        ValueError,
        match=r"norm_axis='tokens' needs a token .* module 'pooler.dense' returned shape "
        r"\(3, 32\).*norm_axis='features' or exclude",
    ):
        model(**batch)
    fixed = get_density_model(
        copy.deepcopy(model.unload()),
        DensityConfig(
            target_modules=["output.dense", "pooler.dense"], exclude_modules=["pooler.dense"], norm_axis="tokens"
        ),
    )
    assert "pooler.dense" not in fixed.targeted_module_names
    fixed(**batch)


def test_features_axis_on_a_single_feature():
    net = nn.Sequential(nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"module '0' has 1 output feature; norm_axis='features' needs >= 2"):
        get_density_model(net, DensityConfig(target_modules=["0"]))


def test_tokens_axis_with_a_single_position():
    model = get_density_model(
        nn.Sequential(nn.Conv2d(3, 4, 1)), DensityConfig(target_modules=["0"], norm_axis="tokens")
    )
    with pytest.raises(ValueError, match=r"module '0' returned 1 position .* needs >= 2"):
        model(torch.randn(2, 3, 1, 1))


def test_mask_that_does_not_fit(tiny_bert, batch):
    model = get_density_model(tiny_bert, DensityConfig(norm_axis="tokens"))
    with pytest.raises(
        ValueError,
        match=r"token mask of shape \(3, 5\) does not fit module "
        r"'encoder.layer.0.attention.output.dense'.*positions \(9,\)",
    ):
        model(**batch, density_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be a \\(batch, positions\\) tensor"):
        model(**batch, density_mask=torch.ones(9, dtype=torch.bool))


def test_conv_mask_may_be_spatial_or_flat():
    model = get_density_model(
        nn.Sequential(nn.Conv2d(3, 4, 1)), DensityConfig(target_modules=["0"], norm_axis="tokens")
    )
    with torch.no_grad():
        model.model[0].daam_scale["default"].fill_(1.0)
    x = torch.randn(2, 3, 4, 5)
    mask = torch.rand(2, 4, 5) > 0.3
    torch.testing.assert_close(model(x, density_mask=mask), model(x, density_mask=mask.flatten(1)))
    with pytest.raises(ValueError, match="does not fit module '0'"):
        model(x, density_mask=torch.ones(2, 5, 4, dtype=torch.bool))


def test_encoder_adapter_instead_of_its_model(whisper_encoder):
    with pytest.raises(
        ValueError, match=r"pass the encoder's torch model, e.g. copy.deepcopy\(encoder.raw_model\(\)\)"
    ):
        get_density_model(whisper_encoder, DensityConfig())


def test_layer_rejects_a_module_without_known_size():
    with pytest.raises(ValueError, match=r"module 'act' \(ReLU\) has no known output size"):
        DensityLayer(nn.ReLU(), "default", DensityConfig(), module_name="act")


def test_wrong_config_type():
    with pytest.raises(ValueError, match="config must be a densattn.peft.DensityConfig"):
        get_density_model(nn.Linear(2, 2), {"norm_axis": "tokens"})


def test_encoder_decoder_tokens_axis_needs_the_decoder_excluded():
    import transformers as T

    config = T.BartConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        vocab_size=50,
    )
    ids, mask = torch.tensor([[0, 5, 7, 2]]), torch.ones(1, 4, dtype=torch.long)
    decoder_ids = torch.tensor([[2, 0, 5]])
    model = get_density_model(T.BartModel(config).eval(), DensityConfig(norm_axis="tokens"))
    with pytest.raises(ValueError, match=r"does not fit module 'decoder.layers.0.self_attn.out_proj'"):
        model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    encoder_only = get_density_model(
        T.BartModel(config).eval(), DensityConfig(norm_axis="tokens", exclude_modules=r".*decoder\..*")
    )
    assert all(n.startswith("encoder.") for n in encoder_only.targeted_module_names)
    encoder_only(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)

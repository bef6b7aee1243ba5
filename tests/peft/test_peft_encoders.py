"""DAAM-PEFT on the bundled encoders (MiniLM, the Whisper tiny encoder, EfficientNet-Lite0) and HF models:
default targets, identical outputs at initialisation, live gates, masks, and save/load on a fresh copy."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from _peft_helpers import tiny_bert_config
from transformers import BertModel, WhisperConfig

from densattn.peft import DensityConfig, DensityModel, default_target_modules, get_density_model


def liven(model: DensityModel, value: float = 0.5) -> None:
    """Nonzero mixing weights and offsets, so that the gates change the outputs."""
    with torch.no_grad():
        for _, layer in model.density_layers():
            layer.daam_scale["default"].fill_(value)
            layer.daam_gate["default"].mean_offset.fill_(0.3)


def test_default_targets_of_the_bundled_encoders(minilm_model, whisper_encoder, efficientnet_encoder):
    assert default_target_modules(minilm_model) == ["attention.output.dense", "output.dense"]
    assert default_target_modules(whisper_encoder) == ["self_attn.out_proj", "fc2"]  # an encoder adapter works too
    assert default_target_modules(whisper_encoder.raw_model()) == ["self_attn.out_proj", "fc2"]
    assert default_target_modules(efficientnet_encoder.raw_model()) == ["_project_conv"]


HF_FAMILIES = {
    "distilbert": (
        lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=30, dim=16, n_layers=1, n_heads=2, hidden_dim=32)),
        ["attention.out_lin", "ffn.lin2"],
        {"input_ids": torch.tensor([[1, 5, 7, 2]])},
    ),
    "vit": (
        lambda: T.ViTModel(
            T.ViTConfig(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                image_size=8,
                patch_size=4,
            )
        ),
        ["attention.o_proj", "mlp.fc2"],
        {"pixel_values": torch.randn(1, 3, 8, 8)},
    ),
    "wav2vec2": (
        lambda: T.Wav2Vec2Model(
            T.Wav2Vec2Config(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                conv_dim=(8, 8),
                conv_stride=(5, 2),
                conv_kernel=(10, 3),
                num_conv_pos_embeddings=4,
                num_conv_pos_embedding_groups=2,
            )
        ),
        ["attention.out_proj", "feed_forward.output_dense"],
        {"input_values": torch.randn(1, 400)},
    ),
    "llama": (
        lambda: T.LlamaModel(
            T.LlamaConfig(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                intermediate_size=32,
                vocab_size=50,
            )
        ),
        ["o_proj", "down_proj"],
        {"input_ids": torch.tensor([[1, 5, 7, 2]])},
    ),
    "gpt2": (  # transformers' Conv1D
        lambda: T.GPT2Model(
            T.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0)
        ),
        ["attn.c_proj", "mlp.c_proj"],
        {"input_ids": torch.tensor([[1, 5, 7, 2]])},
    ),
    "t5": (
        lambda: T.T5EncoderModel(T.T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8, vocab_size=50)),
        ["SelfAttention.o", "DenseReluDense.wo"],
        {"input_ids": torch.tensor([[1, 5, 7, 2]])},
    ),
    "bart": (  # encoder and decoder: 4 gates in a one-layer model
        lambda: T.BartModel(
            T.BartConfig(
                d_model=16,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
                vocab_size=50,
            )
        ),
        ["self_attn.out_proj", "fc2"],
        {"input_ids": torch.tensor([[0, 5, 7, 2]])},
    ),
    "gpt_neox": (
        lambda: T.GPTNeoXModel(
            T.GPTNeoXConfig(
                hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50
            )
        ),
        ["attention.dense", "mlp.dense_4h_to_h"],
        {"input_ids": torch.tensor([[1, 5, 7, 2]])},
    ),
}


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_default_targets_of_other_hf_families(family):
    build, targets, inputs = HF_FAMILIES[family]
    torch.manual_seed(0)
    base = build().eval()
    assert default_target_modules(base) == targets
    frozen = copy.deepcopy(base).requires_grad_(False)  # T5 + SDPA on CPU: with and without grad differ by 4e-7
    reference = frozen(**inputs).last_hidden_state
    model = get_density_model(base, DensityConfig(norm_axis="tokens"))
    layers = 2 if family == "bart" else 1  # one layer (per stack): attention output and FFN output
    assert len(model.targeted_module_names) == 2 * layers
    assert torch.equal(model(**inputs).last_hidden_state, reference)


def test_default_targets_of_any_hf_folder(tmp_path):
    folder = tmp_path / "bert"  # any HF folder: what AutoModel loads from it
    BertModel(tiny_bert_config()).save_pretrained(folder)
    from transformers import AutoModel

    assert default_target_modules(AutoModel.from_pretrained(folder)) == ["attention.output.dense", "output.dense"]
    with pytest.raises(ValueError, match="no default DAAM-PEFT targets for Sequential.*target_modules"):
        default_target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("norm_axis", ["features", "tokens"])
def test_minilm_identical_at_init_and_masked(minilm_model, norm_axis):
    from transformers import AutoTokenizer

    from densattn.encoders.minilm import minilm_path

    tokens = AutoTokenizer.from_pretrained(minilm_path())(
        ["a cat sat on the mat", "hello"], padding=True, return_tensors="pt"
    )
    reference = copy.deepcopy(minilm_model)
    model = get_density_model(
        minilm_model, DensityConfig(norm_axis=norm_axis, num_heads=8 if norm_axis == "features" else 1)
    )
    assert len(model.targeted_module_names) == 12  # 6 layers x (attention output, FFN output)
    assert model.get_nb_trainable_parameters()[0] == (4800 if norm_axis == "features" else 13824)  # docs/peft.md
    got = model(**tokens).last_hidden_state
    assert torch.equal(got, reference(**tokens).last_hidden_state)
    liven(model)
    padded = model(**tokens).last_hidden_state
    assert (padded - got).abs().max() > 1e-3
    alone = model(**{k: v[1:, :3] for k, v in tokens.items()}).last_hidden_state  # "hello" = [CLS] hello [SEP]
    torch.testing.assert_close(padded[1, :3], alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm_axis", ["features", "tokens"])
def test_whisper_encoder_identical_at_init_with_a_frame_mask(whisper_encoder, norm_axis):
    """The Whisper encoder has no attention mask: the valid-frame mask of ``preprocess`` goes in as density_mask."""
    waves = [torch.randn(16000).numpy() * 0.1, torch.randn(6000).numpy() * 0.1]  # 1 s and 0.375 s
    mel, frames = whisper_encoder.preprocess(waves)  # (2, 80, 100), (2, 50)
    assert frames[1].sum() < frames.shape[1]
    base = copy.deepcopy(whisper_encoder.raw_model())
    reference = base(mel).last_hidden_state
    model = get_density_model(base, DensityConfig(norm_axis=norm_axis))
    assert len(model.targeted_module_names) == 8  # 4 layers x (out_proj, fc2)
    assert model.get_nb_trainable_parameters()[0] == (3088 if norm_axis == "features" else 9216)
    assert torch.equal(model(mel, density_mask=frames).last_hidden_state, reference)
    liven(model)
    out = model(mel, density_mask=frames).last_hidden_state
    assert (out - reference).abs().max() > 1e-3
    if norm_axis == "tokens":  # the mask is used: ignoring it changes the statistics of example 1
        unmasked = model(mel).last_hidden_state
        assert (unmasked[1] - out[1]).abs().max() > 1e-4
        torch.testing.assert_close(unmasked[0], out[0], rtol=1e-4, atol=1e-4)  # example 0 has no padding frames


@pytest.mark.parametrize("norm_axis", ["features", "tokens"])
def test_efficientnet_identical_at_init(efficientnet_encoder, norm_axis):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64)
    base = copy.deepcopy(efficientnet_encoder.raw_model())
    reference = base(pixels)
    model = get_density_model(base, DensityConfig(norm_axis=norm_axis, num_heads=8 if norm_axis == "features" else 1))
    assert len(model.targeted_module_names) == 16  # one projection conv per MBConv block
    assert model.get_nb_trainable_parameters()[0] == (2064 if norm_axis == "features" else 5424)
    outputs = model(pixels)
    assert all(torch.equal(a, b) for a, b in zip(outputs, reference))
    liven(model)
    assert (model(pixels)[-1] - reference[-1]).abs().max() > 1e-3


def test_efficientnet_save_and_load(efficientnet_encoder, tmp_path):
    pixels = torch.randn(2, 3, 64, 64)
    model = get_density_model(copy.deepcopy(efficientnet_encoder.raw_model()), DensityConfig(norm_axis="tokens"))
    liven(model, 0.7)
    want = model(pixels)[-1]
    model.save_pretrained(tmp_path)
    loaded = DensityModel.from_pretrained(copy.deepcopy(efficientnet_encoder.raw_model()), tmp_path)
    assert torch.equal(loaded(pixels)[-1], want)


def test_tiny_whisper_config_targets_match_bundled():
    """A randomly initialised HF Whisper encoder gets the same targets as the bundled one."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(
        d_model=16,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        num_mel_bins=8,
        max_source_positions=10,
    )
    assert default_target_modules(WhisperEncoder(config)) == ["self_attn.out_proj", "fc2"]

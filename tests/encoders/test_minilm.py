"""MiniLM: shapes, frozen, pooling over real tokens only, padding invariance, sentence semantics."""

from __future__ import annotations

import torch

TEXTS = [
    "A cat sleeps on the sofa.",
    "The kitten is napping on the couch.",
    "Interest rates rose again this year.",
]


def test_shape_and_frozen(minilm):
    features = minilm.encode(TEXTS)
    assert features.shape == (3, 7, 384) and features.dtype == torch.float32
    assert (minilm.num_layers, minilm.dim, minilm.modality) == (7, 384, "text")
    model = minilm.raw_model()
    assert not model.training and not minilm.training
    assert not any(p.requires_grad for p in model.parameters())
    minilm.train()  # frozen by contract: stays in eval mode
    assert not model.training


def test_pooling_equals_mean_over_real_tokens(minilm):
    batch = ["short", "a much longer sentence with many more tokens in it than the first one"]
    features = minilm.encode(batch)
    tokens = minilm.processor(batch, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.raw_model()(**tokens, output_hidden_states=True).hidden_states
    count = int(tokens["attention_mask"][0].sum())
    assert count < tokens["attention_mask"].shape[1]  # the first text really is padded
    for layer, h in enumerate(hidden):
        expected = h[0, :count].mean(dim=0)
        torch.testing.assert_close(features[0, layer], expected, atol=1e-5, rtol=1e-5)


def test_padding_invariance(minilm):
    text = "The quick brown fox jumps over the lazy dog."
    long_text = " ".join(["padding makes this example far longer than the first one"] * 8)
    alone = minilm.encode([text])[0]
    batched = minilm.encode([text, long_text])[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_similar_sentences_are_closer(minilm):
    last = torch.nn.functional.normalize(minilm.encode(TEXTS)[:, -1], dim=-1)
    similar, unrelated = float(last[0] @ last[1]), float(last[0] @ last[2])
    assert similar > unrelated + 0.2


def test_identity_is_stable(minilm):
    first, second = minilm.identity(), minilm.identity()
    assert first == second
    assert first["encoder"] == "minilm" and first["pooling"] == "mean-masked" and first["max_length"] == 128
    assert len(first["weights_sha256"]) == 64

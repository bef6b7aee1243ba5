"""Helpers shared by the DAAM-PEFT tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch
from transformers import BertConfig

VOCAB = 60


def tiny_bert_config(**overrides) -> BertConfig:
    options = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,  # larger than BERT's 0.02, so hidden states vary across tokens as in trained models
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    options.update(overrides)
    return BertConfig(**options)


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}

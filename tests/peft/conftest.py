"""Tiny random BERTs (built once, copied per test) and the bundled encoders' raw models (loaded once)."""

from __future__ import annotations

import copy

import pytest
import torch
from _peft_helpers import VOCAB, tiny_bert_config
from transformers import BertForSequenceClassification, BertModel


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models are far slower on oversubscribed threads
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def _bert_templates():
    torch.manual_seed(0)
    encoder = BertModel(tiny_bert_config()).eval()
    torch.manual_seed(1)
    classifier = BertForSequenceClassification(tiny_bert_config()).eval()
    return encoder, classifier


@pytest.fixture
def tiny_bert(_bert_templates) -> BertModel:
    """A fresh copy of a tiny random ``BertModel`` (2 layers, d = 32), eval mode."""
    return copy.deepcopy(_bert_templates[0])


@pytest.fixture
def tiny_bert_classifier(_bert_templates) -> BertForSequenceClassification:
    """A fresh copy of a tiny random ``BertForSequenceClassification`` (3 labels), eval mode."""
    return copy.deepcopy(_bert_templates[1])


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Token ids ``(3, 9)`` with ragged lengths 9, 6, 4 and the matching 0/1 ``attention_mask``."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (3, 9), generator=generator)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, length in enumerate((9, 6, 4)):
        mask[row, :length] = 1
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="session")
def _minilm_template():
    from transformers import AutoModel

    from densattn.encoders.minilm import minilm_path

    try:
        path = minilm_path()
    except ValueError as error:
        pytest.skip(str(error))
    return AutoModel.from_pretrained(path).eval()


@pytest.fixture
def minilm_model(_minilm_template):
    return copy.deepcopy(_minilm_template)


@pytest.fixture(scope="session")
def whisper_encoder():
    from densattn.encoders.whisper import WhisperTinyEncoder

    try:
        return WhisperTinyEncoder(window_seconds=1)  # 50 encoder frames: fast
    except ValueError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def efficientnet_encoder():
    from densattn.encoders.efficientnet import EfficientNetLite0Encoder

    try:
        return EfficientNetLite0Encoder(image_size=64)
    except ValueError as error:
        pytest.skip(str(error))

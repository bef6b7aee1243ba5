"""EfficientNet-Lite0: ImageNet sanity check, TF-SAME shapes, zero-padded block features, grey -> RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densattn.encoders.efficientnet import STAGES, EfficientNetLite0Encoder

CHANNELS = [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320]


def test_classifies_sample_photos():
    data = pytest.importorskip("skimage.data")
    encoder = EfficientNetLite0Encoder(image_size=224)
    probabilities = encoder.classify([data.chelsea(), data.coffee()])
    cat_top3 = set(probabilities[0].topk(3).indices.tolist())
    assert {281, 282} <= cat_top3  # tabby, tiger cat
    assert int(probabilities[0].argmax()) in {281, 282, 285}  # a domestic cat class
    assert int(probabilities[1].argmax()) == 967  # espresso
    assert float(probabilities[1, 967]) > 0.9


def test_block_shapes_follow_same_padding(efficientnet):
    x = torch.zeros(1, 3, 113, 97)  # odd sizes: TF SAME gives ceil(size / stride)
    outputs = efficientnet.raw_model()(x)
    assert [h.shape[1] for h in outputs] == CHANNELS
    size = (-(-113 // 2), -(-97 // 2))  # stem stride 2
    index = 0
    for repeats, _kernel, stride, *_ in STAGES:
        size = (-(-size[0] // stride), -(-size[1] // stride))
        for _ in range(repeats):
            assert tuple(outputs[index].shape[2:]) == size
            index += 1


def test_features_are_zero_padded_pooled_blocks(efficientnet):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    features = efficientnet.encode([image])[0]
    assert features.shape == (16, 320) and efficientnet.num_layers == 16 and efficientnet.dim == 320
    with torch.no_grad():
        outputs = efficientnet.raw_model()(efficientnet.preprocess([image]))
    for layer, (h, channels) in enumerate(zip(outputs, CHANNELS)):
        torch.testing.assert_close(features[layer, :channels], h[0].mean(dim=(1, 2)))
        assert torch.all(features[layer, channels:] == 0)


def test_grey_equals_replicated_rgb_and_batch_invariance(efficientnet):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    other = rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    alone = efficientnet.encode([grey])[0]
    torch.testing.assert_close(efficientnet.encode([rgb])[0], alone)
    torch.testing.assert_close(efficientnet.encode([other, grey])[1], alone, atol=1e-5, rtol=1e-5)


def test_frozen_and_bad_input(efficientnet):
    assert not efficientnet.training and not any(p.requires_grad for p in efficientnet.parameters())
    with pytest.raises(ValueError, match="uint8"):
        efficientnet.encode([np.zeros((8, 8, 3), dtype=np.float64)])
    assert efficientnet.identity()["image_size"] == 112

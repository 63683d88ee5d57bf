import pytest
import torch

from facekit.builtins.losses import inverse_frequency_weights
from facekit.plugins import losses


def test_weighted_loss_weights_are_inverse_frequency_averaging_one():
    counts = [10, 5, 1, 4]
    weights = inverse_frequency_weights(counts)
    expected = torch.tensor([1 / 10, 1 / 5, 1 / 1, 1 / 4])
    expected = expected / expected.mean()
    assert torch.allclose(weights, expected)
    assert weights.mean() == pytest.approx(1.0)
    assert torch.allclose(losses().get("weighted").build(counts).weight, expected)


def test_class_without_training_images_gets_weight_zero():
    weights = inverse_frequency_weights([4, 0, 2])
    assert weights[1] == 0 and weights[[0, 2]].mean() == pytest.approx(1.0)


def test_plain_loss_is_cross_entropy():
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert losses().get("plain").build([2, 2, 2])(logits, targets) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)))


def test_weighted_loss_counts_a_rare_class_more():
    logits = torch.zeros(3, 2)
    logits[2, 1] = -5.0  # the rare class-1 sample is badly wrong
    targets = torch.tensor([0, 0, 1])
    plain = losses().get("plain").build([2, 1])(logits, targets)
    weighted = losses().get("weighted").build([2, 1])(logits, targets)
    assert weighted > plain

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


def _hand_smoothed(logits, targets, smoothing, weights):
    """Label-smoothed cross-entropy written out: target (1 - s) one-hot + s / C uniform, weighted.

    Each image's term weighs every class c by weight_c; the mean divides by the targets' weights.
    """
    log_p = torch.log_softmax(logits.double(), 1)
    classes = logits.shape[1]
    w = weights.double()
    hit = -(w[targets] * log_p[torch.arange(len(targets)), targets])
    spread = -(log_p * w).sum(1) / classes
    return float(((1 - smoothing) * hit + smoothing * spread).sum() / w[targets].sum())


@pytest.mark.parametrize("name", ["plain", "weighted"])
def test_label_smoothing_matches_a_hand_computation(name):
    generator = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(8, 4, generator=generator), torch.tensor([0, 1, 2, 3, 0, 0, 1, 0])
    counts = [4, 2, 1, 1]
    spec = losses().get(name)
    weights = inverse_frequency_weights(counts) if name == "weighted" else torch.ones(4)
    got = float(spec.make(counts, label_smoothing=0.1)(logits, targets))
    assert got == pytest.approx(_hand_smoothed(logits, targets, 0.1, weights), rel=1e-5)
    unsmoothed = float(spec.make(counts)(logits, targets))
    assert unsmoothed == pytest.approx(_hand_smoothed(logits, targets, 0.0, weights), rel=1e-5) and unsmoothed != pytest.approx(got)


def test_label_smoothing_rules_are_usage_errors():
    from facekit.api import LossSpec
    from facekit.errors import UsageError

    with pytest.raises(UsageError, match="--label-smoothing 1.0: expected a number from 0"):
        losses().get("plain").make([1, 1], label_smoothing=1.0)
    legacy = LossSpec("legacy", lambda counts: torch.nn.CrossEntropyLoss())  # a plugin from before the option
    assert isinstance(legacy.make([1, 1]), torch.nn.CrossEntropyLoss)
    with pytest.raises(UsageError, match="--loss legacy does not support --label-smoothing"):
        legacy.make([1, 1], label_smoothing=0.1)

"""ArcFace and CosFace: the margin math against its direct formula, stability, options, and training a run."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _testutil import InterruptAt
from facekit.compiling import TrainStep
from facekit.config import TrainConfig
from facekit.engine import Trainer
from facekit.errors import UsageError
from facekit.margins import MIN_SIN_SQUARED, CosineHead, MarginLoss, arcface_target
from facekit.heads import logit_scale
from facekit.plugins import architectures, losses
from facekit.runs import Run, load_checkpoint
from facekit.testing import check_loss


def direct_margin_loss(kind, cos, targets, s, m, weight=None):
    """The textbook formula in float64: arccos, add the angle (ArcFace) or subtract from the cosine (CosFace)."""
    cos = cos.double().clamp(-1, 1)
    theta = torch.arccos(cos)
    one_hot = F.one_hot(targets, cos.shape[1]).bool()
    margined = torch.cos(theta + m) if kind == "arcface" else cos - m
    logits = s * torch.where(one_hot, margined, cos)
    return F.cross_entropy(logits, targets, weight=None if weight is None else weight.double())


@pytest.mark.parametrize("kind, m", [("arcface", 0.5), ("arcface", 0.2), ("cosface", 0.35)])
def test_the_margin_loss_is_the_direct_formula(kind, m):
    generator = torch.Generator().manual_seed(0)
    # Angles below pi - m, where ArcFace's formula is cos(theta + m) itself.
    cos = torch.rand(32, 6, generator=generator) * 1.6 - 0.8
    targets = torch.arange(32) % 6
    weight = torch.rand(6, generator=generator) + 0.5
    for w in (None, weight):
        loss = MarginLoss(kind, 30.0, m, w)(30.0 * cos, targets)
        assert loss.item() == pytest.approx(direct_margin_loss(kind, cos, targets, 30.0, m, w).item(), rel=1e-5)


def test_arcface_past_pi_minus_m_keeps_decreasing_as_insightface_guards_it():
    m = 0.5
    angles = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    target = arcface_target(torch.cos(angles), m)
    inside = angles + m < math.pi - 1e-9
    exact = inside & (torch.sin(angles) ** 2 > MIN_SIN_SQUARED)
    assert torch.allclose(target[exact], torch.cos(angles[exact] + m), atol=1e-9)
    # Within a hair of theta = 0, sin(theta) is held at sqrt(MIN_SIN_SQUARED): off by at most sin(m) times that.
    near_zero = inside & ~exact
    assert near_zero.any() and torch.all((target[near_zero] - torch.cos(angles[near_zero] + m)).abs() <= math.sin(m) * 1e-3 + 1e-9)
    outside = ~inside
    assert torch.allclose(target[outside], torch.cos(angles[outside]) - m * math.sin(math.pi - m), atol=1e-9)
    assert torch.all(target[1:] <= target[:-1] + 1e-9), "the target logit never grows with the angle"


def test_a_margin_of_zero_is_cross_entropy_over_scaled_cosines():
    cos = torch.rand(8, 4) * 2 - 1
    targets = torch.arange(8) % 4
    for kind in ("arcface", "cosface"):
        assert MarginLoss(kind, 16.0, 0.0)(16 * cos, targets).item() == pytest.approx(F.cross_entropy(16 * cos, targets).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_cosines_of_exactly_one_and_bf16_rounding_stay_finite(kind):
    """cos = +-1 (identical or opposite directions) and bf16 values just past 1 give finite losses and gradients."""
    cos = torch.tensor([[1.0, -1.0, 0.3], [-1.0, 1.0, 1.0], [0.99999, -0.99999, 0.0]])
    logits = (64 * cos * 1.003).to(torch.bfloat16).float().requires_grad_()  # a little past +-64, as bf16 rounds
    loss = MarginLoss(kind, 64.0, 0.5)(logits, torch.tensor([0, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_a_centred_head_subtracts_the_running_mean_of_the_embeddings_it_trained_on():
    torch.manual_seed(0)
    head = CosineHead(8, 3, scale=10.0)
    batches = [torch.randn(16, 8) + 5 for _ in range(3)]
    for batch in batches:
        head(batch)  # training mode: the running mean follows the batches
    expected = batches[0].mean(0)
    for batch in batches[1:]:
        expected = expected + 0.05 * (batch.mean(0) - expected)
    assert torch.allclose(head.running_mean, expected, atol=1e-5)
    head.eval()
    probe = torch.randn(4, 8) + 5
    cos = F.normalize(probe - expected, dim=1) @ F.normalize(head.weight, dim=1).T
    assert torch.allclose(head(probe), 10 * cos, atol=1e-5)
    assert {"running_mean", "num_batches_tracked"} <= set(head.state_dict())


def test_the_head_is_a_scaled_cosine_in_float32_even_under_bf16_autocast():
    torch.manual_seed(0)
    head = CosineHead(16, 5, scale=30.0, center=False)
    embeddings = torch.randn(4, 16)
    expected = 30.0 * F.normalize(embeddings, dim=1) @ F.normalize(head.weight, dim=1).T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(embeddings.to(torch.bfloat16))
    assert logits.dtype == torch.float32 and logits.abs().max() <= 30.0 + 1e-4
    assert torch.allclose(logits, expected, atol=0.3)  # the bf16 input rounding only
    assert torch.allclose(head(embeddings), expected, atol=1e-5)


@pytest.mark.parametrize("loss", ["arcface", "cosface"])
def test_bf16_autocast_training_on_the_cpu_is_stable_and_learns(loss):
    torch.manual_seed(0)
    spec = losses().get(loss)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 32), torch.nn.ReLU(), spec.make_head(32, 4))
    loss_fn = spec.make([8, 8, 8, 8], options=["s=32"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = TrainStep(model, loss_fn, optimizer, scaler, device_type="cpu", amp_dtype=torch.bfloat16, batch_size=16)
    images, labels = torch.randn(16, 3, 8, 8), torch.arange(16) % 4
    values = [float(step(images, labels)[0]) for _ in range(30)]
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < 0.5 * values[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["arcface", "cosface"])
def test_margin_losses_keep_the_loss_contract(name):
    check_loss(name)


def test_options_are_typed_checked_and_named():
    spec = losses().get("arcface")
    assert spec.resolve_options(None) == {"s": 64.0, "m": 0.5, "weighted": False, "center": True}
    assert spec.resolve_options(["s=30", "weighted=yes", "center=off"]) == {"s": 30.0, "m": 0.5, "weighted": True, "center": False}
    assert spec.resolve_options({"s": 30, "m": 0.2}) == {"s": 30.0, "m": 0.2, "weighted": False, "center": True}  # as config.json holds them
    for given, message in [
        (["q=1"], "--loss-option q=1: loss 'arcface' has no option 'q'; it takes center \\(default True\\), m \\(default 0.5\\)"),
        (["s=abc"], "--loss-option s=abc: expected a number above 0 and at most 1024"),
        (["s=-1"], "--loss-option s=-1.0: expected a number above 0"),
        (["s=nan"], "--loss-option s=nan: expected a number above 0"),
        (["m=2"], "--loss-option m=2.0: expected a number from 0 up to 1.5"),
        (["weighted=maybe"], "--loss-option weighted=maybe: expected true or false"),
        (["m"], "--loss-option 'm': expected NAME=VALUE"),
        (["m=0.1", "m=0.2"], "--loss-option m is given twice"),
    ]:
        with pytest.raises(UsageError, match=message):
            spec.resolve_options(given)
    with pytest.raises(UsageError, match="loss 'plain' has no option 's'; it takes no --loss-option"):
        losses().get("plain").resolve_options(["s=1"])


def test_weighted_margin_loss_weighs_classes_by_inverse_frequency():
    loss = losses().get("cosface").make([1, 3], options=["weighted=true"])
    assert torch.allclose(loss.weight, torch.tensor([1.5, 0.5]))
    assert losses().get("cosface").make([1, 3]).weight is None


def config(data, out, **overrides) -> TrainConfig:
    settings = dict(
        data=data, out=out, arch="baseline", loss="arcface", loss_options=["s=16", "m=0.2"], input_size=48, epochs=3,
        batch_size=8, lr=1e-3, rotate=0.0, loader="torch", workers=0, test_size=0.25, val_size=0.25, seed=3, threads=1,
    )  # fmt: skip
    return TrainConfig(**(settings | overrides))


@pytest.mark.slow
def test_arcface_trains_a_run_whose_head_is_the_model_classifier(synthetic_dataset, facekit_run, tmp_path):
    run = Run(Trainer(config(synthetic_dataset, tmp_path / "run", epochs=4)).train())
    assert run.config["loss_options"] == {"s": 16.0, "m": 0.2, "weighted": False, "center": True}
    history = run.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    weights = load_checkpoint(run.checkpoint_path("best"))["model"]
    assert weights["classifier.3.weight"].shape == (4, 300) and "classifier.3.bias" not in weights, "the head trained in the classifier's place"
    model = run.load_model()
    assert isinstance(model.classifier[3], CosineHead) and logit_scale(model, architectures().get("baseline")) == 16.0
    assert logit_scale(Run(facekit_run).load_model(), architectures().get("baseline")) is None, "a plain linear classifier"
    with torch.no_grad():
        logits = model(torch.randn(3, 3, 48, 48))
    assert logits.abs().max() <= 16.0 + 1e-4, "inference logits are s * cos"
    predictions = run.predictions()
    assert np.allclose(predictions["probs"].sum(1), 1, atol=1e-4)


@pytest.mark.slow
def test_a_margin_run_resumes_bit_identically(synthetic_dataset, tmp_path):
    straight = Run(Trainer(config(synthetic_dataset, tmp_path / "straight")).train())
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "broken"), InterruptAt(3)).train()
    resumed = Run(Trainer.resume(tmp_path / "broken"))
    assert [row["train_loss"] for row in straight.history] == [row["train_loss"] for row in resumed.history]
    a = load_checkpoint(straight.checkpoint_path("best"))["model"]
    b = load_checkpoint(resumed.checkpoint_path("best"))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_refuses_other_loss_options_by_name(synthetic_dataset, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "run", epochs=2), InterruptAt(2)).train()
    with pytest.raises(UsageError, match=r"--loss-option m=0.4 \(it has m=0.2\) cannot change"):
        Trainer.resume(tmp_path / "run", loss_options=["m=0.4"])
    # The same value, however written, continues the run.
    assert Trainer.resume(tmp_path / "run", loss_options=["m=0.20"]) == tmp_path / "run"


def test_a_loss_with_a_head_needs_an_architecture_that_names_its_classifier(facekit_plugin, synthetic_dataset, tmp_path):
    facekit_plugin(
        """
from torch import nn
from facekit.api import ArchitectureSpec, hookimpl

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("nameless", lambda o: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, o.num_classes)), input_size=48))
""",
        package="facekit-nameless",
    )
    with pytest.raises(UsageError, match="--loss arcface brings its own head .* architecture 'nameless' does not name one"):
        Trainer(config(synthetic_dataset, tmp_path / "run", arch="nameless")).train()
    assert not (tmp_path / "run").exists()

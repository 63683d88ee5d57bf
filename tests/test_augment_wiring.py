"""Augmentation pipelines, label smoothing and LR schedules wired into the engine, the runs and the CLI."""

from pathlib import Path

import math
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facekit.api import Normalization
from facekit.cli import app
from facekit.data.augment import AugmentPipeline, augment_args
from facekit.data.index import index_dataset
from facekit.data.loaders import available_backends, make_loader
from facekit.data.loaders._common import RotateNormalize, decode_resized
from facekit.data.synth import make_synthetic_dataset
from facekit.engine import Trainer, TrainConfig
from facekit.errors import UsageError
from facekit.plugins import augmentations
from facekit.runs import Run, load_checkpoint
import _testutil
from _testutil import INVERT_PLUGIN, InterruptAt, fast


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    """The quick run, with the default augmentation (no --rotate 0) unless told."""
    return _testutil.config(data, out, **({"rotate": None} | overrides))


# ------------------------------------------------------------------ which steps a run uses
def test_augment_args_default_shorthand_and_refusal():
    assert augment_args(None, None) == ["rotate:15"]
    assert augment_args(None, 15.0) == ["rotate:15"]
    assert augment_args(None, 0) == ["rotate:0"]
    assert float(augment_args(None, 12.3456789)[0].split(":")[1]) == 12.3456789  # exact, so the angles are
    assert augment_args(["flip", "crop:0.8"], None) == ["flip", "crop:0.8"]
    with pytest.raises(UsageError, match=r"^--rotate 10 and --augment: give one; --rotate DEG is short for --augment rotate:DEG$"):
        augment_args(["flip"], 10.0)


def test_a_run_saved_before_augment_existed_resumes_with_its_rotation(tmp_path):
    old = TrainConfig.from_dict({"data": str(tmp_path), "rotate": 7.5, "arch": "baseline"})
    trainer = Trainer(old)
    assert trainer.config.augment == ["rotate:7.5"] and trainer.config.rotate is None
    assert trainer.config.label_smoothing == 0.0 and trainer.config.schedule == "constant"
    assert [(step.spec.name, step.params) for step in trainer.augment.steps] == [("rotate", 7.5)]


def test_the_config_records_steps_in_running_order(tmp_path):
    trainer = Trainer(config(tmp_path, tmp_path / "run", augment=["color:0.2", "rotate:10", "flip"]))
    assert trainer.config.augment == ["rotate:10", "flip", "color:0.2"]  # geometric steps first


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(augment=["bogus:1"]), r"^--augment 'bogus' is not known; choose one of: .*rotate"),
        (dict(augment=["rotate:-3"]), r"^--augment rotate:-3: "),
        (dict(schedule="cosin"), r"^--schedule 'cosin' is not known; choose one of: constant, cosine, onecycle\. Did you mean 'cosine'\?$"),
        (dict(label_smoothing=1.0), r"^--label-smoothing 1\.0: expected a number from 0 up to \(not including\) 1$"),
        (dict(rotate=200.0), r"^--rotate must be between 0 and 180 degrees"),
    ],
)
def test_bad_options_fail_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        Trainer(config(tmp_path, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_label_smoothing_on_a_loss_without_support_fails_first(facekit_plugin, tmp_path):
    facekit_plugin(
        "from facekit import hookimpl\nfrom facekit.api import LossSpec\n"
        "@hookimpl\ndef register_losses(register):\n"
        "    register(LossSpec('sharp', lambda counts: None, 'No smoothing.'))\n",
        package="facekit-sharp",
    )
    with pytest.raises(UsageError, match=r"^--loss sharp does not support --label-smoothing"):
        Trainer(config(tmp_path, tmp_path / "run", loss="sharp", label_smoothing=0.1))


# ------------------------------------------------------------------ runs: config and resume


def _last_lrs(run_dir: Path) -> list[float]:
    return [g["lr"] for g in load_checkpoint(run_dir / "checkpoints" / "fold-0-last.pt")["optimizer"]["param_groups"]]


@pytest.mark.slow
def test_config_records_the_options_and_a_resumed_augmented_cosine_run_matches_an_uninterrupted_one(synthetic_dataset, tmp_path):
    options = dict(epochs=3, augment=["color:0.3", "rotate:10", "flip", "crop:0.8"], label_smoothing=0.1, schedule="cosine")
    straight = Run(Trainer(config(synthetic_dataset, tmp_path / "straight", **options)).train())
    assert {k: straight.config[k] for k in ("augment", "rotate", "label_smoothing", "schedule")} == {
        "augment": ["rotate:10", "flip", "crop:0.8", "color:0.3"], "rotate": None, "label_smoothing": 0.1, "schedule": "cosine",
    }  # fmt: skip
    last = load_checkpoint(tmp_path / "straight" / "checkpoints" / "fold-0-last.pt")
    steps = last["schedule"]["total_steps"]
    assert last["schedule"]["name"] == "cosine" and steps == 3 * math.ceil(len(straight.split["folds"][0]["train"]) / 8)
    # After the last planned batch the rate is the cosine's last step: lr (1 + cos(pi (T-1)/T)) / 2.
    assert _last_lrs(tmp_path / "straight") == [pytest.approx(1e-3 * (1 + np.cos(np.pi * (steps - 1) / steps)) / 2)]

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "broken", **options), InterruptAt(3)).train()
    middle = load_checkpoint(tmp_path / "broken" / "checkpoints" / "fold-0-last.pt")
    assert middle["schedule"]["scheduler"]["last_epoch"] == 2 * steps // 3  # two epochs of batches
    resumed = Run(Trainer.resume(tmp_path / "broken"))
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert _last_lrs(tmp_path / "broken") == _last_lrs(tmp_path / "straight")
    assert np.array_equal(straight.predictions()["y_pred"], resumed.predictions()["y_pred"])


@pytest.mark.parametrize(
    "given, refused",
    [({"schedule": "cosine"}, "--schedule cosine (it has onecycle)"),
     ({"label_smoothing": 0.1}, "--label-smoothing 0.1 (it has 0.0)"),
     ({"augment": ["rotate:5", "flip"]}, "--augment rotate:5 --augment flip (it has rotate:10)"),
     ({"rotate": 5.0}, "--augment rotate:5 (it has rotate:10)")],
)  # fmt: skip
def test_resuming_with_another_schedule_augmentation_or_smoothing_is_refused(given, refused, synthetic_dataset, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "run", epochs=2, schedule="onecycle", rotate=10.0), InterruptAt(2)).train()
    with pytest.raises(UsageError, match=rf"so {re.escape(refused)} cannot change"):
        Trainer.resume(tmp_path / "run", **given)
    # The same settings given again are no change: --rotate 10 is --augment rotate:10.
    resumed = Run(Trainer.resume(tmp_path / "run", schedule="onecycle", rotate=10.0, label_smoothing=0.0))
    assert [row["epoch"] for row in resumed.history] == [1, 2]


def test_label_smoothing_reaches_the_training_loss_only(synthetic_dataset, tmp_path, monkeypatch):
    import torch.nn.functional as F

    used = {}
    real_train_epoch, real_evaluate = Trainer.train_epoch, Trainer.evaluate

    def spy_train(self, model, loader, loss_fn, *rest):
        used["train"] = loss_fn
        return real_train_epoch(self, model, loader, loss_fn, *rest)

    def spy_evaluate(self, model, loader, loss_fn):
        used["val"] = loss_fn
        return real_evaluate(self, model, loader, loss_fn)

    monkeypatch.setattr(Trainer, "train_epoch", spy_train)
    monkeypatch.setattr(Trainer, "evaluate", spy_evaluate)
    Trainer(config(synthetic_dataset, tmp_path / "run", epochs=1, rotate=0.0, label_smoothing=0.2)).train()
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert float(used["train"](logits, targets)) == pytest.approx(float(F.cross_entropy(logits, targets, label_smoothing=0.2)))
    assert float(used["val"](logits, targets)) == pytest.approx(float(F.cross_entropy(logits, targets)))
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "fold-0-last.pt")
    assert first["schedule"]["name"] == "constant" and first["schedule"]["scheduler"] is None


# ------------------------------------------------------------------ the CLI
runner = CliRunner()
FAST = fast(rotate=None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--augment", "bogus:1"], "--augment 'bogus' is not known; choose one of:"),
        (["--rotate", "10", "--augment", "flip"], "--rotate 10 and --augment: give one"),
        (["--schedule", "linear"], "--schedule 'linear' is not known; choose one of: constant, cosine, onecycle"),
        (["--label-smoothing", "-0.1"], "--label-smoothing -0.1: expected a number from 0"),
    ],
)
def test_cli_refuses_bad_augment_schedule_and_smoothing_in_one_line(synthetic_dataset, tmp_path, args, message):
    result = runner.invoke(app, ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), *FAST, *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_cli_records_the_options(synthetic_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(synthetic_dataset), "--out", str(out), "--json", *FAST]
    result = runner.invoke(app, [*args, "--rotate", "5", "--label-smoothing", "0.05", "--schedule", "onecycle"])
    assert result.exit_code == 0, result.output
    config = Run(out).config
    assert (config["augment"], config["label_smoothing"], config["schedule"]) == (["rotate:5"], 0.05, "onecycle")


# ------------------------------------------------------------------ the loaders
# Parity tolerance, torch backend vs DALI's CPU graph on the same files: decoding and resizing
# differ by up to MEAN 0.5 / MAX 16 grey levels (tests/test_loaders.py), the augmentation
# steps by up to 0.5 / 4 on identical inputs (tests/test_augment.py). The steps can stretch a
# resize difference but color scales it by at most 1.4 x 1.4 (about 2), so we allow
# 2 x 0.5 + 0.5 on average and 2 x 16 + 4 at any pixel.
AUGMENT_MEAN_TOLERANCE, AUGMENT_MAX_TOLERANCE = 1.5, 36.0
PIXELS = Normalization((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # output in grey levels
MULTI_STEP = ["rotate:15", "flip", "crop:0.5", "color:0.4", "erase:0.7"]
needs_dali = pytest.mark.skipif("dali" not in available_backends(), reason="NVIDIA DALI is not installed or does not work here")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", identities=3, per_identity=6, size=48, fmt="jpg")
    index = index_dataset(root, cache=False)
    return index.paths(), np.arange(len(index.paths()))  # the label is the file's position: shows the order


def _pipeline(*args: str) -> AugmentPipeline:
    return AugmentPipeline.from_args(list(args), augmentations())


def _loader(files, labels, backend, **options):
    settings = dict(batch_size=5, input_size=32, normalization=PIXELS, train=True, seed=6, backend=backend, num_workers=0)
    return make_loader(files, labels, **(settings | options))


def _epoch(loader):
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def _decoded(files, positions) -> torch.Tensor:
    return torch.stack([decode_resized(files[p], 32) for p in positions.tolist()])


def test_the_default_rotation_is_bit_identical_to_the_pre_plugin_loaders(faces):
    files, labels = faces
    loader = _loader(files, labels, "torch")  # no rotate, no augment: rotate:15
    for epoch in (0, 1):
        images, positions = _epoch(loader)
        # The plan before augmentations were plugins: permutation, then one uniform angle per file.
        rng = np.random.default_rng([6, epoch])
        order = rng.permutation(len(files))
        angles = rng.uniform(-15, 15, len(files)).astype(np.float32)
        assert positions.tolist() == order.tolist()
        expected = RotateNormalize(PIXELS, torch.device("cpu"))(_decoded(files, positions), angles)
        assert torch.equal(images, expected)


def test_torch_backend_runs_the_pipeline_on_the_plans_draws_with_and_without_cache(faces):
    files, labels = faces
    pipeline = _pipeline(*MULTI_STEP)
    plain = _loader(files, labels, "torch", augment=pipeline)
    cached = _loader(files, labels, "torch", augment=pipeline, cache=True)
    for epoch in (0, 1):  # the cached loader fills its cache, then reads it
        images, positions = _epoch(plain)
        plan = plain.plan(epoch)
        assert positions.tolist() == plan.indices.tolist()
        expected = pipeline.apply(_decoded(files, positions), plan.samples, PIXELS)
        assert torch.equal(images, expected)
        from_cache, cached_positions = _epoch(cached)
        assert torch.equal(cached_positions, positions) and torch.equal(from_cache, images)


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_evaluation_loaders_never_augment(faces, backend):
    files, labels = faces
    loader = _loader(files, labels, backend, train=False, augment=_pipeline(*MULTI_STEP))
    assert loader.options.augment == AugmentPipeline()
    images, positions = _epoch(loader)
    assert positions.tolist() == list(range(len(files)))
    plain = _decoded(files, positions).float()
    tolerance = 0 if backend == "torch" else 16.0  # DALI resizes with its own filter
    assert (images - plain).abs().max() <= tolerance


def test_rotate_and_augment_together_are_refused(faces):
    files, labels = faces
    with pytest.raises(UsageError, match=r"^--rotate 10 and --augment: give one"):
        _loader(files, labels, "torch", rotate=10.0, augment=_pipeline("flip"))


@needs_dali
def test_dali_cpu_graph_and_torch_give_the_same_augmented_batches(faces):
    files, labels = faces
    pipeline = _pipeline(*MULTI_STEP)
    dali, torch_ = _loader(files, labels, "dali", augment=pipeline), _loader(files, labels, "torch", augment=pipeline)
    for epoch in (0, 1):
        (a, a_positions), (b, b_positions) = _epoch(dali), _epoch(torch_)
        assert dali._in_graph, "the DALI graph augments (not torch after DALI)"
        assert torch.equal(a_positions, b_positions)
        diff = (a - b).abs()
        assert diff.mean() <= AUGMENT_MEAN_TOLERANCE and diff.max() <= AUGMENT_MAX_TOLERANCE, (epoch, diff.mean(), diff.max())
        plain = _decoded(files, b_positions).float()
        assert (b - plain).abs().mean() > 10 * AUGMENT_MEAN_TOLERANCE  # the batches are augmented at all


@needs_dali
def test_a_step_without_dali_version_runs_in_torch_after_dali(faces, facekit_plugin):
    plugin_set = facekit_plugin(INVERT_PLUGIN, package="facekit-invert")
    files, labels = faces
    pipeline = AugmentPipeline.from_args(["invert:1"], plugin_set.registries["augmentations"])
    dali = _loader(files, labels, "dali", augment=pipeline)
    images, positions = _epoch(dali)
    assert not dali._in_graph
    plain = _epoch(_loader(files, labels, "dali", rotate=0.0))[0]  # same order: the draws do not move it
    assert torch.equal(images, 255 - plain)




@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_dali
def test_on_the_gpu_dalis_graph_and_torchs_steps_agree_and_stay_on_the_device(faces):
    files, labels = faces
    pipeline, cuda = _pipeline(*MULTI_STEP), torch.device("cuda")
    dali = _loader(files, labels, "dali", augment=pipeline, device=cuda)
    torch_ = _loader(files, labels, "torch", augment=pipeline, device=cuda)
    cached = _loader(files, labels, "torch", augment=pipeline, device=cuda, cache=True)
    for _ in range(2):
        (a, a_positions), (b, b_positions), (c, _) = _epoch(dali), _epoch(torch_), _epoch(cached)
        assert a.is_cuda and b.is_cuda and dali._in_graph
        assert torch.equal(a_positions.cpu(), b_positions.cpu())
        # nvJPEG and the GPU resize add up to about a grey level on average (tests/test_gpu.py)
        # to the CPU parity figure above.
        assert (a - b).abs().mean().item() <= AUGMENT_MEAN_TOLERANCE + 1.0
        assert (b - c).abs().max().item() < 1e-3  # the cache holds the same images

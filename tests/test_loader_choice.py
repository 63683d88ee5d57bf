"""--loader auto: the backend measured faster per device type and use (facekit.data.loaders.choice),
what the loaders actually use, and the line `facekit train` prints about it. Nothing here is timed:
the figures behind the rule come from `python -m benchmarks.backends` (docs/benchmarks.md)."""

import pytest
import torch
from typer.testing import CliRunner

from facekit.api import Normalization
from facekit.cli import app
from facekit.data.index import index_dataset
from facekit.data.loaders import available_backends, describe_loaders, make_loader
from facekit.data.loaders.choice import AUTO_BACKEND, auto_backend, describe_backends, resolve_backend

HAS_DALI = "dali" in available_backends()
NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_on_a_cpu_auto_trains_with_torch_and_evaluates_with_dali():
    assert auto_backend("cpu", train=True, dali_works=True) == "torch"
    assert auto_backend("cpu", train=False, dali_works=True) == "dali"


def test_on_cuda_auto_uses_dali_for_both():
    assert auto_backend("cuda", train=True, dali_works=True) == "dali"
    assert auto_backend("cuda", train=False, dali_works=True) == "dali"


def test_without_dali_or_on_other_devices_auto_is_torch():
    for device, train in AUTO_BACKEND:
        assert auto_backend(device, train=train == "training", dali_works=False) == "torch"
    assert auto_backend("mps", train=True, dali_works=True) == "torch"


def test_an_explicit_loader_is_kept_for_both_uses():
    for backend in ("dali", "torch"):
        assert resolve_backend(backend.upper(), "cpu", train=True, dali_works=True) == backend
        assert resolve_backend(backend, "cpu", train=False, dali_works=True) == backend


def test_the_line_names_both_uses_and_why():
    assert describe_backends("auto", "cpu", dali_works=True) == (
        "loader: torch for training, dali for evaluation (--loader auto: the faster measured on cpu)"
    )
    assert describe_backends("torch", "cpu", dali_works=True) == "loader: torch for training and evaluation (--loader torch)"
    assert "DALI does not work here" in describe_backends("auto", "cpu", dali_works=False)


@pytest.mark.parametrize("train", [True, False])
def test_make_loader_uses_the_rules_choice(synthetic_dataset, train):
    index = index_dataset(synthetic_dataset)
    loader = make_loader(index.paths()[:4], index.labels[:4], batch_size=2, input_size=48, normalization=NORM,
                         train=train, rotate=0, backend="auto", num_workers=0)  # fmt: skip
    try:
        expected = auto_backend("cpu", train=train, dali_works=HAS_DALI)
        assert loader.backend == expected
        assert torch.cat([x for x, _ in loader]).shape == (4, 3, 48, 48)
    finally:
        loader.close()


def test_facekit_train_says_which_loader_trains_and_which_evaluates(synthetic_dataset, tmp_path):
    result = CliRunner().invoke(app, [
        "train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), "--input-size", "48", "--epochs", "1",
        "--batch-size", "8", "--rotate", "0", "--threads", "1", "--workers", "0",
    ], env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    line = describe_loaders("auto", "cpu")
    assert line in result.output
    assert result.output.count("loader: ") == 1, "one line, not one per fold or epoch"
    training = auto_backend("cpu", train=True, dali_works=HAS_DALI)
    assert f"loader: {training} for training" in line

"""Kernel maps of any nn.Module, and `facekit kernels` on a run folder with a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from facekit.cli import report_cmd
from facekit.errors import FacekitError, UsageError
from facekit.kernels import (
    capped_kernels,
    conv_layers,
    describe_layer,
    plot_kernels,
    plot_rgb_kernels,
    write_kernel_maps,
)
from facekit.runs import Run, save_checkpoint, write_json

PNG = b"\x89PNG\r\n\x1a\n"


class TinyNet(nn.Module):
    """Three conv layers, one inside a nested block, and a wide one to exercise the cap."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3)
        self.block = nn.Sequential(nn.Conv2d(6, 4, 5, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.wide = nn.Conv2d(4, 80, 1, groups=2)
        self.head = nn.Linear(80, 2)

    def forward(self, x):
        return self.head(self.wide(self.block(self.stem(x))).mean((2, 3)))


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def test_conv_layers_in_module_order(model):
    layers = conv_layers(model)
    assert [(index, name) for index, name, _ in layers] == [(1, "stem"), (2, "block.0"), (3, "wide")]
    assert layers[2][2].out_channels == 80


def test_out_of_range_layer_names_the_range(model, tmp_path):
    for layer in (0, 4):
        with pytest.raises(UsageError, match=rf"--layer {layer} is out of range: this model has conv layers 1\.\.3 \(see `facekit kernels --list`\)"):
            plot_kernels(model, layer, tmp_path / "k.png")
    with pytest.raises(UsageError, match="has no Conv2d layers"):
        plot_kernels(nn.Linear(2, 2), 1, tmp_path / "k.png")


@pytest.mark.slow
def test_first_layer_writes_weight_grid_and_rgb(model, tmp_path):
    written = write_kernel_maps(model, 1, tmp_path)
    assert [p.name for p in written] == ["kernels-layer-1.png", "kernels-layer-1-rgb.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)


def test_deeper_layer_writes_one_grid(model, tmp_path):
    written = write_kernel_maps(model, 2, tmp_path)
    assert [p.name for p in written] == ["kernels-layer-2.png"]
    with pytest.raises(UsageError, match="RGB kernels need 3"):
        plot_rgb_kernels(model, 2, tmp_path / "rgb.png")


@pytest.mark.slow
def test_wide_grouped_layer_is_capped(model, tmp_path):
    weights = model.wide.weight.detach().numpy()  # 80 outputs x 2 inputs per group
    shown = capped_kernels(weights)
    assert shown.shape == (64, 2, 1, 1)
    np.testing.assert_array_equal(shown, weights[:64])
    assert describe_layer("wide", 3, model.wide, weights, shown.shape[:2]) == (
        "Conv layer 3 'wide': 4->80, kernel 1x1, groups 2\nshowing the first 64 of 80 outputs"
    )
    # 64 outputs leave room for 1024 // 64 = 16 inputs of a wider layer.
    assert capped_kernels(np.zeros((100, 40, 3, 3))).shape == (64, 16, 3, 3)
    assert capped_kernels(np.zeros((8, 200, 3, 3))).shape == (8, 128, 3, 3)
    path = plot_kernels(model, 3, tmp_path / "wide.png", title="custom title")
    assert path.read_bytes()[:8] == PNG


def test_constant_weights_do_not_break_scaling(model, tmp_path):
    with torch.no_grad():
        model.stem.weight.zero_()
    assert all(p.is_file() for p in write_kernel_maps(model, 1, tmp_path))


# CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def run_folder(tmp_path, model, monkeypatch) -> Path:
    """A run folder with a checkpoint of TinyNet; Run.load_model is pointed at TinyNet, since the
    architecture registry only knows the registered architectures."""
    path = tmp_path / "runs" / "tiny"
    write_json(path / "config.json", {"arch": "tiny", "input_size": 16})
    write_json(path / "classes.json", ["a", "b"])
    save_checkpoint(path / "checkpoints" / "best.pt", {"model": model.state_dict()})

    def load_model(self, which="best"):
        rebuilt = TinyNet()
        rebuilt.load_state_dict(torch.load(self.checkpoint_path(which), weights_only=True)["model"])
        return rebuilt

    monkeypatch.setattr(Run, "load_model", load_model)
    return path


def kernels_cli(args: list[str]) -> tuple[int, str]:
    app = typer.Typer()
    app.command("report")(report_cmd.report)
    app.command("kernels")(report_cmd.kernels)
    result = CliRunner().invoke(app, args)
    if isinstance(result.exception, FacekitError):
        return result.exception.exit_code, f"Error: {result.exception}"
    return result.exit_code, result.output


def test_cli_list(run_folder):
    code, output = kernels_cli(["kernels", str(run_folder), "--list"])
    assert code == 0, output
    for text in ("stem", "block.0", "wide", "5x5"):
        assert text in output


def test_cli_writes_pngs_to_out(run_folder, tmp_path):
    code, output = kernels_cli(["kernels", "--runs-dir", str(run_folder.parent), "--layer", "1", "--out", str(tmp_path / "k")])
    assert code == 0, output
    assert (tmp_path / "k" / "kernels-layer-1.png").is_file()
    assert (tmp_path / "k" / "kernels-layer-1-rgb.png").is_file()
    assert "kernels-layer-1-rgb.png" in output.replace("\n", "")


def test_cli_out_of_range_exits_2(run_folder):
    code, output = kernels_cli(["kernels", str(run_folder), "--layer", "9"])
    assert code == 2
    assert "conv layers 1..3" in output

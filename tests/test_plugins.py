"""Plugin loading from entry points: built-ins, third parties, broken ones, duplicates, filters."""

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facekit.cli import app
from facekit.errors import FacekitError, UsageError
from facekit.plugins import PluginSet, PluginWarning, architectures, get_plugins, reporters

ROOT = Path(__file__).resolve().parents[1]

THROWAWAY = """
from facekit import hookimpl
from facekit.api import ArchitectureSpec, LossSpec

def build(options):
    from torch import nn
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, options.num_classes))

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("throwaway-net", build, "A test network."))

@hookimpl
def register_losses(register):
    import torch.nn as nn
    register(LossSpec("throwaway-loss", lambda counts: nn.CrossEntropyLoss(), "A test loss."))
"""


def test_builtins_load_through_the_entry_point_group():
    declared = {ep.name for ep in entry_points(group="facekit") if ep.dist and ep.dist.name == "facekit"}
    assert {"architectures", "losses", "splits", "reporters"} <= declared
    loaded = {p.name for p in get_plugins().plugins if p.builtin}
    assert declared <= loaded
    assert {"baseline", "tronnet", "resnet18"} <= set(architectures().names())
    assert {"table", "plots"} <= set(reporters().names())


def test_third_party_plugin_registers_several_things(facekit_plugin):
    plugin_set = facekit_plugin(THROWAWAY, package="facekit-throwaway")
    assert "throwaway-net" in plugin_set.registries["architectures"]
    assert plugin_set.registries["architectures"].owner["throwaway-net"] == "facekit-throwaway"
    info = next(p for p in plugin_set.plugins if p.package == "facekit-throwaway")
    assert info.registers == {"architectures": ["throwaway-net"], "losses": ["throwaway-loss"]}
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["package"] for r in rows if not r["builtin"]].count("facekit-throwaway") == 1
    assert all(not r["builtin"] for r in rows), "built-ins are hidden without --all"


def test_broken_plugin_warns_with_package_and_reason_and_cli_still_works(facekit_plugin):
    with pytest.warns(PluginWarning, match=r"facekit-broken failed to load: RuntimeError: boom"):
        plugin_set = facekit_plugin("raise RuntimeError('boom')\n", package="facekit-broken")
    assert "baseline" in plugin_set.registries["architectures"]
    result = CliRunner().invoke(app, ["plugins", "--all", "--json"])
    assert result.exit_code == 0
    assert "facekit-broken" not in {r["package"] for r in json.loads(result.output)}


def test_broken_plugin_is_an_error_when_strict(facekit_plugin, monkeypatch):
    with pytest.raises(FacekitError, match="facekit-broken failed to load"):
        facekit_plugin("raise RuntimeError('boom')\n", package="facekit-broken", strict=True)
    monkeypatch.setenv("FACEKIT_STRICT_PLUGINS", "1")
    with pytest.raises(FacekitError, match="strict"):
        PluginSet()


def test_duplicate_name_keeps_the_first_and_warns(facekit_plugin):
    duplicate = THROWAWAY.replace('"throwaway-net"', '"baseline"')
    with pytest.warns(PluginWarning, match=r"facekit-dupe registers architecture 'baseline', already registered by package facekit;"):
        plugin_set = facekit_plugin(duplicate, package="facekit-dupe")
    assert plugin_set.registries["architectures"].owner["baseline"] == "facekit"
    assert "throwaway-loss" in plugin_set.registries["losses"]


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(UsageError) as error:
        architectures().get("tronet")
    message = str(error.value)
    assert message.startswith("--arch 'tronet' is not known; choose one of: ")
    assert all(name in message for name in architectures().names())
    assert "Did you mean 'tronnet'?" in message


@pytest.mark.parametrize("option, value", [("--arch", "resnet-18"), ("--loss", "weigthed"), ("--split", "k-fold")])
def test_unknown_name_on_the_command_line_exits_2(tmp_path, option, value):
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), option, value])
    assert result.exit_code == 2, result.output
    assert "Did you mean" in result.output
    assert "Traceback" not in result.output


def test_load_plugins_env_selects_third_party_packages(facekit_plugin, monkeypatch):
    monkeypatch.setenv("FACEKIT_LOAD_PLUGINS", "")
    plugin_set = facekit_plugin(THROWAWAY, package="facekit-throwaway")
    assert "throwaway-net" not in plugin_set.registries["architectures"]
    assert "baseline" in plugin_set.registries["architectures"], "built-ins always load"
    monkeypatch.setenv("FACEKIT_LOAD_PLUGINS", "facekit-other, facekit-throwaway")
    assert "throwaway-net" in PluginSet().registries["architectures"]


def test_register_commands_hook_adds_a_cli_command(facekit_plugin):
    import typer

    plugin_set = facekit_plugin(
        """
from facekit import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    def hello(name: str = "faces"):
        "Say hello."
        print(f"hello {name}")
""",
        package="facekit-hello",
    )
    cli = typer.Typer()
    cli.command()(lambda: None)
    plugin_set.add_commands(cli)
    result = CliRunner().invoke(cli, ["hello", "--name", "world"])
    assert result.exit_code == 0 and "hello world" in result.output


def test_example_plugin_installs_with_pip_and_is_found(tmp_path, synthetic_dataset):
    """The real path: pip installs plugins/facekit-example; facekit sees it by entry point alone."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(ROOT / "plugins" / "facekit-example")],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "facekit", "plugins", "--all", "--json"], check=True, capture_output=True, text=True, env=env
    ).stdout
    rows = {row["package"]: row for row in json.loads(out)}
    assert rows["facekit-example"]["registers"] == {"architectures": ["tinycnn"], "reporters": ["oneline"]}
    assert rows["facekit"]["builtin"]
    facekit = [sys.executable, "-m", "facekit"]
    run = tmp_path / "run"
    train = [*facekit, "train", "--data", str(synthetic_dataset), "--arch", "tinycnn", "--out", str(run),
             "--epochs", "1", "--input-size", "32", "--loader", "torch", "--workers", "0", "--quiet"]  # fmt: skip
    subprocess.run(train, check=True, capture_output=True, env=env)
    assert json.loads((run / "config.json").read_text())["arch"] == "tinycnn"
    report = subprocess.run([*facekit, "report", str(run), "--reporter", "oneline"], check=True, capture_output=True, text=True, env=env)
    assert "balanced accuracy" in report.stdout

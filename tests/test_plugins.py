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
from facekit.testing import check_architecture, check_loss, check_reporter, check_split

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


@pytest.mark.slow
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


# facekit.testing's contract checks: every built-in keeps its contract, and each check can fail.
def _builtin(kind: str) -> list[str]:
    registry = get_plugins().registries[kind]
    return [name for name in registry.names() if registry.owner[name] == "facekit"]


@pytest.mark.slow
@pytest.mark.parametrize("name", _builtin("architectures"))
def test_builtin_architecture_keeps_the_contract(name):
    check_architecture(name)


@pytest.mark.parametrize("name", _builtin("losses"))
def test_builtin_loss_keeps_the_contract(name):
    check_loss(name)


@pytest.mark.parametrize("name", _builtin("splits"))
def test_builtin_split_keeps_the_contract(name):
    check_split(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", _builtin("reporters"))
def test_builtin_reporter_keeps_the_contract(name, facekit_run, tmp_path):
    check_reporter(name, facekit_run, tmp_path / "report")


BROKEN = """
import numpy as np
import torch
from torch import nn
from facekit.api import ArchitectureSpec, Fold, LossSpec, ReporterSpec, SplitPlan, SplitSpec, hookimpl

class Shifty(nn.Module):
    # Moves a frozen parameter in forward: a buffer kept in the wrong place.
    def __init__(self, num_classes):
        super().__init__()
        self.frozen = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))

    def forward(self, x):
        self.frozen.data += 1
        return self.head(x)

class Ignores(nn.Module):
    # Its trainable parameter never reaches the logits.
    def __init__(self, num_classes):
        super().__init__()
        self.unused = nn.Linear(3, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None].repeat(1, self.num_classes)

class Flat(Ignores):
    # Uses its parameter, but the logits never change.
    def forward(self, x):
        return self.unused(x.mean(dim=(2, 3))) * 0

class Tail(nn.Module):
    # Its classifier is not the last step: the logits are scaled after it.
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        return 2 * self.fc(x.mean(dim=(2, 3)))

def pooled(o):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, o.num_classes))

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("anonymous", pooled, input_size=16))
    register(ArchitectureSpec("misnamed", pooled, input_size=16, classifier="fc"))
    register(ArchitectureSpec("unflat", lambda o: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.Flatten(), nn.Linear(3, o.num_classes))), input_size=16, classifier="1"))
    register(ArchitectureSpec("midway", pooled, input_size=16, classifier="1"))
    register(ArchitectureSpec("tail", lambda o: Tail(o.num_classes), input_size=16, classifier="fc"))
    register(ArchitectureSpec("flat", lambda o: Flat(o.num_classes), input_size=16))
    register(ArchitectureSpec("wrong-shape", lambda o: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, o.num_classes + 1)), input_size=16))
    register(ArchitectureSpec("shifty", lambda o: Shifty(o.num_classes), input_size=16))
    register(ArchitectureSpec("ignores", lambda o: Ignores(o.num_classes), input_size=16))

class Backwards(nn.Module):
    def forward(self, logits, targets):
        return -nn.functional.cross_entropy(logits, targets)

@hookimpl
def register_losses(register):
    register(LossSpec("backwards", lambda counts: Backwards()))
    register(LossSpec("per-image", lambda counts: nn.CrossEntropyLoss(reduction="none")))

def overlapping(labels, options):
    everything = np.arange(len(labels))
    return SplitPlan(test=everything[:10], folds=[Fold(train=everything[5:], val=everything[:0])])

def forgetful(labels, options):
    everything = np.arange(len(labels))
    return SplitPlan(test=everything[:10], folds=[Fold(train=everything[20:], val=everything[10:15])])

def moody(labels, options):
    test = np.random.default_rng().permutation(len(labels))
    return SplitPlan(test=np.sort(test[:10]), folds=[Fold(train=np.sort(test[10:]), val=test[:0])])

@hookimpl
def register_splits(register):
    register(SplitSpec("overlapping", overlapping))
    register(SplitSpec("forgetful", forgetful))
    register(SplitSpec("moody", moody))

def quiet(context):
    pass

def secretive(context):
    context.out_dir.mkdir(parents=True, exist_ok=True)
    (context.out_dir / "hidden.txt").write_text("not listed")
    context.console.print("done")

def hollow(context):
    context.out_dir.mkdir(parents=True, exist_ok=True)
    (context.out_dir / "empty.txt").write_text("")
    context.written.append(context.out_dir / "empty.txt")

@hookimpl
def register_reporters(register):
    register(ReporterSpec("quiet", quiet))
    register(ReporterSpec("secretive", secretive))
    register(ReporterSpec("hollow", hollow))
"""


@pytest.mark.parametrize(
    "check, name, message",
    [
        (check_architecture, "wrong-shape", r"logits of shape \(4, 4\) for 4 images of 16x16, expected \(4, 3\)"),
        (check_architecture, "shifty", "frozen parameters changed in training: frozen"),
        (check_architecture, "ignores", "the logits do not depend on any trainable parameter"),
        (check_architecture, "flat", r"5 Adam steps \(lr 1e-3\) on one batch did not lower the loss"),
        (check_architecture, "nonesuch", "no architecture 'nonesuch' is registered"),
        (check_architecture, "anonymous", "ArchitectureSpec.classifier must name the final classifier submodule"),
        (check_architecture, "misnamed", "classifier 'fc' is not a submodule; it has: 0, 1, 2"),
        (check_architecture, "unflat", r"the input of classifier '1' has shape \(4, 3, 1, 1\), not \(4, D\)"),
        (check_architecture, "tail", "classifier 'fc' applied to its input does not give the model's output"),
        (check_architecture, "midway", r"the model without its classifier '1' failed \(RuntimeError: mat1 and mat2"),
        (check_loss, "backwards", "right answers cost"),
        (check_loss, "per-image", "expected a scalar tensor"),
        (check_split, "overlapping", "fold 0's test, train and val overlap"),
        (check_split, "forgetful", "fold 0 leaves 5 images out"),
        (check_split, "moody", "two calls with seed 0 gave different plans"),
    ],
)
def test_contract_checks_name_what_is_wrong(facekit_plugin, check, name, message):
    facekit_plugin(BROKEN, package="facekit-broken-contracts")
    with pytest.raises(AssertionError, match=message):
        check(name)


@pytest.mark.parametrize(
    "name, message",
    [
        ("quiet", "reporter 'quiet' neither printed nor wrote anything"),
        ("secretive", "wrote files without listing them in context.written: .*hidden.txt"),
        ("hollow", "empty.txt is missing or empty"),
    ],
)
def test_reporter_check_names_what_is_wrong(facekit_plugin, facekit_run, tmp_path, name, message):
    facekit_plugin(BROKEN, package="facekit-broken-contracts")
    with pytest.raises(AssertionError, match=message):
        check_reporter(name, facekit_run, tmp_path / "report")

"""One source for every training option: TrainConfig's fields are `facekit train`'s options, checked once."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from facekit.cli import app
from facekit.cli.train_cmd import COMMAND_OPTIONS
from facekit.config import RESUME_SETTINGS, TrainConfig, options
from facekit.errors import UsageError

runner = CliRunner()


def _train_command():
    return typer.main.get_command(app).commands["train"]


def _cli_options() -> dict[str, object]:
    return {param.name: param for param in _train_command().params}


def test_every_setting_is_an_option_with_the_configs_name_default_and_help():
    params = _cli_options()
    for field in dataclasses.fields(TrainConfig):
        option = field.metadata["option"]
        if not option.cli:
            assert field.name not in params, f"{field.name} is a setting of the config alone"
            continue
        param = params[field.name]
        assert param.opts == [option.flag_for(field.name)], field.name
        default = None if field.default is dataclasses.MISSING else field.default
        assert param.default == default, f"--{field.name}: the CLI's default {param.default!r} is not the config's {default!r}"
        assert param.help == option.help, field.name
        if option.negation is not None:
            assert params[f"no_{field.name}"].opts == [option.negation[0]]


def test_the_command_has_no_option_the_config_does_not_declare():
    settings = {name for name, option in options().items() if option.cli}
    negations = {f"no_{name}" for name, option in options().items() if option.negation}
    assert set(_cli_options()) == settings | negations | set(COMMAND_OPTIONS)


def test_a_new_setting_is_a_new_option_without_touching_the_command():
    """What docs/architecture.md promises: one field declaration, and `facekit train` has it, checked."""
    from facekit.cli.train_cmd import _parameters
    from facekit.config import setting

    @dataclasses.dataclass
    class Extended(TrainConfig):
        warmup_epochs: int = setting(3, "Warm-up epochs.", ok=lambda v: v >= 0, must_be="0 or more")

    declared = {p.name: p for p in _parameters(Extended)}
    assert declared["warmup_epochs"].default.param_decls == ("--warmup-epochs",)
    assert declared["warmup_epochs"].default.default == 3 and declared["warmup_epochs"].annotation is int
    with pytest.raises(UsageError, match=r"^--warmup-epochs must be 0 or more \(got -1\)$"):
        Extended(data=Path("faces"), warmup_epochs=-1).validated()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(epochs=0), r"^--epochs must be at least 1 \(got 0\)$"),
        (dict(batch_size=0), r"^--batch-size must be from 1 to 65536 \(got 0\)$"),
        (dict(input_size=31), r"^--input-size must be from 32 to 4096 pixels \(got 31\)$"),
        (dict(rotate=181.0), r"^--rotate must be between 0 and 180 degrees"),
        (dict(workers=-1), r"^--workers must be 0 \(load in this process\) or more \(got -1\)$"),
        (dict(threads=0), r"^--threads must be at least 1 \(got 0\)$"),
        (dict(loader="fast"), r"^--loader must be one of auto, dali, torch \(got fast\)$"),
        (dict(cache="sometimes"), r"^--cache sometimes: choose one of auto, memory, disk, off$"),
        (dict(compile="max"), r"^--compile 'max' is not a compile mode: use default or reduce-overhead$"),
        (dict(schedule="cosin"), r"^--schedule 'cosin' is not known"),
        (dict(lr=float("nan")), r"^--lr must be a finite number above 0"),
    ],
)
def test_each_bad_value_is_refused_once_naming_its_option(change, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(data=Path("faces"), **change).validated()


def test_validated_values_are_in_the_one_spelling_a_run_records():
    config = TrainConfig(data=Path("faces"), cache="Disk", loader="Torch").validated()
    assert (config.cache, config.loader) == ("disk", "torch")
    assert TrainConfig(data=Path("faces"), cache=True).validated().cache == "auto"  # the flag of older runs
    assert TrainConfig.from_dict({"data": "faces", "cache": False, "device_used": "cpu"}).validated().cache == "off"


def test_resume_may_change_what_the_config_says():
    assert set(RESUME_SETTINGS) == {"epochs", "patience", "threads", "workers", "device", "cache", "compile", "log"}


def _option_help(flag: str) -> str:
    """What `facekit train --help` says of ``flag``: its lines, joined."""
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^│ {re.escape(flag)}\s", line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^│ --", lines[i])), len(lines))
    return re.sub(r"[\s│]+", " ", " ".join(lines[start:end]))


@pytest.mark.parametrize(
    "flag, default",
    [
        ("--rotate", "15, as --augment rotate:15"),
        ("--workers", "one per core, up to 8"),
        ("--threads", "one per core"),
        ("--nproc", "one process, no torchrun"),
        ("--compile", "off: eager"),
        ("--input-size", "the architecture's: 224 for baseline, tronnet, resnet18; 150 for dlib-resnet"),
        ("--epochs", "10"),
        ("--cache", "off"),
    ],
)
def test_train_help_shows_every_default(flag, default):
    line = _option_help(flag)
    assert f"[default: {default}]" in line or f"[default: ({default})]" in line, line


def test_the_input_size_default_is_true_for_every_architecture_it_names():
    from facekit.plugins import architectures

    registry = architectures()
    for name, size in (("baseline", 224), ("tronnet", 224), ("resnet18", 224), ("dlib-resnet", 150)):
        if name in registry:
            assert registry.get(name).input_size == size, name


@pytest.mark.parametrize("args", [(), ("train",), ("report",), ("data",), ("data", "check"), ("predict",), ("plugins",)])
def test_dash_h_is_help_everywhere(args):
    short = runner.invoke(app, [*args, "-h"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    long = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert short.exit_code == long.exit_code == 0, short.output
    assert short.output == long.output

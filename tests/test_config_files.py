"""Config files: `facekit train --config FILE` (YAML or a run's config.json), `--print-config`,
command-line options over the file, and one line naming the file and the key for every bad one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from facekit.cli import app
from facekit.config import TrainConfig
from facekit.config_files import config_yaml, read_config_file
from facekit.errors import UsageError
from facekit.runs import Run

EXAMPLE = """\
# A holdout run of the baseline, small and quick.
data: faces
arch: baseline
epochs: 3
lr: 1e-3            # YAML reads this as text; it is still a number
batch-size: 16      # the option's spelling works too
augment: [flip, "rotate:10"]
log: tensorboard    # one name or a list
cache: false        # the flag of older versions
weights: null
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_yaml_file_gives_every_setting_in_its_type(tmp_path):
    settings = read_config_file(write(tmp_path / "train.yaml", EXAMPLE)).settings
    assert settings == {
        "data": Path("faces"), "arch": "baseline", "epochs": 3, "lr": 0.001, "batch_size": 16,
        "augment": ["flip", "rotate:10"], "log": ["tensorboard"], "cache": False, "weights": None,
    }  # fmt: skip
    assert isinstance(settings["lr"], float) and isinstance(settings["epochs"], int)


@pytest.mark.parametrize("line, says", [
    ("lrr: 0.1", "unknown key 'lrr' (did you mean 'lr'?)"),
    ("epochs: ten", "epochs: expected a whole number, got 'ten'"),
    ("epochs: 2.5", "epochs: expected a whole number, got 2.5"),
    ("epochs: 0", "epochs: --epochs must be at least 1 (got 0)"),
    ("lr: -1", "lr: --lr must be a finite number above 0"),
    ("lr: .nan", "lr: expected a number, got nan"),
    ("finetune: maybe", "finetune: expected true or false, got 'maybe'"),
    ("test_size: 1.5", "test_size: --test-size must be a fraction above 0 and below 1"),
    ("arch: resnet81", "arch: --arch 'resnet81' is not known"),
    ("loss: plainn", "loss: --loss 'plainn' is not known"),
    ("log: [tensorbord]", "log: --log 'tensorbord' is not known"),
    ("augment: [flip, spin]", "augment: --augment"),
    ("schedule: sometimes", "schedule: "),
    ("data: [a, b]", "data: expected a path, got ['a', 'b']"),
    ("augment: {flip: 1}", "augment: expected a list of names (or one name)"),
    ("label_smoothing: 2", "label_smoothing: --label-smoothing 2.0"),
    ("epochs: 3\nepochs: 4", ""),  # YAML keeps the last; not an error of ours
])  # fmt: skip
def test_a_bad_key_or_value_is_one_line_naming_the_file_and_the_key(tmp_path, line, says):
    path = write(tmp_path / "train.yaml", f"data: faces\n{line}\n")
    if not says:
        read_config_file(path)
        return
    with pytest.raises(UsageError) as error:
        read_config_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message, message


@pytest.mark.parametrize("text, says", [
    ("data: [faces\n", "is not valid YAML (line 2, column 1"),
    ("- data\n- faces\n", "expected 'key: value' settings, found a list"),
    ("just text\n", "expected 'key: value' settings, found a text"),
])
def test_a_file_that_is_not_settings_is_one_line(tmp_path, text, says):
    with pytest.raises(UsageError, match=says.replace("(", r"\(").replace("[", r"\[")):
        read_config_file(write(tmp_path / "train.yaml", text))


def test_a_missing_or_folder_path_and_bad_json_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_config_file(tmp_path / "none.yaml")
    with pytest.raises(UsageError, match="is a folder"):
        read_config_file(tmp_path)
    with pytest.raises(UsageError, match="is not valid JSON"):
        read_config_file(write(tmp_path / "c.json", "{'data': 1}"))


def test_the_documented_example_reads(tmp_path):
    docs = (Path(__file__).resolve().parents[1] / "docs" / "train.md").read_text()
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    settings = read_config_file(write(tmp_path / "train.yaml", example)).settings
    assert settings["arch"] == "tronnet" and settings["lr"] == 1e-3 and settings["data"] == Path.home() / "faces-aligned"


def test_an_empty_file_sets_nothing(tmp_path):
    assert read_config_file(write(tmp_path / "empty.yaml", "# nothing yet\n")).settings == {}


def test_what_print_config_writes_reads_back_as_the_same_settings(tmp_path):
    config = dataclasses.replace(
        TrainConfig(data=Path("faces")), epochs=7, lr=3e-4, augment=["flip", "crop:0.8"], cache="disk",
        weights=Path("w.pth"), rotate=None, log=["tensorboard", "mlflow"], input_size=64, amp=False,
    )  # fmt: skip
    text = config_yaml(config.to_dict())
    read = read_config_file(write(tmp_path / "printed.yaml", text)).settings
    assert TrainConfig(**read) == config
    assert set(read) == {f.name for f in dataclasses.fields(TrainConfig)}  # every setting is in it


def test_a_runs_config_json_repeats_its_settings_and_says_what_it_left_out(tmp_path):
    recorded = TrainConfig(data=Path("faces"), epochs=4, lr=1e-3, out=Path("runs/A"), force=True).to_dict() | {
        "amp": False, "channels_last": False, "device_used": "cpu", "compile_used": None, "world_size": 1,
        "facekit_version": "0.1.0", "torch_version": "2.14.1", "created": "2026-12-04T10:00:00", "loader_used": "torch",
    }  # fmt: skip
    file = read_config_file(write(tmp_path / "config.json", json.dumps(recorded)))
    assert file.settings["epochs"] == 4 and file.settings["lr"] == 1e-3
    assert not {"out", "force", "amp", "channels_last"} & set(file.settings)
    assert set(file.ignored) == {"out", "force", "amp", "channels_last", "device_used", "compile_used", "world_size",
                                 "facekit_version", "torch_version", "created", "loader_used"}  # fmt: skip
    assert "left out" in file.note and "device_used" in file.note


# The command ----------------------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *map(str, args)])


def test_print_config_shows_the_file_with_the_command_line_over_it(tmp_path):
    path = write(tmp_path / "train.yaml", EXAMPLE)
    result = invoke("--config", path, "--epochs", "5", "--print-config")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["epochs"] == 5 and printed["lr"] == 0.001 and printed["batch_size"] == 16  # option over file
    assert printed["arch"] == "baseline" and printed["patience"] == 0  # file, then defaults
    assert set(printed) == {f.name for f in dataclasses.fields(TrainConfig)}
    # Ready to save: it reads back as the same settings.
    again = invoke("--config", write(tmp_path / "saved.yaml", result.output), "--print-config")
    assert yaml.safe_load(again.output) == printed
    assert not list(tmp_path.glob("runs*")) and not Path("runs").exists()  # printing trains nothing


def test_print_config_without_a_file_prints_the_defaults_and_the_options_given():
    result = invoke("--print-config", "--lr", "0.01")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["lr"] == 0.01 and printed["epochs"] == TrainConfig(data=Path(".")).epochs and printed["data"] is None


def test_a_bad_config_file_exits_2_with_one_line(tmp_path):
    result = invoke("--config", write(tmp_path / "bad.yaml", "data: faces\nepochs: ten\n"))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.yaml: epochs: expected a whole number" in lines[0], result.output


def test_config_and_resume_do_not_mix(tmp_path):
    result = invoke("--config", write(tmp_path / "c.yaml", "epochs: 2\n"), "--resume", tmp_path)
    assert result.exit_code == 2 and "--config" in result.output and "--resume" in result.output


def test_a_run_repeats_from_its_own_config_json(synthetic_dataset, tmp_path):
    first = invoke(
        "--data", synthetic_dataset, "--out", tmp_path / "A", "--input-size", "40", "--epochs", "1", "--lr", "0.002",
        "--batch-size", "8", "--loader", "torch", "--workers", "0", "--threads", "1", "--augment", "flip", "-q",
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    again = invoke("--config", tmp_path / "A" / "config.json", "--out", tmp_path / "B", "-q")
    assert again.exit_code == 0, again.output
    assert "left out" in again.output and "device_used" in again.output
    a, b = Run(tmp_path / "A").config, Run(tmp_path / "B").config
    differ = {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}
    assert differ <= {"out", "created"}, differ
    assert Run(tmp_path / "A").split["test"] == Run(tmp_path / "B").split["test"]

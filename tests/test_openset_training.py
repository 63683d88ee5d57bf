"""Open-set evaluation in training: held-out identities, strangers, calibration, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facekit import openset
from facekit.cli import app
from facekit.config import TrainConfig
from facekit.data.index import index_dataset
from facekit.data.synth import make_synthetic_dataset
from facekit.errors import UsageError
from facekit.openset_training import hold_out_identities, openset_summary, split_strangers, unknown_files
from facekit.runs import Run

runner = CliRunner()
FAST = ["--input-size", "48", "--epochs", "2", "--batch-size", "8", "--loader", "torch", "--workers", "0", "--rotate", "0",
        "--threads", "1", "--lr", "1e-3"]  # fmt: skip


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def strangers_folder(path: Path, people: int = 4, per_person: int = 3, seed: int = 7) -> Path:
    """Synthetic people under names no training set here uses."""
    make_synthetic_dataset(path, identities=people, per_identity=per_person, size=48, seed=seed)
    for folder in sorted(path.iterdir()):
        folder.rename(path / f"stranger_{folder.name}")
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("os") / "faces", identities=8, per_identity=8, size=48, seed=1)


@pytest.fixture(scope="module")
def strangers(tmp_path_factory) -> Path:
    return strangers_folder(tmp_path_factory.mktemp("os") / "strangers")


@pytest.fixture(scope="module")
def openset_run(faces, strangers, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("os") / "run"
    result = invoke("train", "--data", faces, "--out", out, "--unknown-identities", "0.25", "--strangers", strangers,
                    "--val-size", "0.25", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------------- held-out people
def test_held_out_identities_are_seeded_and_never_train(faces):
    index = index_dataset(faces)
    known, held = hold_out_identities(index, 0.25, seed=3)
    again, held_again = hold_out_identities(index, 0.25, seed=3)
    assert held == held_again and known.files == again.files
    assert len(held["identities"]) == 2 and not set(held["identities"]) & set(known.classes)
    assert len(known.classes) == 6 and known.labels.max() == 5
    # Every image of a held-out person is an unknown probe, calibration and test people apart.
    cal_people = {f.split("/")[0] for f in held["calibration"]}
    test_people = {f.split("/")[0] for f in held["test"]}
    assert cal_people and test_people and not cal_people & test_people
    assert len(held["calibration"]) + len(held["test"]) == 16
    assert all(known.classes[label] == f.split("/")[0] for f, label in zip(known.files, known.labels))
    other = hold_out_identities(index, 0.25, seed=4)[1]
    assert other["identities"] != held["identities"] or other["calibration"] != held["calibration"]


@pytest.mark.parametrize(("fraction", "words"), [(0.1, "at least 2 are needed"), (0.9, "leaves 1 of the 8")])
def test_holding_out_too_few_or_too_many_is_refused(faces, fraction, words):
    with pytest.raises(UsageError, match=words):
        hold_out_identities(index_dataset(faces), fraction, seed=0)


@pytest.mark.parametrize("fraction", [1.0, -0.1, math.nan])
def test_fraction_out_of_range_is_refused(faces, fraction):
    with pytest.raises(UsageError, match="--unknown-identities"):
        TrainConfig(data=faces, unknown_identities=fraction).validate()


@pytest.mark.parametrize("rate", [0.0, 1.0, math.inf])
def test_target_fpir_out_of_range_is_refused(faces, rate):
    with pytest.raises(UsageError, match="--target-fpir"):
        TrainConfig(data=faces, target_fpir=rate).validate()


def test_strangers_are_split_by_person(strangers):
    split = split_strangers(strangers, ["person_00"], seed=0)
    cal = {f.split("/")[0] for f in split["calibration"]}
    test = {f.split("/")[0] for f in split["test"]}
    assert len(cal) == 2 and len(test) == 2 and not cal & test and split["people"] == 4


def test_bad_strangers_folders_are_refused(tmp_path, faces):
    empty = tmp_path / "empty"
    (empty / "nobody").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no usable image"):
        split_strangers(empty, [], seed=0)
    one = strangers_folder(tmp_path / "one", people=1)
    with pytest.raises(UsageError, match="images of 1 person"):
        split_strangers(one, [], seed=0)
    with pytest.raises(UsageError, match="person_01 is also an identity"):
        split_strangers(faces, ["person_01"], seed=0)
    with pytest.raises(UsageError, match="--strangers .* is not a folder"):
        TrainConfig(data=faces, strangers=tmp_path / "missing").validate()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--unknown-identities", "1.5"], "--unknown-identities must be"),
        (["--unknown-identities", "0.1"], "at least 2 are needed"),
        (["--target-fpir", "0"], "--target-fpir must be"),
        (["--strangers", "nowhere"], "--strangers nowhere is not a folder"),
        (["--unknown-identities", "0.25", "--val-size", "0"], "give --val-size above 0"),
    ],
)
def test_bad_openset_options_are_one_line_and_exit_2(faces, tmp_path, extra, words):
    result = invoke("train", "--data", faces, "--out", tmp_path / "run", *FAST, *extra)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "config.json").exists()


# ------------------------------------------------------------------------------ a trained run
@pytest.mark.slow
def test_training_records_the_unknowns_and_calibrates_a_threshold(openset_run):
    run = Run(openset_run)
    entry = run.split["openset"]
    assert entry["held_out"]["fraction"] == 0.25 and len(entry["held_out"]["identities"]) == 2
    assert not set(entry["held_out"]["identities"]) & set(run.classes)
    assert entry["strangers"]["people"] == 4
    assert len(unknown_files(run.split, "calibration")) and len(unknown_files(run.split, "test"))
    data = openset.OpenSet.read(openset_run)
    assert data.score in data.calibration and data.target_fpir == 0.01
    calibration = data.calibration[data.score]
    assert calibration["unknown"] == len(unknown_files(run.split, "calibration"))
    assert calibration["known"] == len(run.split["folds"][0]["val"])
    assert calibration["fpir"] <= 0.01 and "cannot measure an FPIR of 0.01" in calibration["note"]


@pytest.mark.slow
def test_report_shows_the_openset_figures(openset_run, tmp_path):
    summary = openset_summary(openset_run)
    figures = summary["scores"][summary["score"]]
    y_true, y_pred = Run(openset_run).test_labels()
    if summary["score"] == "softmax":
        assert figures["rank1"] == pytest.approx(np.mean(y_true == y_pred))
    result = invoke("report", openset_run, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "Open-set identification (test split)" in result.output and "FNIR at FPIR 0.1" in result.output
    assert (tmp_path / "report" / "det_curve.png").is_file()
    as_json = json.loads(invoke("report", openset_run, "--json").stdout)
    assert as_json["openset"]["score"] == summary["score"]
    assert as_json["openset"]["scores"][summary["score"]]["fnir_at_fpir"]["0.001"] is None  # too few unknowns


@pytest.mark.slow
def test_compare_puts_openset_figures_beside_a_closed_set_run(openset_run, faces, tmp_path):
    closed = tmp_path / "closed"
    assert invoke("train", "--data", faces, "--out", closed, *FAST).exit_code == 0
    result = invoke("report", "--compare", openset_run, closed, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["FNIR at FPIR 0.1"][closed.name] is None
    assert metrics["FNIR at FPIR 0.1"][openset_run.name] is not None
    assert "Open-set rank-1" in metrics

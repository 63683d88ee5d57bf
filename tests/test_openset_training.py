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
    result = invoke("report", openset_run, "--out", tmp_path / "report", "--html", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert "Open-set identification (test split)" in result.output and "FNIR at FPIR 0.1" in result.output
    assert "cannot measure an FPIR of 0.01" in " ".join(result.output.split())  # the calibration's note is told
    assert (tmp_path / "report" / "det_curve.png").is_file()
    assert 'alt="det_curve.png"' in (tmp_path / "report.html").read_text()  # the web page has it too
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


# --------------------------------------------------------------------------- predict, enroll
@pytest.fixture(scope="module")
def gallery_run(faces, strangers, tmp_path_factory) -> Path:
    """An open-set run with a gallery (class centroids), so people can be enrolled in it."""
    out = tmp_path_factory.mktemp("os") / "gallery-run"
    result = invoke("train", "--data", faces, "--out", out, "--unknown-identities", "0.25", "--strangers", strangers,
                    "--val-size", "0.25", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_predict_rejects_below_the_threshold_and_override_moves_it(openset_run, faces):
    held_out = Run(openset_run).split["openset"]["held_out"]["test"][0]
    image = faces / held_out
    result = invoke("predict", openset_run, image, "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)
    assert set(entry) == {"file", "identity", "accepted", "score", "score_name", "threshold", "top"}
    data = openset.OpenSet.read(openset_run)
    assert entry["threshold"] == pytest.approx(data.threshold(entry["score_name"]))
    assert entry["accepted"] == (entry["score"] >= entry["threshold"])
    assert entry["identity"] == ("unknown" if not entry["accepted"] else entry["top"][0]["name"])
    low = json.loads(invoke("predict", openset_run, image, "--json", "--threshold", "-1").stdout)[0]
    high = json.loads(invoke("predict", openset_run, image, "--json", "--threshold", "2").stdout)[0]
    assert low["accepted"] and low["identity"] != "unknown" and low["threshold"] == -1
    assert not high["accepted"] and high["identity"] == "unknown"
    text = invoke("predict", openset_run, image, "--threshold", "2")
    assert "unknown (" in text.stdout and "< threshold 2.000" in text.stdout


@pytest.mark.slow
def test_predict_on_a_closed_set_run_names_everyone_and_says_so(faces, tmp_path):
    closed = tmp_path / "closed"
    assert invoke("train", "--data", faces, "--out", closed, *FAST).exit_code == 0
    result = invoke("predict", closed, faces / "person_00", "--json")
    assert result.exit_code == 0
    entries = json.loads(result.stdout)
    assert all(e["accepted"] and e["threshold"] is None and e["identity"] == e["top"][0]["name"] for e in entries)
    assert "no open-set data" in result.stderr


@pytest.mark.slow
def test_enrolled_people_are_named_and_strangers_still_rejected(gallery_run, strangers, tmp_path):
    data = openset.OpenSet.read(gallery_run)
    assert data.gallery is not None and "centroid" in data.calibration and openset.ENROLLED in data.calibration
    assert "enrolled" in openset_summary(gallery_run)["scores"]  # one photo per class, on the test split
    assert data.gallery.names == Run(gallery_run).classes and data.gallery.embeddings.shape[0] == len(data.gallery.names)
    people = tmp_path / "people"
    (people / "zoe").mkdir(parents=True)
    photo = sorted((strangers / "stranger_person_00").iterdir())[0]
    (people / "zoe" / photo.name).write_bytes(photo.read_bytes())
    result = invoke("enroll", gallery_run, people)
    assert result.exit_code == 0, result.output
    assert "enrolled zoe (1 photo)" in result.stdout
    assert openset.OpenSet.read(gallery_run).gallery.enrolled == ["zoe"]
    # The enrolled photo itself matches its own gallery entry exactly: named, by the gallery score.
    [entry] = json.loads(invoke("predict", gallery_run, photo, "--json").stdout)
    assert entry["identity"] == "zoe" and entry["score_name"] == "centroid" and entry["score"] == pytest.approx(1.0, abs=1e-4)
    assert entry["threshold"] == pytest.approx(data.threshold(openset.ENROLLED))
    # Enrolling the same name again, or a trained identity's name, is refused.
    again = invoke("enroll", gallery_run, people)
    assert again.exit_code == 2 and "zoe is already enrolled" in again.output
    trained = tmp_path / "trained"
    (trained / Run(gallery_run).classes[0]).mkdir(parents=True)
    (trained / Run(gallery_run).classes[0] / photo.name).write_bytes(photo.read_bytes())
    clash = invoke("enroll", gallery_run, trained)
    assert clash.exit_code == 2 and "is a trained identity" in clash.output
    # Resuming the finished run re-evaluates it and keeps the people enrolled in it.
    assert invoke("train", "--resume", gallery_run, "--quiet").exit_code == 0
    assert openset.OpenSet.read(gallery_run).gallery.enrolled == ["zoe"]
    # Removing: the enrolled person goes; a trained identity or a stranger cannot be removed.
    assert invoke("enroll", gallery_run, "--remove", "zoe").exit_code == 0
    assert openset.OpenSet.read(gallery_run).gallery.enrolled == []
    for name, words in (("zoe", "nobody of that name is enrolled"), (Run(gallery_run).classes[0], "is a trained identity")):
        refused = invoke("enroll", gallery_run, "--remove", name)
        assert refused.exit_code == 2 and words in refused.output and "Traceback" not in refused.output


def test_enroll_refuses_a_run_without_a_gallery_and_bad_arguments(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    result = invoke("enroll", run, tmp_path)
    assert result.exit_code == 2 and "has no gallery of embeddings" in result.output
    neither = invoke("enroll", run)
    assert neither.exit_code == 2 and "give DIR (people to enroll) or --remove NAME" in neither.output


@pytest.mark.slow
def test_enroll_refuses_unreadable_photos_before_writing(gallery_run, tmp_path):
    people = tmp_path / "people"
    (people / "amy").mkdir(parents=True)
    (people / "amy" / "broken.jpg").write_bytes(b"not a jpeg")
    before = (gallery_run / "gallery.npz").read_bytes()
    result = invoke("enroll", gallery_run, people)
    assert result.exit_code == 2 and "broken.jpg cannot be enrolled" in result.output
    assert (gallery_run / "gallery.npz").read_bytes() == before


@pytest.mark.slow
def test_a_margin_loss_run_can_reject_by_its_heads_cosine(faces, strangers, tmp_path):
    out = tmp_path / "arcface"
    result = invoke("train", "--data", faces, "--out", out, "--strangers", strangers, "--loss", "arcface",
                    "--loss-option", "s=16", "--loss-option", "m=0.2", "--openset-score", "margin", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = openset.OpenSet.read(out)
    assert data.score == "margin" and data.logit_scale == 16.0
    assert set(data.extra["scores"]) == {"centroid", "margin", "softmax"}
    summary = openset_summary(out)["scores"]["margin"]
    arrays = np.load(out / "openset_test.npz")
    assert arrays["margin_known"].max() <= 1.0 + 1e-6 and arrays["margin_unknown"].min() >= -1.0 - 1e-6  # cosines
    [entry] = json.loads(invoke("predict", out, strangers / "stranger_person_00", "--json", "-k", "1").stdout)[:1]
    assert entry["score_name"] == "margin" and entry["threshold"] == pytest.approx(data.threshold("margin"))
    assert summary["rank1"] >= 0.0


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--strangers", "STRANGERS", "--openset-score", "margin"], "loss 'plain' brings no cosine head"),
        (["--openset-score", "softmax"], "give --unknown-identities or --strangers"),
        (["--strangers", "STRANGERS", "--openset-score", "nearest"], "--openset-score must be one of"),
    ],
)
def test_a_score_the_run_cannot_give_is_refused_before_training(faces, strangers, tmp_path, extra, words):
    extra = [strangers if arg == "STRANGERS" else arg for arg in extra]
    result = invoke("train", "--data", faces, "--out", tmp_path / "run", *extra, *FAST)
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_enrollment_benchmark_measures_people_outside_the_calibration(gallery_run, strangers):
    from benchmarks.enrollment import measure

    result = measure(gallery_run, strangers)
    calibration_people = {f.split("/")[0] for f in Run(gallery_run).split["openset"]["strangers"]["calibration"]}
    assert result["enrolled_people"] == 4 - len(calibration_people)  # every test-half stranger has 3 photos
    assert result["probe_images"] == 2 * result["enrolled_people"] and result["single_photo_strangers"] == 0
    assert 0 <= result["fnir"] <= 1 and 0 <= result["rank1"] <= 1
    assert result["enrolled_threshold"] == pytest.approx(openset.OpenSet.read(gallery_run).threshold(openset.ENROLLED))
    assert openset.OpenSet.read(gallery_run).gallery.enrolled == []  # measuring enrolls nobody in the run

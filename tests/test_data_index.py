"""Dataset index, `facekit data check` and `facekit data synth`."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facekit.cli import app  # the whole CLI, as a user runs it: its error handling sets the exit codes
from facekit.data.check import check_dataset
from facekit.data.index import index_dataset
from facekit.data.synth import make_synthetic_dataset
from facekit.errors import FacekitError, UsageError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LFW_TINY = SHARED / "lfw_tiny20"
ORL = SHARED / "orl_att_faces"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))


def _broken_dataset(root: Path) -> Path:
    make_synthetic_dataset(root, identities=3, per_identity=6, size=32)
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (root / "person_00" / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "person_01" / "empty.jpg").write_bytes(b"")
    (root / "person_02" / "notes.jpg").write_text("not a picture")
    (root / "zz_nobody").mkdir()
    return root


def test_index_counts_and_class_ids(tmp_path):
    root = make_synthetic_dataset(tmp_path / "ds", identities=4, per_identity=5, size=32)
    index = index_dataset(root)
    assert index.classes == ["person_00", "person_01", "person_02", "person_03"]
    assert index.counts.tolist() == [5, 5, 5, 5]
    assert index.labels.dtype == np.int64
    assert all(Path(p).is_file() for p in index.paths())
    assert index.files[0] == "person_00/000.png"
    again = type(index).from_dict(json.loads(json.dumps(index.to_dict())))
    assert again.files == index.files and again.labels.tolist() == index.labels.tolist()


def test_bad_files_are_named_and_left_out(tmp_path):
    index = index_dataset(_broken_dataset(tmp_path / "ds"))
    reasons = {bad.path: bad.reason for bad in index.bad}
    assert reasons == {
        "person_00/cut.jpg": "truncated JPEG",
        "person_01/empty.jpg": "zero-byte file",
        "person_02/notes.jpg": "not an image",
    }
    assert index.empty_classes == ["zz_nobody"]
    assert index.classes == ["person_00", "person_01", "person_02"]
    assert len(index.files) == 18 and not set(reasons) & set(index.files)


def test_index_is_cached_and_refreshed_when_the_folder_changes(tmp_path, monkeypatch):
    root = make_synthetic_dataset(tmp_path / "ds", identities=2, per_identity=3, size=32)
    first = index_dataset(root)
    import facekit.data.index as index_module

    monkeypatch.setattr(index_module, "_verify_all", lambda *a: pytest.fail("decoded again"))
    assert index_dataset(root).files == first.files
    monkeypatch.undo()
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    (root / "person_01" / "extra.png").write_bytes((root / "person_01" / "000.png").read_bytes())
    assert len(index_dataset(root).files) == len(first.files) + 1


def test_index_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        index_dataset(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        index_dataset(tmp_path / "file.txt")
    (tmp_path / "flat").mkdir()
    with pytest.raises(UsageError, match="no identity sub-folders"):
        index_dataset(tmp_path / "flat")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(FacekitError, match="no usable image"):
        index_dataset(tmp_path / "hollow")


def test_check_names_every_problem(tmp_path):
    report = check_dataset(_broken_dataset(tmp_path / "ds"), split="kfold", folds=4)
    assert {b.path for b in report.bad} == {"person_00/cut.jpg", "person_01/empty.jpg", "person_02/notes.jpg"}
    assert report.empty_classes == ["zz_nobody"]
    assert report.usable and report.images == 18
    # 6 images per identity, at most 2 to test, at least 4 left: enough for 4 folds, not for 6.
    assert report.small_classes == []
    assert check_dataset(tmp_path / "ds", split="kfold", folds=6).small_classes


def test_cli_check_and_exit_codes(tmp_path):
    runner = CliRunner()
    root = _broken_dataset(tmp_path / "ds")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    for name in ("cut.jpg", "empty.jpg", "notes.jpg", "zz_nobody", "truncated JPEG"):
        assert name in result.output
    data = json.loads(runner.invoke(app, ["data", "check", str(root), "--json"]).output)
    assert data["usable"] and len(data["bad"]) == 3

    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "a" / "x.jpg").write_text("no")
    assert runner.invoke(app, ["data", "check", str(tmp_path / "hollow")]).exit_code == 1
    missing = runner.invoke(app, ["data", "check", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "Error:" in missing.output and "Traceback" not in missing.output
    assert runner.invoke(app, ["data", "check", str(root), "--split", "bogus"]).exit_code == 2


def test_cli_synth(tmp_path):
    runner = CliRunner()
    out = tmp_path / "synth"
    result = runner.invoke(app, ["data", "synth", str(out), "--identities", "3", "--per-identity", "2", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["person_00", "person_01", "person_02"]
    assert runner.invoke(app, ["data", "synth", str(out), "--identities", "3"]).exit_code == 2
    assert runner.invoke(app, ["data", "synth", str(out), "--identities", "2", "--force"]).exit_code == 0
    assert len([p for p in out.iterdir() if p.is_dir()]) == 2


def test_synthetic_identities_differ_more_than_their_shots():
    from facekit.data.synth import _draw_identity, _photograph

    rng = np.random.default_rng(0)
    faces = [_draw_identity(rng) for _ in range(4)]
    shots = np.array([[_photograph(f, rng, 32).astype(float) for _ in range(4)] for f in faces])
    means = shots.mean(axis=1)
    within = np.mean([np.abs(shots[i] - means[i]).mean() for i in range(4)])
    between = np.mean([np.abs(means[i] - means[j]).mean() for i in range(4) for j in range(i + 1, 4)])
    assert between > within


@pytest.mark.skipif(not LFW_TINY.is_dir(), reason=f"shared data set {LFW_TINY} is absent")
def test_lfw_tiny20_counts_equal_the_folder():
    index = index_dataset(LFW_TINY)
    expected = {d.name: len(os.listdir(d)) for d in LFW_TINY.iterdir() if d.is_dir()}
    assert dict(zip(index.classes, index.counts.tolist())) == expected
    assert sum(expected.values()) == 271 and not index.bad


@pytest.mark.skipif(not ORL.is_dir(), reason=f"shared data set {ORL} is absent")
def test_orl_grey_pgm_counts():
    index = index_dataset(ORL)
    assert index.num_classes == 40 and index.counts.tolist() == [10] * 40
    assert index.classes[:3] == ["s1", "s10", "s11"]  # sorted folder names, as strings


def test_check_follows_the_split_rules(tmp_path):
    from facekit.data.synth import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "ds", identities=3, per_identity=5, size=16, seed=0)
    # 5 images, 1 to test, 4 left: 5 folds validate each identity in only 4 of them.
    report = check_dataset(root, split="kfold", folds=5)
    assert [(s.name, s.images, s.reason) for s in report.small_classes] == [
        (name, 5, "validated in only 4 of 5 folds") for name in ("person_00", "person_01", "person_02")
    ]
    # Holdout: a fifth of 5 images is one test image each; 1.5 validation images go to 2 of the 3.
    assert [s.reason for s in check_dataset(root, split="holdout").small_classes] == ["no validation image"]
    assert check_dataset(root, split="holdout", val_size=0.2).small_classes == []
    with pytest.raises(UsageError, match="--folds 1"):  # before any image is decoded
        check_dataset(tmp_path / "missing", split="kfold", folds=1)
    with pytest.raises(UsageError, match=r"--split 'k-fold' is not known; .*Did you mean 'kfold'\?"):
        check_dataset(root, split="k-fold")


PLUGIN_SPLIT = """
import numpy as np
from facekit.api import Fold, SplitPlan, SplitSpec, hookimpl

def first_image_tests(labels, options):
    # Each identity's first image to test, its second to validation, the rest to training.
    order = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    test = np.sort([idx[0] for idx in order])
    val = np.sort([idx[1] for idx in order if len(idx) > 2])
    train = np.setdiff1d(np.arange(len(labels)), np.concatenate([test, val]))
    return SplitPlan(test=test, folds=[Fold(train=train, val=val)])

@hookimpl
def register_splits(register):
    register(SplitSpec("first-image", first_image_tests, "A test split from a plugin."))
"""


def test_check_accepts_a_split_from_a_plugin(tmp_path, facekit_plugin):
    from facekit.data.synth import make_synthetic_dataset

    facekit_plugin(PLUGIN_SPLIT, package="facekit-firstsplit")
    root = make_synthetic_dataset(tmp_path / "ds", identities=3, per_identity=3, size=16, seed=0)
    (root / "person_02" / sorted(p.name for p in (root / "person_02").iterdir())[0]).unlink()
    result = CliRunner().invoke(app, ["data", "check", str(root), "--split", "first-image", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["split"] == "first-image"
    assert report["small_classes"] == [{"name": "person_02", "images": 2, "reason": "no validation image"}]

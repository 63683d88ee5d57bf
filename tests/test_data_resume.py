"""A run's images stay the run's images: a replaced or changed image is refused on resume, a test
image that stops decoding leaves no damaged predictions (and a resume does not loop on it),
leakage is said at the start of training, and a damaged normalization.json never gives NaN
probabilities with exit 0."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facekit.cli import app
from facekit.config import TrainConfig
from facekit.data.synth import make_synthetic_dataset
from facekit.engine import SilentProgress, Trainer
from facekit.errors import FacekitError
from facekit.runs import Run
from _testutil import InterruptAt


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def faces(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "faces", identities=3, per_identity=6, size=32)


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data=data, out=out, arch="baseline", input_size=40, epochs=2, batch_size=8, lr=1e-3, rotate=0.0,
                    loader="torch", workers=0, test_size=0.3, val_size=0.2, seed=1, threads=1)  # fmt: skip
    return TrainConfig(**(settings | overrides))


class Messages(SilentProgress):
    def __init__(self):
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def interrupted_run(faces: Path, out: Path) -> Run:
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(faces, out), InterruptAt(2)).train()
    return Run(out)


# ------------------------------------------------------------------------------- replaced images
@pytest.mark.slow
def test_an_image_replaced_before_resume_is_refused_by_name(faces, tmp_path):
    run = interrupted_run(faces, tmp_path / "run")
    assert json.loads((run.path / "fingerprints.json").read_text())["files"][0][0] > 0
    victim = faces / run.split["files"][3]
    original = victim.read_bytes()
    other = faces / run.split["files"][4]
    shutil.copy(other, victim)  # another picture under the same name
    with pytest.raises(FacekitError, match=rf"1 image of .*run changed since the run started \(e\.g\. .*{victim.name}: its"):
        Trainer.resume(run.path)

    # Same size, other bytes (an edit in place): found by the content hash once the time differs.
    changed = bytearray(original)
    changed[-20] ^= 0xFF
    victim.write_bytes(bytes(changed))
    with pytest.raises(FacekitError, match="its content changed"):
        Trainer.resume(run.path)

    victim.write_bytes(original)  # restored (a new modification time, the same bytes): resumes
    os.utime(faces / run.split["files"][0], None)  # a touched file is no change either
    Trainer.resume(run.path)
    assert Run(run.path).has_predictions


@pytest.mark.slow
def test_a_run_from_before_fingerprints_still_resumes(faces, tmp_path):
    run = interrupted_run(faces, tmp_path / "run")
    (run.path / "fingerprints.json").unlink()
    Trainer.resume(run.path)
    assert Run(run.path).has_predictions


def test_the_cli_says_one_line_for_a_changed_image(faces, tmp_path):
    run = interrupted_run(faces, tmp_path / "run")
    Image.new("RGB", (32, 32), "white").save(faces / run.split["files"][0])
    result = CliRunner().invoke(app, ["train", "--resume", str(run.path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "changed since the run started" in lines[0] and run.split["files"][0] in lines[0]


# ------------------------------------------------------------------------------- a test image breaks
class BreakAtTheEnd(SilentProgress):
    """Damages ``victim`` as the last epoch ends: the test evaluation that follows cannot decode it."""

    def __init__(self, victim: Path, epochs: int):
        self.victim, self.epochs = victim, epochs

    def epoch_end(self, row):
        if row["epoch"] == self.epochs:
            self.victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)


@pytest.mark.slow
def test_a_test_image_that_stops_decoding_leaves_no_damaged_predictions_and_resume_does_not_loop(faces, tmp_path):
    from facekit.data.index import index_dataset
    from facekit.plugins import splits
    from facekit.specs import SplitOptions

    index = index_dataset(faces)
    plan = splits().get("holdout").split(index.labels, SplitOptions(seed=1, test_size=0.3, val_size=0.2))
    victim = faces / index.files[int(plan.test[0])]
    original = victim.read_bytes()
    out = tmp_path / "run"
    with pytest.raises(FacekitError, match=rf"test image .*{victim.name} could not be decoded .*no test results: restore"):
        Trainer(config(faces, out), BreakAtTheEnd(victim, 2)).train()
    assert not (out / "predictions.npz").exists() and not (out / "predictions.csv").exists()
    with pytest.raises(FacekitError, match=rf"{victim.name}: its"):  # one line naming it, every time: no loop
        Trainer.resume(out)
    victim.write_bytes(original)
    Trainer.resume(out)
    run = Run(out)
    assert len(run.predictions()["index"]) == len(run.split["test"])


# ------------------------------------------------------------------------------- leakage at train time
def test_train_names_identical_images_across_identities(faces, tmp_path):
    shutil.copy(faces / "person_00" / "001.png", faces / "person_02" / "stolen.png")
    progress = Messages()
    Trainer(config(faces, tmp_path / "run"), progress)._setup()
    warned = [line for line in progress.lines if "identical images" in line]
    assert warned == ["warning: identical images in 2 identities (person_00, person_02): person_00/001.png = person_02/stolen.png"]


# ------------------------------------------------------------------------------- normalization.json
@pytest.mark.parametrize(
    "std, problem",
    [(["NaN", 0.2, 0.2], "not 3 finite numbers"), ([0.2, 0.0, 0.2], "not above 0"), ([0.2, 0.2], "not 3 finite"),
     (["x", 0.2, 0.2], "not 3 finite"), ([1e999, 0.2, 0.2], "not 3 finite")],  # fmt: skip
)
def test_a_damaged_normalization_is_refused_not_turned_into_nan(facekit_run, tmp_path, synthetic_dataset, std, problem):
    run = tmp_path / "run"
    shutil.copytree(facekit_run, run)
    data = json.loads((run / "normalization.json").read_text())
    data["folds"][0]["std"] = [float(v) if v == "NaN" else v for v in std]
    (run / "normalization.json").write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["predict", str(run), str(synthetic_dataset / "person_00" / "000.png")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "normalization.json is damaged" in lines[0] and problem in lines[0], lines


# ------------------------------------------------------------------------------- DALI names the file
@pytest.mark.skipif("dali" not in __import__("facekit.data.loaders", fromlist=["x"]).available_backends(), reason="needs DALI")
def test_dali_names_the_file_it_cannot_decode(faces):
    from facekit.data.loaders import make_loader
    from facekit.specs import Normalization

    gif = faces / "person_00" / "gif.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(gif, format="GIF")
    files = [str(faces / "person_00" / "000.png"), str(gif)]
    loader = make_loader(files, [0, 0], batch_size=2, input_size=32, normalization=Normalization((0.5,) * 3, (0.2,) * 3),
                         train=False, rotate=0.0, backend="dali", num_workers=1)  # fmt: skip
    with pytest.raises(FacekitError, match=r"gif\.png: DALI cannot decode it \(GIF image named \.png"):
        list(loader)
    loader.close()


def test_train_lists_at_most_twenty_left_out_files_then_counts_the_rest(faces, tmp_path):
    for i in range(25):
        (faces / "person_01" / f"empty{i:02d}.png").write_bytes(b"")
    progress = Messages()
    Trainer(config(faces, tmp_path / "run"), progress)._setup()
    skipping = [line for line in progress.lines if line.startswith("skipping")]
    assert len(skipping) == 21 and skipping[0] == "skipping person_01/empty00.png: zero-byte file"
    assert skipping[-1] == "skipping 5 more files or folders (`facekit data check` lists them all)"


@pytest.mark.slow
def test_an_unknown_persons_image_replaced_before_resume_is_refused(tmp_path):
    faces = make_synthetic_dataset(tmp_path / "faces", identities=6, per_identity=5, size=32)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(faces, out, unknown_identities=0.34, val_size=0.3), InterruptAt(2)).train()
    run = Run(out)
    held_out = run.split["openset"]["held_out"]
    assert held_out and len(run.fingerprints["openset"]["held_out"]) == len(held_out["calibration"]) + len(held_out["test"])
    victim = faces / held_out["test"][0]
    Image.new("RGB", (32, 32), "white").save(victim)
    with pytest.raises(FacekitError, match=rf"1 image of .*changed since the run started \(e\.g\. .*{victim.name}"):
        Trainer.resume(out)

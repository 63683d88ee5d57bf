"""`facekit export` and `facekit predict BUNDLE`, as a user runs them: parity with torch, no torch needed
to predict, and every damaged bundle or bad option is one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facekit.bundle import MANIFEST, open_bundle, sha256_of
from facekit.cli import app
from facekit.errors import FacekitError
from facekit.testing import check_export

runner = CliRunner()
# What `pip install facekit` (no extra) does not install: a bundle prediction must not import any of it.
NOT_IN_THE_BASE_INSTALL = (
    "torch", "torchvision", "nvidia", "sklearn", "scipy", "matplotlib", "onnx", "onnxscript", "onnx_ir", "yaml",
    "tensorboard", "mlflow", "sqlalchemy", "alembic",
)


def _facekit_without(blocked, args: list) -> subprocess.CompletedProcess:
    """``facekit ARGS`` in a fresh interpreter where the top-level packages ``blocked`` cannot be
    imported (as on a machine with only the base install); torch must never end up loaded."""
    script = textwrap.dedent(
        f"""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {set(blocked)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, Blocked())
        from facekit.cli import main
        try:
            main({[str(a) for a in args]!r})
        finally:
            assert not any(m.split(".")[0] == "torch" for m in sys.modules)
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def faces(size: int, synthetic_dataset: Path) -> np.ndarray:
    """uint8 (N, size, size, 3) faces, decoded and resized as a bundle does: real ones where the shared data is."""
    from facekit.imaging import load_resized

    files = sorted((SHARED / "lfw_tiny20").glob("*/*.jpg"))[:6] or sorted(synthetic_dataset.rglob("*.png"))[:6]
    return np.stack([load_resized(f, size) for f in files])


# ----------------------------------------------------------------------------- parity
# Every architecture facekit ships and the three example plugins: torch and onnxruntime (and
# TorchScript) agree on the logits within 1e-4 and on the top-5, on the same images.
ARCHITECTURES = [
    ("baseline", 64, False),
    ("tronnet", 64, False),
    ("tinycnn", 64, False),
    ("resnet18", 64, True),
    ("efficientnet-lite0", 64, True),
    ("dlib-resnet", 150, True),
]


@pytest.mark.parametrize(
    "name, size", [pytest.param(n, s, marks=[pytest.mark.slow] if slow else []) for n, s, slow in ARCHITECTURES]
)
def test_exported_models_agree_with_torch(name, size, synthetic_dataset):
    check_export(name, input_size=size, images=faces(size, synthetic_dataset), tolerance=1e-4)


BATCH_DEPENDENT = """
import torch
from torch import nn
from facekit.api import ArchitectureSpec, hookimpl

class BatchDependent(nn.Module):
    # Takes a different path for big batches: no exporter can keep that behind a dynamic batch axis.
    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        features = x.mean(dim=(2, 3))
        if x.shape[0] > 2:
            features = features * 2
        return self.head(features)

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("batchy", lambda options: BatchDependent(options.num_classes), input_size=16))
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_architecture_that_cannot_export_says_so_in_one_line(facekit_plugin, fmt):
    facekit_plugin(BATCH_DEPENDENT, package="facekit-batchy")
    with pytest.raises(AssertionError) as failure:
        check_export("batchy", formats=(fmt,))
    message = str(failure.value)
    assert "\n" not in message and "architecture 'batchy' cannot be exported to" in message, message


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def bundles(facekit_run, tmp_path_factory):
    """The facekit_run fixture (baseline, 48x48) exported both ways."""
    folder = tmp_path_factory.mktemp("bundles")
    made = {}
    for fmt in ("onnx", "torchscript"):
        result = invoke("export", facekit_run, "--format", fmt, "--out", folder / fmt)
        assert result.exit_code == 0, result.output
        made[fmt] = folder / fmt
    return made


@pytest.mark.slow
def test_bundle_files_and_manifest(bundles, facekit_run):
    import onnx

    bundle = open_bundle(bundles["onnx"])
    manifest = bundle.manifest
    assert manifest["format"] == "onnx" and manifest["architecture"] == "baseline" and manifest["opset"] == 20
    assert manifest["outputs"][0] == "logits" and manifest["torch_version"] and manifest["facekit_version"]
    assert set(manifest["files"]) >= {"model.onnx", "classes.json", "preprocessing.json"}
    for name, digest in manifest["files"].items():
        assert sha256_of(bundle.path / name) == digest
    assert bundle.classes == json.loads((facekit_run / "classes.json").read_text())
    normalization = json.loads((facekit_run / "normalization.json").read_text())["folds"][0]
    assert bundle.normalization == {"mean": normalization["mean"], "std": normalization["std"]}
    assert bundle.input_size == 48
    model = onnx.load(str(bundle.model_file))
    onnx.checker.check_model(model, full_check=True)
    graph_input = model.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "images" and dims[1:] == [48, 48, 3] and isinstance(dims[0], str)  # dynamic batch
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.mark.slow
def test_predict_bundle_gives_the_runs_output(bundles, facekit_run, synthetic_dataset):
    images = sorted(synthetic_dataset.rglob("*.png"))[:5]
    from_run = invoke("predict", facekit_run, *images, "--json")
    assert from_run.exit_code == 0, from_run.output
    expected = json.loads(from_run.stdout)
    text = invoke("predict", facekit_run, *images, "--device", "cpu").stdout
    for fmt, bundle in bundles.items():
        result = invoke("predict", bundle, *images, "--json", "--device", "cpu")
        assert result.exit_code == 0, result.output
        got = json.loads(result.stdout)
        assert [r["file"] for r in got] == [r["file"] for r in expected]
        for mine, theirs in zip(got, expected):
            for key in ("identity", "accepted", "score_name", "threshold"):
                assert mine[key] == theirs[key], (fmt, key)
            assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
            assert [t["id"] for t in mine["top"]] == [t["id"] for t in theirs["top"]], fmt
            assert [t["name"] for t in mine["top"]] == [t["name"] for t in theirs["top"]], fmt
            np.testing.assert_allclose([t["probability"] for t in mine["top"]], [t["probability"] for t in theirs["top"]], atol=1e-5)
        assert invoke("predict", bundle, *images, "--device", "cpu").stdout == text, fmt


@pytest.mark.slow
def test_a_bundle_predicts_where_torch_cannot_be_imported(bundles, facekit_run, synthetic_dataset):
    images = [str(p) for p in sorted(synthetic_dataset.rglob("*.png"))[:3]]
    expected = json.loads(invoke("predict", facekit_run, *images, "--json").stdout)
    result = _facekit_without(NOT_IN_THE_BASE_INSTALL, ["predict", bundles["onnx"], *images, "--json"])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert [[t["id"] for t in r["top"]] for r in got] == [[t["id"] for t in r["top"]] for r in expected]
    np.testing.assert_allclose(
        [[t["probability"] for t in r["top"]] for r in got], [[t["probability"] for t in r["top"]] for r in expected], atol=1e-5
    )


@pytest.mark.slow
def test_a_torchscript_bundle_without_torch_says_what_to_do(bundles, synthetic_dataset):
    image = str(next(synthetic_dataset.rglob("*.png")))
    result = _facekit_without({"torch"}, ["predict", bundles["torchscript"], image])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "TorchScript bundle, which needs PyTorch" in result.stderr and "--format onnx" in result.stderr


# ----------------------------------------------------------------------------- damage
@pytest.fixture
def copy_of(bundles, tmp_path):
    def copy(fmt: str = "onnx") -> Path:
        return Path(shutil.copytree(bundles[fmt], tmp_path / fmt))

    return copy


def _rewrite_manifest(bundle: Path, **changes) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text()) | changes
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def _resign(bundle: Path, name: str) -> None:
    """What a user editing a file and its listed sha256 together does."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][name] = sha256_of(bundle / name)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_damaged_bundles_are_one_line_exit_2(copy_of, synthetic_dataset):
    image = next(synthetic_dataset.rglob("*.png"))

    changed = copy_of("onnx")
    with open(changed / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    one_line_error(invoke("predict", changed, image), 2, "model.onnx was changed after export", "facekit export")
    shutil.rmtree(changed)

    edited = copy_of("torchscript")
    (edited / "classes.json").write_text('["somebody", "else", "entirely", "new"]')
    one_line_error(invoke("predict", edited, image), 2, "classes.json was changed after export")
    shutil.rmtree(edited)

    missing = copy_of("onnx")
    (missing / "classes.json").unlink()
    one_line_error(invoke("predict", missing, image), 2, "classes.json is missing")
    shutil.rmtree(missing)

    unknown = copy_of("onnx")
    _rewrite_manifest(unknown, format="tflite")
    one_line_error(invoke("predict", unknown, image), 2, "unknown format 'tflite'")
    shutil.rmtree(unknown)

    for fmt in ("onnx", "torchscript"):  # a preprocessing.json edited to another input size, sha256 and all
        wrong = copy_of(fmt)
        pre = json.loads((wrong / "preprocessing.json").read_text()) | {"input_size": 64}
        (wrong / "preprocessing.json").write_text(json.dumps(pre))
        _resign(wrong, "preprocessing.json")
        one_line_error(invoke("predict", wrong, image), 2, "does not match the bundle", "64x64")
        shutil.rmtree(wrong)

    unlisted = copy_of("onnx")
    manifest = json.loads((unlisted / MANIFEST).read_text())
    del manifest["files"]["classes.json"]
    (unlisted / MANIFEST).write_text(json.dumps(manifest))
    one_line_error(invoke("predict", unlisted, image), 2, "lists no classes.json")
    shutil.rmtree(unlisted)

    garbled = copy_of("onnx")
    (garbled / MANIFEST).write_text("{ not json")
    one_line_error(invoke("predict", garbled, image), 2, "bundle.json is damaged")


def test_export_refuses_what_it_cannot_or_must_not_do(facekit_run, tmp_path, bundles):
    unfinished = Path(shutil.copytree(facekit_run, tmp_path / "unfinished"))
    (unfinished / "checkpoints" / "best.pt").unlink()
    one_line_error(invoke("export", unfinished), 2, "has no kept model", f"facekit train --resume {unfinished}")

    mine = tmp_path / "my-things"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    one_line_error(invoke("export", facekit_run, "--out", mine), 2, "not a facekit bundle", "nothing was deleted")
    assert (mine / "holiday.jpg").read_bytes() == b"precious" and sorted(p.name for p in mine.iterdir()) == ["holiday.jpg"]

    bundle = Path(shutil.copytree(bundles["onnx"], tmp_path / "bundle"))
    (bundle / "notes.txt").write_text("mine")
    one_line_error(invoke("export", facekit_run, "--out", bundle), 2, "notes.txt, which is not part of its bundle")
    assert (bundle / "notes.txt").read_text() == "mine"

    one_line_error(invoke("export", facekit_run, "--format", "tflite", "--out", tmp_path / "x"), 2, "--format tflite")
    assert not (tmp_path / "x").exists()
    one_line_error(invoke("predict", tmp_path / "my-things", next(facekit_run.rglob("*.json"))), 2, "not a facekit run or bundle")


@pytest.mark.slow
def test_export_replaces_its_own_bundle_and_copies_open_set_files(facekit_run, tmp_path):
    run = Path(shutil.copytree(facekit_run, tmp_path / "run"))
    (run / "openset.json").write_text('{"score": "softmax", "calibration": {"softmax": {"threshold": 0.5}}}\n')
    (run / "gallery.npz").write_bytes(b"verbatim bytes")
    first = invoke("export", run, "--format", "torchscript")
    assert first.exit_code == 0, first.output
    bundle = run / "bundle-torchscript"
    assert (bundle / "openset.json").read_bytes() == (run / "openset.json").read_bytes()
    assert (bundle / "gallery.npz").read_bytes() == b"verbatim bytes"
    assert set(json.loads((bundle / MANIFEST).read_text())["files"]) >= {"openset.json", "gallery.npz", "model.pt"}
    (run / "gallery.npz").unlink()
    again = invoke("export", run, "--format", "torchscript", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["bundle"] == str(bundle)
    assert not (bundle / "gallery.npz").exists() and (bundle / "openset.json").exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(".bundle")] == []  # no staging folder left behind


def test_export_without_the_exporter_packages_says_what_to_install(facekit_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    result = invoke("export", facekit_run, "--out", tmp_path / "b")
    assert result.exit_code == 1 and "pip install 'facekit[export]'" in result.output, result.output
    assert not (tmp_path / "b").exists()


def test_export_model_refuses_an_unknown_format(tmp_path):
    from facekit.export import export_model

    with pytest.raises(FacekitError, match="--format keras"):
        export_model(None, tmp_path / "m", fmt="keras", arch="x", input_size=8, normalization=None)


@pytest.mark.slow
def test_an_open_set_bundle_rejects_and_names_like_its_run(tmp_path):
    """A run with a calibrated threshold and an enrolled person: its ONNX bundle, run where torch
    cannot be imported, makes the run's decisions (unknown, or by the gallery score, the enrolled name)."""
    from facekit.data.synth import make_synthetic_dataset

    faces = make_synthetic_dataset(tmp_path / "faces", identities=6, per_identity=8, size=48, seed=1)
    strangers = make_synthetic_dataset(tmp_path / "strangers", identities=3, per_identity=3, size=48, seed=7)
    for folder in sorted(strangers.iterdir()):
        folder.rename(strangers / f"stranger_{folder.name}")
    run = tmp_path / "run"
    fast = ["--input-size", "48", "--epochs", "2", "--batch-size", "8", "--loader", "torch", "--workers", "0",
            "--rotate", "0", "--threads", "1", "--lr", "1e-3"]  # fmt: skip
    trained = invoke("train", "--data", faces, "--out", run, "--unknown-identities", "0.34", "--strangers", strangers,
                     "--val-size", "0.25", *fast)  # fmt: skip
    assert trained.exit_code == 0, trained.output
    photo = sorted((strangers / "stranger_person_00").iterdir())[0]
    (tmp_path / "people" / "zoe").mkdir(parents=True)
    shutil.copy(photo, tmp_path / "people" / "zoe" / photo.name)
    assert invoke("enroll", run, tmp_path / "people").exit_code == 0
    exported = invoke("export", run, "--out", tmp_path / "bundle")
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((tmp_path / "bundle" / MANIFEST).read_text())
    assert manifest["outputs"] == ["logits", "embedding"] and {"openset.json", "gallery.npz"} <= set(manifest["files"])
    assert (tmp_path / "bundle" / "gallery.npz").read_bytes() == (run / "gallery.npz").read_bytes()

    images = [str(photo)] + [str(p) for p in sorted(strangers.rglob("*.png"))[3:6]] + [str(p) for p in sorted(faces.rglob("*.png"))[::9]]
    expected = json.loads(invoke("predict", run, *images, "--json").stdout)
    assert expected[0]["identity"] == "zoe" and expected[0]["score_name"] == "centroid"
    result = _facekit_without(NOT_IN_THE_BASE_INSTALL, ["predict", tmp_path / "bundle", *images, "--json"])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    for mine, theirs in zip(got, expected, strict=True):
        assert {k: mine[k] for k in ("file", "identity", "accepted", "score_name", "threshold")} == {
            k: theirs[k] for k in ("file", "identity", "accepted", "score_name", "threshold")
        }
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_the_base_install_stays_the_light_prediction_install():
    """`pip install facekit` (no extra) is what predicts from a bundle; torch & co. belong in [train]."""
    import re
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]}
    assert base <= {"typer", "pluggy", "rich", "numpy", "pillow", "onnxruntime"}, (
        f"{sorted(base)}: a new base dependency makes the prediction-only install heavier; "
        "put it in an extra ([train], [export]...) unless `facekit predict BUNDLE` needs it"
    )
    assert {"torch", "onnx", "onnxscript"} <= {
        re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in project["optional-dependencies"]["export"]
    } | {"torch"} and any(r.startswith("torch") for r in project["optional-dependencies"]["train"])


def test_training_where_only_the_base_is_installed_says_which_extra(synthetic_dataset):
    result = _facekit_without(NOT_IN_THE_BASE_INSTALL, ["train", "--data", synthetic_dataset])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: facekit train needs the training tools (torch is not installed): pip install 'facekit[train]'"
    ), result.stderr

"""Advice that never misleads: no message tells a user to unpickle untrusted data, bad weights
are called bad weights (not a too small --input-size), and a missing --weights file is a usage
error naming it."""

import io
import pickle
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18
from typer.testing import CliRunner

from facekit.cli import app
from facekit.weights import describe_load_failure, scrub_torch_advice

FAST = ["--input-size", "64", "--epochs", "1", "--batch-size", "8", "--loader", "torch", "--workers", "0",
        "--rotate", "0", "--threads", "1"]  # fmt: skip
TORCH_ADVICE = ("weights_only", "safe_globals", "trusted source", "arbitrary code")


def _bad_files(folder: Path) -> dict[str, Path]:
    """Files torch refuses in every way it words it: pickled objects, garbage, a cut-off zip, an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "pickled object": folder / "object.pth",
        "old-format pickle": folder / "old.pth",
        "garbage": folder / "garbage.pth",
        "truncated": folder / "truncated.pth",
        "empty": folder / "empty.pth",
        "other network": folder / "other.pth",
    }
    torch.save({"conv1.weight": Path("not a tensor")}, files["pickled object"])
    files["old-format pickle"].write_bytes(pickle.dumps({"conv1.weight": Path("x")}, protocol=2))
    files["garbage"].write_bytes(b"\x80\x02garbage" * 50)
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(100)}, buffer)
    files["truncated"].write_bytes(buffer.getvalue()[:300])
    files["empty"].write_bytes(b"")
    torch.save({"fc.weight": torch.zeros(3, 3)}, files["other network"])
    return files


def _load_error(path: Path) -> BaseException:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError(f"torch loaded {path}")


def test_torchs_own_messages_lose_their_unpickling_advice(tmp_path):
    """Made by this torch, so a reworded message in a new torch version is caught here."""
    for kind, path in _bad_files(tmp_path).items():
        if kind == "other network":
            continue
        raw = str(_load_error(path))
        for text in (describe_load_failure(_load_error(path)), scrub_torch_advice(raw), scrub_torch_advice(f"prefix: {raw}")):
            assert not any(advice in text.lower() for advice in TORCH_ADVICE), (kind, text)
            assert "\n" not in text and "\x1b" not in text, (kind, text)
    assert "pathlib" in describe_load_failure(_load_error(tmp_path / "object.pth"))
    assert scrub_torch_advice("a plain message\nwith two lines") == "a plain message\nwith two lines"


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not any(advice in lines[0].lower() for advice in TORCH_ADVICE), lines[0]
    return result.exit_code, lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickled object", "old-format pickle", "garbage", "truncated", "empty", "other network"])
def test_a_bad_trusted_weights_file_names_the_file_without_torchs_advice(kind, synthetic_dataset, tmp_path):
    path = _bad_files(tmp_path / "w")[kind]
    code, line = _invoke("train", "--data", synthetic_dataset, *FAST, "--arch", "resnet18", "--weights", path, "--trust-weights")
    assert code == 2 and line.startswith(f"Error: --weights {path}: ")
    assert "input-size" not in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["pickled object", "garbage", "truncated", "empty", "other network"])
def test_bad_cached_weights_with_trust_are_called_bad_weights(kind, synthetic_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    cached = cache / "resnet18-f37072fd.pth"
    cached.write_bytes(_bad_files(tmp_path / "w")[kind].read_bytes())
    code, line = _invoke("train", "--data", synthetic_dataset, *FAST, "--arch", "resnet18", "--trust-weights")
    assert code == 1 and line.startswith(f"Error: cached pretrained weights {cached}: ")
    assert "delete the file to download it again" in line and "input-size" not in line


@pytest.mark.slow
def test_a_missing_weights_file_is_a_usage_error_naming_it(synthetic_dataset, tmp_path):
    for trust in ([], ["--trust-weights"]):
        code, line = _invoke("train", "--data", synthetic_dataset, *FAST, "--arch", "resnet18", "--weights", "nofile.pth", *trust)
        assert code == 2 and line == "Error: --weights nofile.pth: no such file; check the path"


def test_an_unreadable_checkpoint_never_suggests_unpickling(facekit_run, tmp_path):
    import shutil

    run = shutil.copytree(facekit_run, tmp_path / "run")
    for checkpoint in (run / "checkpoints").glob("*.pt"):
        torch.save({"model": Path("not a tensor")}, checkpoint)
    code, line = _invoke("predict", run, tmp_path / "nothing.png")
    code, line = _invoke("kernels", run, "--out", tmp_path / "k")
    assert code == 1 and "could not be read" in line and "pathlib" in line


def test_a_plugin_passing_torchs_advice_on_is_scrubbed(facekit_plugin, synthetic_dataset, tmp_path):
    """facekit-efficientnet words its own loading errors; whatever a plugin says, torch's advice never reaches the user."""
    facekit_plugin(
        """
from facekit.api import ArchitectureSpec, FacekitError, hookimpl

def build(options):
    import torch
    try:
        torch.load(options.weights, weights_only=True)
    except Exception as exc:
        raise FacekitError(f"cannot read {options.weights}: {exc}") from None

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("careless-net", build, "Passes torch's text on.", pretrained=True))
""",
        package="facekit-careless",
    )
    path = _bad_files(tmp_path / "w")["pickled object"]
    code, line = _invoke("train", "--data", synthetic_dataset, *FAST, "--arch", "careless-net", "--weights", path)
    assert code == 1 and f"cannot read {path}" in line

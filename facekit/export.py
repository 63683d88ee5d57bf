"""``facekit export``: a run's kept model as a bundle that predicts without facekit's training stack.

The exported graph takes what an application holds, uint8 RGB images (batch, height, width, 3)
at the run's input size, and does the run's preprocessing itself: it casts to float, moves the
channels first and normalizes with the kept fold's mean and std, exactly as the loaders do
(``pixel * scale + shift``). So a bundle needs no knowledge of the run besides its files.

ONNX goes through ``torch.onnx.export(dynamo=True)``, torch's default exporter since 2.9: it
captures the network with ``torch.export`` against a symbolic batch size, so a network whose
code depends on the batch in a way ONNX cannot express fails here, with its reason, instead of
being traced at one batch size and silently wrong at another; the TorchScript-based exporter it
replaced is deprecated. Every architecture facekit ships and the three example plugins export
this way (tests/test_export.py). TorchScript bundles come from ``torch.jit.trace``, checked on a
second batch of another size and content. Both are checked against the eager model right after
export (:data:`CHECK_TOLERANCE`), and an ONNX file must pass ``onnx.checker``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facekit.bundle import (
    BUNDLE_VERSION,
    CLASSES,
    FORMATS,
    INPUT_NAME,
    LAYOUT,
    MANIFEST,
    OPENSET_FILES,
    PREPROCESSING,
    is_bundle,
    sha256_of,
)
from facekit.errors import FacekitError, UsageError
from facekit.files import write_json
from facekit.runs import Run
from facekit.specs import Normalization

# ONNX opset 20: the one torch 2.14's exporter writes natively (other opsets go through onnx's
# version converter), every operator these networks use is implemented by onnxruntime's current
# release (1.32), and onnxruntime has run opset 20 since 1.17, so a bundle also runs on older
# deployments.
OPSET = 20
# Largest |exported - eager| logit difference accepted right after export, relative to the
# logits' scale (fp32 reorderings stay far below it; a wrong graph is far above it).
CHECK_TOLERANCE = 1e-3
MAX_BATCH = 1 << 16  # the symbolic batch axis's upper bound (torch.export needs one)


@dataclass(frozen=True)
class ExportResult:
    """What ``facekit export`` wrote: the bundle folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return sum((self.path / name).stat().st_size for name in self.manifest["files"])


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> ExportResult:
    """Export ``run_dir``'s kept model as a bundle at ``out`` (default: ``RUN/bundle-FORMAT``).

    ``out`` may be new, empty, or a bundle made earlier (replaced); any other folder is refused,
    so nothing of the user's is deleted. The bundle is written beside ``out`` and moved into place
    only when complete.
    """
    fmt = check_format(fmt)
    run = Run.open(run_dir)
    kept = run.checkpoint_path("best")
    if not kept.is_file():
        raise UsageError(
            f"{run.path} has no kept model yet ({kept} is missing: its training did not finish): "
            f"continue it with `facekit train --resume {run.path}`, then export it"
        )
    out = Path(out) if out is not None else run.path / f"bundle-{fmt}"
    replaced = _check_out(out)
    model, embedding = exportable_model(run.load_model(), str(run.config["arch"]))
    normalization = Normalization.from_dict(run.normalization["folds"][run.kept_fold])
    input_size = int(run.config["input_size"])
    arch = str(run.config["arch"])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's folder is private; a bundle is meant to be shared
    try:
        info = export_model(
            model, staging / FORMATS[fmt], fmt=fmt, arch=arch, input_size=input_size, normalization=normalization,
            embedding=embedding,
        )  # fmt: skip
        write_json(staging / CLASSES, list(run.classes))
        write_json(staging / PREPROCESSING, preprocessing(input_size, normalization))
        for name in OPENSET_FILES:  # the run's open-set threshold and gallery, byte for byte
            if (run.path / name).is_file():
                shutil.copyfile(run.path / name, staging / name)
        manifest = _manifest(staging, run, fmt, arch, info)
        write_json(staging / MANIFEST, manifest)
        for name in replaced:
            (out / name).unlink()
        if out.exists():
            out.rmdir()  # empty now: _check_out allowed only a bundle's own files
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, manifest)


def exportable_model(model: Any, arch: str) -> tuple[Any, bool]:
    """The model as ``images -> (logits, embedding)`` where its architecture names its classifier
    (the embedding lets a bundle score by gallery similarity), else the model itself."""
    from facekit.heads import embedding_model
    from facekit.plugins import architectures

    try:
        return embedding_model(model, architectures().get(arch)).eval(), True
    except FacekitError:  # a plugin architecture that names no classifier: logits only
        return model, False


def check_format(fmt: str) -> str:
    name = str(fmt).lower()
    if name not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    return name


def preprocessing(input_size: int, normalization: Normalization) -> dict[str, Any]:
    """preprocessing.json: what the caller gives the graph, and what the graph does to it."""
    return {
        "input_size": input_size,
        "layout": LAYOUT,
        "dtype": "uint8",
        "channels": "RGB",
        "resize": "plain antialiased bilinear to input_size x input_size (aspect not kept), as the training loader",
        "normalization": normalization.to_dict(),
        "normalized_in_graph": "x = (pixel / 255 - mean) / std per channel",
    }


def _check_out(out: Path) -> list[str]:
    """The files to delete before the new bundle moves in: none for a new or empty folder, the old
    bundle's own files for a bundle; anything else at ``out`` is refused."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder: choose another --out")
    contents = sorted(p.name for p in out.iterdir())
    if not contents:
        return []
    refuse = f"--out {out} is a folder that is not a facekit bundle: choose a new or empty folder (nothing was deleted)"
    if not is_bundle(out):
        raise UsageError(refuse)
    try:
        listed = set(json.loads((out / MANIFEST).read_text())["files"]) | {MANIFEST}
    except (ValueError, KeyError, TypeError, OSError):
        raise UsageError(refuse) from None
    foreign = [name for name in contents if name not in listed or not (out / name).is_file()]
    if foreign:
        raise UsageError(
            f"--out {out} holds {foreign[0]}, which is not part of its bundle: move it away or choose another --out "
            "(nothing was deleted)"
        )
    return contents


def _manifest(folder: Path, run: Run, fmt: str, arch: str, info: dict[str, Any]) -> dict[str, Any]:
    import torch

    import facekit

    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    return {
        "bundle_version": BUNDLE_VERSION,
        "format": fmt,
        "model": FORMATS[fmt],
        "architecture": arch,
        "classes": len(run.classes),
        "input": {"name": INPUT_NAME, "shape": ["batch", info["input_size"], info["input_size"], 3], "dtype": "uint8",
                  "layout": LAYOUT},  # fmt: skip
        "outputs": info["outputs"],
        "opset": info.get("opset"),
        "facekit_version": facekit.__version__,
        "torch_version": torch.__version__,
        "exporter": info["exporter"],
        "run": run.path.name,  # its name only: the bundle travels, the path of this machine does not
        "kept_fold": run.kept_fold,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "files": {name: sha256_of(folder / name) for name in files},
    }


# --------------------------------------------------------------------------- the graph
def with_preprocessing(model: Any, normalization: Normalization) -> Any:
    """``model`` behind the loaders' preprocessing: uint8 RGB NHWC in, the model's output(s) out."""
    import torch
    from torch import nn

    class Preprocessed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            mean = torch.tensor(normalization.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(normalization.std, dtype=torch.float32).view(1, 3, 1, 1)
            # The loaders' arithmetic: (x / 255 - mean) / std == x * scale + shift.
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", -mean / std)

        def forward(self, images: torch.Tensor) -> Any:
            pixels = images.permute(0, 3, 1, 2).to(torch.float32)
            return self.model(torch.addcmul(self.shift, pixels, self.scale))

    return Preprocessed().eval()


def export_model(
    model: Any, path: Path, *, fmt: str, arch: str, input_size: int, normalization: Normalization, embedding: bool = False
) -> dict[str, Any]:
    """Write ``model`` (eval mode, its preprocessing in front) to ``path`` as ``fmt``; returns what the manifest records.

    ``embedding``: the model returns ``(logits, embedding)``. An architecture that cannot be
    exported is one :class:`FacekitError` line naming it and the exporter's reason.
    """
    import torch

    fmt = check_format(fmt)
    outputs = ["logits", "embedding"] if embedding else ["logits"]
    wrapped = with_preprocessing(model.eval(), normalization)
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, input_size, input_size, 3), dtype=torch.uint8, generator=generator)
    check = torch.randint(0, 256, (3, input_size, input_size, 3), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        expected = _as_tuple(wrapped(check))
    if fmt == "onnx":
        info = _export_onnx(wrapped, example, path, arch, outputs)
        got = _run_onnx(path, check.numpy())
    else:
        info = _export_torchscript(wrapped, example, path, arch)
        with _quiet(), torch.no_grad():
            got = [t.numpy() for t in _as_tuple(torch.jit.load(str(path))(check))]
    for name, want, have in zip(outputs, expected, got):
        scale = max(1.0, float(want.abs().max()))
        diff = float(np.abs(want.numpy() - have).max())
        if not diff <= CHECK_TOLERANCE * scale:
            raise FacekitError(
                f"architecture {arch!r} cannot be exported to {fmt}: the exported model's {name} differ from the "
                f"model's by {diff:.3g} (its forward() depends on the images' content or batch size in a way the "
                "exporter cannot capture)"
            )
    return info | {"outputs": outputs, "input_size": input_size}


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _reason(exc: BaseException) -> str:
    """The first line of the innermost cause: what the exporter actually tripped on."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    for candidate in (root, exc):
        lines = [line.strip() for line in str(candidate).splitlines() if line.strip()]
        if lines:
            return f"{candidate.__class__.__name__}: {lines[0][:240]}"
    return exc.__class__.__name__


@contextlib.contextmanager
def _quiet():
    """The exporters' progress prints and warnings are not the user's business (failures are reported)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export_onnx(wrapped: Any, example: Any, path: Path, arch: str, outputs: list[str]) -> dict[str, Any]:
    import torch

    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's exporter needs it; asked here to say so in one line
    except ImportError as exc:
        raise FacekitError(
            f"facekit export --format onnx needs onnx and onnxscript ({exc.name} is not installed): "
            "pip install 'facekit[export]'"
        ) from None
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with _quiet():
            torch.onnx.export(
                wrapped, (example,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=outputs,
                dynamic_shapes=({0: batch},), opset_version=OPSET, external_data=False, optimize=True,
            )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds; each is one line for the user
        raise FacekitError(f"architecture {arch!r} cannot be exported to ONNX: {_reason(exc)}") from None
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise FacekitError(f"architecture {arch!r}: the exported ONNX graph fails onnx.checker: {_reason(exc)}") from None
    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), OPSET)
    return {"opset": int(opset), "exporter": f"torch.onnx.export(dynamo=True), onnx {onnx.__version__}"}


def _run_onnx(path: Path, images: np.ndarray) -> list[np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise FacekitError("facekit export --format onnx checks the graph with onnxruntime: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: images})


def _export_torchscript(wrapped: Any, example: Any, path: Path, arch: str) -> dict[str, Any]:
    import torch

    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(wrapped, example, check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as exc:  # noqa: BLE001 - the tracer raises many kinds
        raise FacekitError(f"architecture {arch!r} cannot be exported to TorchScript: {_reason(exc)}") from None
    return {"opset": None, "exporter": "torch.jit.trace"}

"""An exported bundle: a folder that carries everything a prediction needs, read without torch.

``facekit export RUN`` writes it (:mod:`facekit.export`); ``facekit predict BUNDLE IMAGES...``
reads it here. Layout (docs/export.md describes each file)::

    BUNDLE/bundle.json         what the bundle is: format, architecture, versions, opset, outputs, sha256 of every file
    BUNDLE/model.onnx          the network (or model.pt, TorchScript): uint8 RGB NHWC images in, logits out
    BUNDLE/classes.json        class names; the index is the class id
    BUNDLE/preprocessing.json  input size, layout and the normalization the graph applies itself
    BUNDLE/openset.json        (where the run has one) the open-set rejection threshold and score
    BUNDLE/gallery.npz         (where the run has one) class centroids and enrolled people

This module imports numpy, Pillow and facekit's torch-free modules; onnxruntime when an ONNX
bundle runs, torch only for a TorchScript bundle. Every problem with a bundle (a file changed
after export, a missing class map, an unknown format, a model whose input does not match) is
one :class:`UsageError` naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekit.errors import FacekitError, UsageError
from facekit.imaging import load_resized

MANIFEST = "bundle.json"
BUNDLE_VERSION = 1  # the layout version this facekit writes and reads
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
CLASSES = "classes.json"
PREPROCESSING = "preprocessing.json"
OPENSET_FILES = ("openset.json", "gallery.npz")  # copied verbatim from the run where it has them
INPUT_NAME = "images"
LAYOUT = "NHWC"  # uint8 RGB, as numpy and Pillow hold images: (batch, height, width, 3)
AGAIN = "export it again with `facekit export RUN`"


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a bundle manifest (a run folder has config.json instead)."""
    return (Path(path) / MANIFEST).is_file()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A checked bundle folder: its manifest, class names and preprocessing."""

    path: Path
    manifest: dict[str, Any]
    classes: list[str]
    input_size: int
    normalization: dict[str, list[float]]

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def model_file(self) -> Path:
        return self.path / FORMATS[self.format]

    @property
    def outputs(self) -> list[str]:
        return list(self.manifest.get("outputs", ["logits"]))

    def file(self, name: str) -> Path | None:
        """One of the bundle's optional files (``openset.json``, ``gallery.npz``), or None."""
        return self.path / name if name in self.manifest["files"] else None

    def runner(self, device: str = "auto") -> "Runner":
        runner = OnnxRunner(self, device) if self.format == "onnx" else TorchScriptRunner(self, device)
        runner.check()
        return runner

    def infer(
        self, files: Sequence[str | Path], *, device: str = "auto", batch_size: int = 32, with_embeddings: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N x C) and, when asked, embeddings (N x D) of image files, in order.

        The images are decoded and resized to exactly the pixels the torch loader gives (see
        :mod:`facekit.imaging`); the graph normalizes them itself.
        """
        if with_embeddings and "embedding" not in self.outputs:
            raise UsageError(
                f"{self.path} has no embedding output, which its open-set score needs: export the run again "
                "with this facekit (`facekit export RUN`)"
            )
        runner = self.runner(device)
        logits, embeddings = [], []
        for start in range(0, len(files), batch_size):
            batch = np.stack([load_resized(f, self.input_size) for f in files[start : start + batch_size]])
            outputs = runner(batch)
            logits.append(outputs["logits"])
            if with_embeddings:
                embeddings.append(outputs["embedding"])
        if not files:
            return np.zeros((0, len(self.classes)), np.float32), None
        all_logits = np.concatenate(logits).astype(np.float32, copy=False)
        if not np.isfinite(all_logits).all():  # NaN scores would name identities at random
            raise FacekitError(f"the model of {self.path} gives scores that are not numbers (NaN): {AGAIN}")
        return all_logits, (np.concatenate(embeddings).astype(np.float32, copy=False) if with_embeddings else None)


def open_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle folder: every file the manifest lists is there, unchanged since export."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise UsageError(f"{path} is not a facekit bundle (no {MANIFEST}): make one with `facekit export RUN`")
    manifest = _read_json(manifest_file, dict)
    version = manifest.get("bundle_version")
    if not isinstance(version, int) or version < 1:
        raise UsageError(f"{manifest_file} is damaged (no bundle_version): {AGAIN}")
    if version > BUNDLE_VERSION:
        raise UsageError(
            f"{path} was made by a newer facekit (bundle version {version}; this one reads up to "
            f"{BUNDLE_VERSION}): upgrade facekit"
        )
    fmt = manifest.get("format")
    if fmt not in FORMATS:
        raise UsageError(f"{manifest_file}: unknown format {fmt!r} (facekit reads {', '.join(FORMATS)}): {AGAIN}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise UsageError(f"{manifest_file} is damaged (no sha256 list of its files): {AGAIN}")
    for required in (FORMATS[fmt], CLASSES, PREPROCESSING):
        if required not in files:
            raise UsageError(f"{manifest_file} lists no {required}: the bundle is incomplete; {AGAIN}")
    for name, expected in files.items():
        file = path / name
        if Path(name).name != name:  # names only: a manifest never points outside its folder
            raise UsageError(f"{manifest_file} is damaged (file name {name!r}): {AGAIN}")
        if not file.is_file():
            raise UsageError(f"{file} is missing: the bundle is incomplete; {AGAIN}")
        if sha256_of(file) != expected:
            raise UsageError(f"{file} was changed after export (its sha256 is not the one in {MANIFEST}): {AGAIN}")
    classes = _read_json(path / CLASSES, list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise UsageError(f"{path / CLASSES} is damaged (not a list of class names): {AGAIN}")
    pre = _read_json(path / PREPROCESSING, dict)
    try:
        size = int(pre["input_size"])
        mean, std = (list(map(float, pre["normalization"][k])) for k in ("mean", "std"))
        layout = pre["layout"]
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{path / PREPROCESSING} is damaged (input_size, layout, normalization): {AGAIN}") from None
    if size < 1 or len(mean) != 3 or len(std) != 3 or layout != LAYOUT:
        raise UsageError(f"{path / PREPROCESSING} is damaged (input_size {size}, layout {layout!r}): {AGAIN}")
    return Bundle(path, manifest, classes, size, {"mean": mean, "std": std})


def _read_json(file: Path, kind: type) -> Any:
    try:
        data = json.loads(file.read_text())
    except (ValueError, OSError) as exc:
        raise UsageError(f"{file} is damaged ({exc.__class__.__name__}: {exc}): {AGAIN}") from None
    if not isinstance(data, kind):
        raise UsageError(f"{file} is damaged (not a JSON {kind.__name__}): {AGAIN}")
    return data


class Runner:
    """Runs a bundle's model on uint8 NHWC batches; returns its outputs by name as numpy arrays."""

    def __init__(self, bundle: Bundle, device: str):
        self.bundle = bundle
        self.device = device

    def check(self) -> None:
        """The model takes (batch, size, size, 3) uint8 images and gives one logit per class: or one line why not."""

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _mismatch(self, what: str) -> UsageError:
        return UsageError(f"{self.bundle.model_file} does not match the bundle ({what}): {AGAIN}")


class OnnxRunner(Runner):
    """onnxruntime: the CUDA provider where it is installed and a GPU is asked for (or ``auto``), else the CPU."""

    def __init__(self, bundle: Bundle, device: str = "auto", *, threads: int | None = None):
        super().__init__(bundle, device)
        try:
            import onnxruntime
        except ImportError:
            raise FacekitError(
                "predicting from an ONNX bundle needs onnxruntime: pip install facekit (or pip install onnxruntime)"
            ) from None
        available = onnxruntime.get_available_providers()
        if device == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
        elif device == "auto":
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        elif device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise UsageError(
                    f"--device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu), or use --device cpu"
                )
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            raise UsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(bundle.model_file), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UsageError(f"{bundle.model_file} is not a model onnxruntime can load ({first[:200]}): {AGAIN}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def check(self) -> None:
        inputs = self.session.get_inputs()
        size = self.bundle.input_size
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(uint8)":
            raise self._mismatch(f"its input is not one uint8 tensor named {INPUT_NAME!r}")
        if list(inputs[0].shape[1:]) != [size, size, 3]:
            shape = "x".join(str(d) for d in inputs[0].shape[1:])
            raise self._mismatch(f"it takes {shape} images, preprocessing.json says {size}x{size}x3")
        missing = [name for name in self.bundle.outputs if name not in self.output_names]
        if missing:
            raise self._mismatch(f"it has no output {missing[0]!r}")
        width = self.session.get_outputs()[self.output_names.index("logits")].shape[-1]
        if isinstance(width, int) and width != len(self.bundle.classes):
            raise self._mismatch(f"{width} logits per image for the {len(self.bundle.classes)} classes in classes.json")

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})
        return dict(zip(self.output_names, values))


class TorchScriptRunner(Runner):
    """A TorchScript bundle: needs torch (any recent version; the bundle records the one that made it)."""

    def __init__(self, bundle: Bundle, device: str = "auto"):
        super().__init__(bundle, device)
        try:
            import torch
        except ImportError:
            raise FacekitError(
                f"{bundle.path} is a TorchScript bundle, which needs PyTorch: install it, or export the run "
                "with --format onnx to predict without it"
            ) from None
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device here; use --device cpu")
        self.torch_device = torch.device(device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice: the bundle still loads
                self.module = torch.jit.load(str(bundle.model_file), map_location=self.torch_device).eval()
        except Exception as exc:  # noqa: BLE001 - a damaged archive raises several types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UsageError(f"{bundle.model_file} is not a TorchScript model ({first[:200]}): {AGAIN}") from None

    def check(self) -> None:
        size = self.bundle.input_size
        try:
            outputs = self(np.zeros((1, size, size, 3), dtype=np.uint8))
        except Exception as exc:  # noqa: BLE001 - what a traced graph raises on the wrong shape varies
            raise self._mismatch(f"it does not take {size}x{size}x3 images: {exc.__class__.__name__}") from None
        if outputs["logits"].shape[-1] != len(self.bundle.classes):
            raise self._mismatch(
                f"{outputs['logits'].shape[-1]} logits per image for the {len(self.bundle.classes)} classes in classes.json"
            )

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            out = self.module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).to(self.torch_device))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {name: value.float().cpu().numpy() for name, value in zip(self.bundle.outputs, out)}

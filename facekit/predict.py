"""Who is in new images: a trained run's top-k identities, and for open-set runs "unknown" below its threshold.

A run folder or a bundle made by ``facekit export`` (:mod:`facekit.bundle`): the same decisions,
from the same pixels. Importing this module does not import torch, and predicting from an ONNX
bundle never does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from facekit.bundle import is_bundle, open_bundle
from facekit.errors import UsageError
from facekit.inference import readable_images
from facekit.runs import Run


NO_OPENSET_NOTE = (
    "{run} has no open-set data, so every face is named as one of its identities (no rejection of strangers): "
    "train with --unknown-identities or --strangers to calibrate a threshold, or give --threshold"
)


def predict(
    run_dir: Path, inputs: list[Path], *, top_k: int = 5, device: str = "auto", batch_size: int = 32,
    threshold: float | None = None, notes: list[str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One entry per image: ``file``, then :func:`facekit.openset.decide`'s ``identity`` (a name,
    or ``"unknown"`` below the threshold), ``accepted``, ``score``, ``score_name``, ``threshold``
    and ``top`` (the ``top_k`` identities: name, id, probability).

    ``run_dir`` is a run folder or a bundle (same output). ``threshold`` overrides the run's
    calibrated one. A run without open-set data accepts every image (as closed-set
    classification does) unless ``threshold`` is given; ``notes`` (when given) receives a line
    saying so.
    """
    from facekit.openset import OpenSet, decide, decision_score

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {top_k})")
    if threshold is not None and not math.isfinite(threshold):
        raise UsageError(f"--threshold must be a finite number (got {threshold})")
    if is_bundle(run_dir):
        source: Any = open_bundle(run_dir)
    elif (Path(run_dir) / "config.json").is_file():
        source = Run.open(run_dir)
    else:
        raise UsageError(
            f"{run_dir} is not a facekit run or bundle (no config.json, no bundle.json): "
            "pass a folder made by `facekit train` or `facekit export`"
        )
    data = OpenSet.read(source.path)
    files = readable_images(inputs)
    if data is None and notes is not None and threshold is None:
        notes.append(NO_OPENSET_NOTE.format(run=source.path))
    needs_embeddings = data is not None and decision_score(data) == "centroid"
    if isinstance(source, Run):
        logits, embeddings = _infer_run(source, files, device=device, batch_size=batch_size, with_embeddings=needs_embeddings)
    else:
        logits, embeddings = source.infer(files, device=device, batch_size=batch_size, with_embeddings=needs_embeddings)
    decisions = decide(logits, source.classes, embeddings=embeddings, openset=data, threshold=threshold, top_k=top_k)
    return [{"file": str(file)} | decision for file, decision in zip(files, decisions)]


def _infer_run(run: Run, files: list[Path], *, device: str, batch_size: int, with_embeddings: bool) -> tuple[Any, Any]:
    from facekit.devices import resolve_device
    from facekit.openset_training import infer

    torch_device = resolve_device(device)
    model = run.load_model().to(torch_device)
    # The torch loader, whatever the run trained with: a few images need no DALI, and its pixels
    # are the ones an exported bundle reproduces exactly (facekit.imaging), so `facekit predict`
    # gives the same numbers for a run and for its bundle.
    return infer(run, model, [str(f) for f in files], device=torch_device, batch_size=batch_size,
                 with_embeddings=with_embeddings, backend="torch")  # fmt: skip

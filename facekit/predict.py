"""Who is in new images: a trained run's top-k identities, and for open-set runs "unknown" below its threshold."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from facekit.errors import UsageError
from facekit.inference import readable_images
from facekit.runs import Run


NO_OPENSET_NOTE = (
    "{run} has no open-set data, so every face is named as one of its identities (no rejection of strangers): "
    "train with --unknown-identities or --strangers to calibrate a threshold, or give --threshold"
)


@torch.no_grad()
def predict(
    run_dir: Path, inputs: list[Path], *, top_k: int = 5, device: str = "auto", batch_size: int = 32,
    threshold: float | None = None, notes: list[str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One entry per image: ``file``, then :func:`facekit.openset.decide`'s ``identity`` (a name,
    or ``"unknown"`` below the threshold), ``accepted``, ``score``, ``score_name``, ``threshold``
    and ``top`` (the ``top_k`` identities: name, id, probability).

    ``threshold`` overrides the run's calibrated one. A run without open-set data accepts every
    image (as closed-set classification does) unless ``threshold`` is given; ``notes`` (when
    given) receives a line saying so.
    """
    from facekit.devices import resolve_device
    from facekit.openset import OpenSet, decide, decision_score
    from facekit.openset_training import infer

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {top_k})")
    if threshold is not None and not math.isfinite(threshold):
        raise UsageError(f"--threshold must be a finite number (got {threshold})")
    run = Run.open(run_dir)
    data = OpenSet.read(run.path)
    files = readable_images(inputs)
    if data is None and notes is not None and threshold is None:
        notes.append(NO_OPENSET_NOTE.format(run=run.path))
    torch_device = resolve_device(device)
    model = run.load_model().to(torch_device)
    needs_embeddings = data is not None and decision_score(data) == "centroid"
    logits, embeddings = infer(run, model, [str(f) for f in files], device=torch_device, batch_size=batch_size,
                               with_embeddings=needs_embeddings)  # fmt: skip
    decisions = decide(logits, run.classes, embeddings=embeddings, openset=data, threshold=threshold, top_k=top_k)
    return [{"file": str(file)} | decision for file, decision in zip(files, decisions)]

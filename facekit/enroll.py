"""Enrollment without retraining: add people to a run's gallery of embeddings, or remove them.

An enrolled person is the mean unit-length embedding of their photos, stored in the run's
``gallery.npz`` beside the class centroids. ``facekit predict`` then names them by cosine
similarity to the gallery, at the run's calibrated ``centroid`` threshold, so strangers are
still rejected (docs/openset.md, "Enrollment").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facekit import openset
from facekit.errors import UsageError


def _gallery_run(run_dir: Path) -> tuple[Any, openset.OpenSet]:
    from facekit.runs import Run

    run = Run.open(run_dir)
    data = openset.OpenSet.read(run.path)
    if data is None or data.gallery is None or "centroid" not in data.calibration:
        raise UsageError(
            f"{run.path} has no gallery of embeddings to enroll people in: train the run with --unknown-identities "
            "or --strangers (enrollment uses its calibrated centroid threshold), on an architecture that gives embeddings"
        )
    return run, data


def enroll(run_dir: Path, folder: Path, *, device: str = "auto") -> list[dict[str, Any]]:
    """Add every sub-folder of ``folder`` (one person each, a few photos) to the run's gallery.

    Returns one entry per person: ``name`` and ``images``. A name already in the gallery (a
    trained identity or an enrolled person) or an unreadable photo is refused before anything
    is written.
    """
    from facekit.data.index import scan_dataset
    from facekit.devices import resolve_device
    from facekit.openset_training import infer
    from facekit.runs import RunWriter

    run, data = _gallery_run(run_dir)
    folder = Path(folder)
    index = scan_dataset(folder)
    if index.bad:
        bad = index.bad[0]
        raise UsageError(f"{folder / bad.path} cannot be enrolled ({bad.reason}): remove or replace it ({len(index.bad)} bad file(s) in all)")
    if not index.files:
        raise UsageError(f"{folder} holds no photos to enroll: give a folder with one sub-folder of photos per person")
    taken = [name for name in index.classes if name in data.gallery.names]
    if taken:
        kind = "a trained identity" if taken[0] in run.classes else "already enrolled"
        raise UsageError(
            f"{taken[0]} is {kind} in {run.path}: rename the folder {folder / taken[0]}"
            + ("" if kind == "a trained identity" else f", or remove it first with `facekit enroll {run.path} --remove {taken[0]}`")
        )
    torch_device = resolve_device(device)
    model = run.load_model(device=torch_device)
    _, embeddings = infer(run, model, index.paths(), device=torch_device)
    if embeddings is None:
        raise UsageError(f"architecture {run.config['arch']!r} of {run.path} gives no embeddings to enroll people with")
    centroids = openset.class_centroids(embeddings, index.labels, len(index.classes))
    images = np.bincount(index.labels, minlength=len(index.classes))
    gallery = data.gallery.with_people(index.classes, centroids, images.tolist())
    with RunWriter.open(run.path) as writer:  # the run's lock: never beside a training of it
        writer.write_gallery(gallery.to_bytes())
    return [{"name": name, "images": int(n)} for name, n in zip(index.classes, images)]


def remove(run_dir: Path, name: str) -> None:
    """Take an enrolled person out of the run's gallery (trained identities stay: they are the model's)."""
    from facekit.runs import RunWriter

    run, data = _gallery_run(run_dir)
    if name in run.classes:
        raise UsageError(f"--remove {name}: {name} is a trained identity of {run.path}, not an enrolled person; only enrolled people can be removed")
    if name not in data.gallery.enrolled:
        enrolled = ", ".join(data.gallery.enrolled[:5]) or "nobody yet"
        raise UsageError(f"--remove {name}: nobody of that name is enrolled in {run.path} (enrolled: {enrolled})")
    with RunWriter.open(run.path) as writer:
        writer.write_gallery(data.gallery.without(name).to_bytes())

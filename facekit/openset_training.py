"""Open-set evaluation of a training run: unknown people held out or given, a calibrated threshold.

Before training, :func:`hold_out_identities` takes ``--unknown-identities`` of the data set's
people out of it (they never train) and :func:`split_strangers` reads ``--strangers``; both
split their people in two halves, never sharing a person: calibration unknowns and test
unknowns. Their files are recorded in ``split.json`` under ``"openset"``.

After training, :func:`evaluate_openset` runs the kept model over the kept fold's training
images (the class centroids of the gallery), its validation images (the known side of the
calibration), the unknown images and the test split, calibrates one threshold per score at
``--target-fpir`` on the validation knowns against the calibration unknowns, and writes
``openset.json``, ``gallery.npz`` and ``openset_test.npz`` (the test scores that
``facekit report`` summarizes; see :mod:`facekit.openset` for the figures).
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekit import openset
from facekit.errors import FacekitError, UsageError

OPENSET_TEST_FILE = "openset_test.npz"
# The score a run rejects by when it has several: the first available of these. The order is
# what docs/openset.md measured on real faces ("Which score rejects best").
SCORE_PREFERENCE = ("centroid", "margin", "softmax")
MIN_UNKNOWN_PEOPLE = 2  # one half calibrates the threshold, the other tests it


def _halves(people: Sequence[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """The people shuffled and cut in two: the larger half calibrates, the rest tests."""
    order = [people[i] for i in rng.permutation(len(people))]
    cut = math.ceil(len(order) / 2)
    return sorted(order[:cut]), sorted(order[cut:])


def check_openset_score(config: Any, arch: Any, loss: Any) -> None:
    """Refuse, before anything is written, ``--openset-score`` that the run could never give, or open-set
    options on a run without unknown people."""
    wanted = config.openset_score
    if wanted == "auto":
        return
    if not (config.unknown_identities or config.strangers):
        raise UsageError(f"--openset-score {wanted}: a run rejects only with unknown people to calibrate on; "
                         "give --unknown-identities or --strangers")  # fmt: skip
    if wanted == "centroid" and arch.classifier is None:
        raise UsageError(f"--openset-score centroid: architecture {arch.name!r} gives no embeddings; use softmax or auto")
    if wanted == "margin" and getattr(loss, "head", None) is None:
        raise UsageError(f"--openset-score margin: loss {loss.name!r} brings no cosine head; train with --loss arcface "
                         "or cosface, or use softmax or auto")  # fmt: skip


def hold_out_identities(index: Any, fraction: float, seed: int) -> tuple[Any, dict[str, Any] | None]:
    """``index`` without ``fraction`` of its identities (seeded), and what was held out (None for 0).

    The held-out people's images are unknown probes: half of the people calibrate the
    rejection threshold, the other half test it.
    """
    if not fraction:
        return index, None
    classes = list(index.classes)
    held = int(round(fraction * len(classes)))
    option = f"--unknown-identities {fraction:g}"
    if held < MIN_UNKNOWN_PEOPLE:
        raise UsageError(
            f"{option} holds out {held} of the {len(classes)} identities of {index.root}: at least "
            f"{MIN_UNKNOWN_PEOPLE} are needed (half calibrate the threshold, half test it); give a larger fraction"
        )
    if len(classes) - held < 2:
        raise UsageError(
            f"{option} leaves {len(classes) - held} of the {len(classes)} identities of {index.root} to train on: "
            "a classifier needs at least 2; give a smaller fraction"
        )
    rng = np.random.default_rng(seed)
    unknown = sorted(classes[i] for i in rng.choice(len(classes), held, replace=False))
    calibration, test = _halves(unknown, rng)
    known = [name for name in classes if name not in set(unknown)]
    new_id = {classes.index(name): i for i, name in enumerate(known)}
    keep = np.array([int(label) in new_id for label in index.labels], dtype=bool)
    files = [f for f, k in zip(index.files, keep) if k]
    labels = np.array([new_id[int(label)] for label in index.labels[keep]], dtype=np.int64)
    by_person = {name: [f for f, label in zip(index.files, index.labels) if classes[int(label)] == name] for name in unknown}
    held_out = {
        "fraction": float(fraction),
        "identities": unknown,
        "calibration": [f for name in calibration for f in by_person[name]],
        "test": [f for name in test for f in by_person[name]],
    }
    return dataclasses.replace(index, classes=known, files=files, labels=labels), held_out


def split_strangers(folder: Path, known_classes: Sequence[str], seed: int) -> dict[str, Any]:
    """The people of ``--strangers DIR`` in two halves (calibration, test), checked against the known identities."""
    from facekit.data.index import scan_dataset

    folder = Path(folder)
    try:
        index = scan_dataset(folder)
    except UsageError as exc:
        raise UsageError(f"--strangers {folder}: {exc}") from None
    if not index.files:
        raise UsageError(
            f"--strangers {folder} holds no usable image: give a folder with one sub-folder of images per person"
        )
    if len(index.classes) < MIN_UNKNOWN_PEOPLE:
        raise UsageError(
            f"--strangers {folder} holds images of {len(index.classes)} person: at least {MIN_UNKNOWN_PEOPLE} are "
            "needed (half calibrate the threshold, half test it)"
        )
    shared = sorted(set(index.classes) & set(known_classes))
    if shared:
        raise UsageError(
            f"--strangers {folder}: {shared[0]} is also an identity the model trains on "
            f"({len(shared)} in all); strangers must be other people"
        )
    calibration, test = _halves(index.classes, np.random.default_rng([seed, 1]))
    by_person: dict[str, list[str]] = {}
    for f, label in zip(index.files, index.labels):
        by_person.setdefault(index.classes[int(label)], []).append(f)
    return {
        "root": str(index.root),
        "people": len(index.classes),
        "calibration": [f for name in calibration for f in by_person[name]],
        "test": [f for name in test for f in by_person[name]],
    }


def openset_setup(index: Any, *, fraction: float, strangers: Path | None, seed: int) -> tuple[Any, dict[str, Any] | None]:
    """The known identities' index and split.json's ``"openset"`` entry (None without unknown people)."""
    index, held_out = hold_out_identities(index, fraction, seed)
    given = split_strangers(strangers, index.classes, seed) if strangers is not None else None
    if held_out is None and given is None:
        return index, None
    return index, {"held_out": held_out, "strangers": given}


def unknown_files(split: dict[str, Any], part: str) -> list[str]:
    """Absolute paths of the unknown images of ``part`` ("calibration" or "test") of a run's split."""
    entry = split.get("openset") or {}
    files: list[str] = []
    if entry.get("held_out"):
        files += [str(Path(split["root"]) / f) for f in entry["held_out"][part]]
    if entry.get("strangers"):
        files += [str(Path(entry["strangers"]["root"]) / f) for f in entry["strangers"][part]]
    return files


# ----------------------------------------------------------------------------- inference
def embedding_network(model: Any, arch_name: str) -> Any | None:
    """The model as a network that returns (logits, embedding), or None where its architecture names no classifier."""
    from facekit.heads import embedding_model
    from facekit.errors import FacekitError
    from facekit.plugins import architectures

    try:
        return embedding_model(model, architectures().get(arch_name)).eval()
    except FacekitError:  # a plugin architecture without embeddings: the softmax score still works
        return None


def infer(run: Any, model: Any, paths: Sequence[str], *, device: Any, batch_size: int = 64,
          with_embeddings: bool = True, backend: str = "auto") -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """Logits (N x C) and embeddings (N x D, or None) of ``paths`` through ``model`` with the run's preprocessing
    (``backend``: the loader, see :func:`facekit.inference.run_loader`)."""
    import torch

    from facekit.inference import run_loader

    network = embedding_network(model, run.config["arch"]) if with_embeddings else None
    if not paths:
        return np.zeros((0, len(run.classes)), np.float32), (np.zeros((0, 0), np.float32) if network else None)
    loader = run_loader(run, paths, device=device, batch_size=batch_size, backend=backend)
    logits, embeddings = [], []
    try:
        with torch.no_grad():
            for images, _ in loader:
                images = images.to(device)
                if network is None:
                    logits.append(model(images).float().cpu())
                else:
                    batch_logits, batch_embeddings = network(images)
                    logits.append(batch_logits.float().cpu())
                    embeddings.append(batch_embeddings.float().cpu())
    finally:
        loader.close()
    logits = torch.cat(logits)
    if not bool(torch.isfinite(logits).all()):  # NaN scores would name identities at random, exit 0
        raise FacekitError(f"the model of {run.path} gives scores that are not numbers (NaN): its checkpoint is damaged")
    return logits.numpy(), (torch.cat(embeddings).numpy() if embeddings else None)


# ---------------------------------------------------------------------------- evaluation
@dataclasses.dataclass
class _Probes:
    """One set of images run through the model: logits, embeddings and (knowns) labels."""

    logits: np.ndarray
    embeddings: np.ndarray | None
    labels: np.ndarray | None = None

    def scores(self, score: str, gallery: openset.Gallery | None, logit_scale: float | None) -> tuple[np.ndarray, np.ndarray | None]:
        values, best = openset.probe_scores(score, self.logits, self.embeddings, gallery, logit_scale)
        if self.labels is None:
            return values, None
        predicted = gallery.class_ids[best] if score in openset.GALLERY_SCORES else best
        return values, predicted == self.labels


def head_logit_scale(model: Any, arch_name: str) -> float | None:
    """The scale ``s`` of a cosine head (margin-loss runs: logits = s * cos), or None for an ordinary classifier."""
    from facekit.heads import classifier_of
    from facekit.errors import FacekitError
    from facekit.plugins import architectures

    try:
        head = classifier_of(model, architectures().get(arch_name))
    except FacekitError:
        return None
    scale = getattr(head, "logit_scale", None)
    return float(scale) if isinstance(scale, (int, float)) and scale > 0 else None


def one_photo_gallery(train: _Probes) -> openset.Gallery:
    """Each class as if enrolled from one photo: its first training image's embedding (a zero row for a class with none)."""
    classes = int(train.logits.shape[1])
    first = np.full(classes, -1)
    for position in range(len(train.labels) - 1, -1, -1):
        first[train.labels[position]] = position
    embeddings = np.zeros((classes, train.embeddings.shape[1]), dtype=np.float32)
    embeddings[first >= 0] = openset.l2_normalize(train.embeddings[first[first >= 0]])
    return openset.Gallery([str(c) for c in range(classes)], embeddings, np.arange(classes), (first >= 0).astype(np.int64))


def available_scores(embeddings: bool, logit_scale: float | None) -> list[str]:
    return [s for s in SCORE_PREFERENCE if s == "softmax" or (s == "centroid" and embeddings) or (s == "margin" and logit_scale)]


def evaluate_openset(run: Any, *, device: Any, target_fpir: float, score: str = "auto", progress: Any = None,
                     writer: Any = None) -> openset.OpenSet:  # fmt: skip
    """Calibrate the kept model's rejection thresholds and score the test split; writes the run's open-set files."""
    split = run.split
    root = Path(split["root"])
    files = [str(root / f) for f in split["files"]]
    labels = np.asarray(split["labels"], dtype=np.int64)
    fold = split["folds"][run.kept_fold]
    model = run.load_model(device=device)
    logit_scale = head_logit_scale(model, run.config["arch"])

    def knowns(indices: Sequence[int]) -> _Probes:
        idx = np.asarray(indices, dtype=int)
        logits, embeddings = infer(run, model, [files[i] for i in idx], device=device)
        return _Probes(logits, embeddings, labels[idx])

    def unknowns(part: str) -> _Probes:
        return _Probes(*infer(run, model, unknown_files(split, part), device=device))

    say = progress.message if progress is not None else (lambda text: None)
    say("open-set: scoring the validation, unknown and test images")
    calibration_known, calibration_unknown = knowns(fold["val"]), unknowns("calibration")
    test_known, test_unknown = knowns(split["test"]), unknowns("test")
    gallery = saved_gallery = None
    if test_known.embeddings is not None:
        train = knowns(fold["train"])
        centroids = openset.class_centroids(train.embeddings, train.labels, len(run.classes))
        gallery = openset.Gallery(
            list(run.classes), centroids.astype(np.float32), np.arange(len(run.classes), dtype=np.int64),
            np.bincount(train.labels, minlength=len(run.classes)).astype(np.int64),
        )
        # Calibrated and tested on the classes alone; a resumed finished run keeps the people enrolled in it.
        saved_gallery = gallery
        previous = openset.OpenSet.read(run.path)
        if previous is not None and previous.gallery is not None and previous.gallery.enrolled:
            kept = previous.gallery.class_ids < 0
            saved_gallery = gallery.with_people(
                [n for n, k in zip(previous.gallery.names, kept) if k], previous.gallery.embeddings[kept],
                previous.gallery.images[kept].tolist(),
            )  # fmt: skip
    scores = available_scores(gallery is not None, logit_scale)
    if score != "auto" and score not in scores:
        raise UsageError(f"--openset-score {score}: this run cannot score by it (it can by {', '.join(scores)})")
    chosen = scores[0] if score == "auto" else score
    calibration: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    for name in scores:
        known_values, known_correct = calibration_known.scores(name, gallery, logit_scale)
        unknown_values, _ = calibration_unknown.scores(name, gallery, logit_scale)
        calibration[name] = openset.calibrate_threshold(
            known_values, unknown_values, target_fpir, known_correct=known_correct, score=name
        ).to_dict()
        test_values, test_correct = test_known.scores(name, gallery, logit_scale)
        arrays[f"{name}_known"] = test_values.astype(np.float64)
        arrays[f"{name}_correct"] = test_correct
        arrays[f"{name}_unknown"] = test_unknown.scores(name, gallery, logit_scale)[0].astype(np.float64)
    if gallery is not None:
        # People enrolled later have a photo or two, not a class's mean: their cosines run lower, so they
        # get a threshold of their own, calibrated as if every class were enrolled from one training photo.
        one_photo = one_photo_gallery(train)
        known_values, known_correct = calibration_known.scores("centroid", one_photo, None)
        calibration[openset.ENROLLED] = openset.calibrate_threshold(
            known_values, calibration_unknown.scores("centroid", one_photo, None)[0], target_fpir,
            known_correct=known_correct, score=openset.ENROLLED,
        ).to_dict()  # fmt: skip
        test_values, test_correct = test_known.scores("centroid", one_photo, None)
        arrays[f"{openset.ENROLLED}_known"], arrays[f"{openset.ENROLLED}_correct"] = test_values, test_correct
        arrays[f"{openset.ENROLLED}_unknown"] = test_unknown.scores("centroid", one_photo, None)[0]
    if test_known.embeddings is not None and len(test_known.labels):
        arrays["genuine"], arrays["impostor"] = openset.pair_scores(test_known.embeddings, test_known.labels, seed=0)
    data = openset.OpenSet(
        score=chosen, target_fpir=float(target_fpir), calibration=calibration, logit_scale=logit_scale, gallery=saved_gallery,
        extra={"scores": scores},
    )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    if writer is not None:
        writer.write_openset(data.to_json(), saved_gallery.to_bytes() if saved_gallery is not None else None, buffer.getvalue())
    cal = calibration[chosen]
    say(
        f"open-set: rejects below {chosen} score {cal['threshold']:.4f} (calibrated at FPIR {target_fpir:g} on "
        f"{cal['known']} validation and {cal['unknown']} unknown images: FPIR {cal['fpir']:.3f}, FNIR {cal['fnir']:.3f})"
    )
    if cal["note"]:
        say(f"open-set: {cal['note']}")
    return data


# ---------------------------------------------------------------------------- the report
def read_test_scores(folder: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a run's ``openset_test.npz``, or None when it has none."""
    import zipfile

    from facekit.errors import FacekitError

    file = Path(folder) / OPENSET_TEST_FILE
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FacekitError(f"{file} is damaged ({exc.__class__.__name__}: {exc}): rerun the training to rewrite it") from None


def openset_summary(folder: Path) -> dict[str, Any] | None:
    """The open-set figures of a run's test split, per score (None for a closed-set run).

    ``{"score": default, "target_fpir", "scores": {name: openset.openset_metrics(...) | {"calibration": ...}}}``;
    TAR at FAR (pairs of known test images, by embedding cosine) is under every score where
    the run has embeddings.
    """
    data = openset.OpenSet.read(folder)
    arrays = read_test_scores(folder)
    if data is None or arrays is None:
        return None
    per_score = {}
    for name, calibration in data.calibration.items():
        if f"{name}_known" not in arrays:
            continue
        per_score[name] = openset.openset_metrics(
            arrays[f"{name}_known"], arrays[f"{name}_correct"], arrays[f"{name}_unknown"],
            threshold=float(calibration["threshold"]), genuine=arrays.get("genuine"), impostor=arrays.get("impostor"),
        ) | {"calibration": calibration}  # fmt: skip
    return {"score": data.score, "target_fpir": data.target_fpir, "scores": per_score}

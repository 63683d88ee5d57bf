"""Open-set identification, measured: known people named, strangers rejected, at a threshold set as a user would.

One run compares, on the same split and the same strangers:

- **face_recognition's recipe** (the anchor): dlib's face network, frozen, each probe named after
  its nearest gallery image by euclidean distance, accepted within the library's default
  tolerance 0.6; and the same with the tolerance calibrated on validation data;
- **centroid cosine** of the same frozen network: cosine to each identity's mean embedding (what
  a careful user writes next), threshold calibrated on validation data;
- **facekit's recipes**: the head of ``dlib-resnet`` trained with each loss (plain, weighted,
  arcface, cosface) on the frozen network's embeddings (what ``facekit train --arch dlib-resnet``
  trains without ``--finetune``, on embeddings computed once); ``facekit train`` runs of
  dlib-resnet fine-tuned with each loss (``--epochs N``, N > 0) and of the study's baseline CNN
  (briefly). Each is judged by every rejection score it has (max softmax, cosine to the class
  centroid, the margin head's cosine) and by the one its validation data prefers.

Protocol: the known data (aligned lfw_min8) is split by facekit's stratified holdout split
(``--test-size 0.25``, ``--val-size 0.1``, seed 42): the test quarter are the known probes, the
training part (less validation) is the gallery (face_recognition's known encodings, the
centroids), and the validation images calibrate every threshold at ``--target-fpir``. The
validation images of a person stand in for strangers by being scored against everyone *but*
that person (the gallery without them; the softmax renormalized without their class): a user has
no strangers' photos, and the strangers here are never used to pick a threshold. The strangers
(lfw_strangers: LFW people not in lfw_min8) are the unknown probes. Reported per row, on the
test quarter and the strangers: rank-1 (closed set), FNIR at the calibrated threshold (a known
probe rejected or misnamed) and the FPIR it actually reaches on the strangers, and, for reference
only, FNIR at FPIR 0.01 with the threshold picked on the strangers themselves (an oracle).

Metrics come from :mod:`facekit.openset` (the functions ``facekit report`` uses).

    python -m benchmarks.openset --data ../shared/data/lfw_min8 --strangers ../shared/data/lfw_strangers \\
        --work ~/.cache/facekit-openset --out results/openset.json --plot docs/img/openset_det.png
    python -m benchmarks.openset --quick --out /tmp/openset.json      # toy size, for tests

The data are aligned with ``facekit align`` (the dlib plugin) into ``--work`` first unless
``--aligned-data`` / ``--aligned-strangers`` point at aligned copies; finished training runs in
``--work/runs`` are reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.environment import describe_environment, load_average, markdown_table
from facekit import openset
from facekit.data.index import index_dataset
from facekit.files import write_json

TOLERANCE = 0.6  # face_recognition.compare_faces's default


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A ``facekit train`` run of the benchmark: its name and the options that differ."""

    name: str
    arch: str
    loss: str = "plain"
    args: tuple[str, ...] = ()


LOSSES = (("plain", ()), ("weighted", ()), ("arcface", ("s=32", "m=0.3")), ("cosface", ("s=32", "m=0.25")))


def full_recipes(finetune_epochs: int, baseline_epochs: int) -> list[Recipe]:
    """dlib-resnet fine-tuned with each loss (none when ``finetune_epochs`` is 0), and the study's baseline CNN."""
    recipes = []
    for loss, options in LOSSES if finetune_epochs > 0 else ():
        args = ("--finetune", "--epochs", str(finetune_epochs)) + tuple(a for o in options for a in ("--loss-option", o))
        recipes.append(Recipe(f"dlib-resnet fine-tuned, {loss}", "dlib-resnet", loss, args))
    if baseline_epochs > 0:
        recipes.append(Recipe("baseline CNN, plain", "baseline", "plain", ("--epochs", str(baseline_epochs), "--input-size", "112", "--lr", "1e-3")))
    return recipes


@dataclasses.dataclass(frozen=True)
class HeadRecipe:
    """The head of architecture ``arch`` with ``loss`` trained on the frozen network's embeddings (the backbone frozen)."""

    name: str
    arch: str
    loss: str
    options: tuple[str, ...] = ()
    epochs: int = 10


def quick_recipes() -> list[Recipe]:
    small = ("--epochs", "3", "--input-size", "48", "--lr", "1e-3")
    return [
        Recipe("baseline, plain", "baseline", "plain", small),
        Recipe("baseline, arcface", "baseline", "arcface", small + ("--loss-option", "s=16", "--loss-option", "m=0.2")),
    ]


# ------------------------------------------------------------------------------- data
def aligned(source: Path, given: Path | None, work: Path, threads: int) -> Path:
    """The aligned copy of ``source``: ``given``, or one made in ``work`` with ``facekit align`` (kept for the next run)."""
    if given is not None:
        if not given.is_dir():
            raise SystemExit(f"--aligned-data/--aligned-strangers {given}: no such folder")
        return given
    target = work / f"aligned-{source.name}"
    done = target / ".complete"
    if not done.is_file():
        print(f"aligning {source} into {target} (facekit align, once)", flush=True)
        command = [sys.executable, "-m", "facekit", "align", str(source), str(target), "--workers", str(threads)]
        subprocess.run(command, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        done.write_text("")
    return target


@dataclasses.dataclass
class Split:
    """The known data's files and labels, its split, and the strangers' files."""

    root: Path
    files: list[str]
    labels: np.ndarray
    classes: list[str]
    gallery: np.ndarray  # training indices (less validation)
    val: np.ndarray
    test: np.ndarray
    strangers: list[str]

    def paths(self, indices: np.ndarray) -> list[str]:
        return [str(self.root / self.files[i]) for i in indices]


def make_split(known: Path, strangers: Path, seed: int, test_size: float, val_size: float) -> Split:
    from facekit.plugins import splits
    from facekit.specs import SplitOptions

    index = index_dataset(known)
    plan = splits().get("holdout").split(index.labels, SplitOptions(seed=seed, test_size=test_size, val_size=val_size))
    fold = plan.folds[0]
    stranger_index = index_dataset(strangers)
    return Split(
        root=Path(known), files=list(index.files), labels=np.asarray(index.labels, dtype=np.int64), classes=list(index.classes),
        gallery=np.asarray(fold.train), val=np.asarray(fold.val), test=np.asarray(plan.test),
        strangers=[str(Path(strangers) / f) for f in stranger_index.files],
    )  # fmt: skip


# ------------------------------------------------------------------------------ scores
@dataclasses.dataclass
class Scores:
    """One way of scoring probes: validation (known and stand-in stranger), test and stranger scores, and right top-1s."""

    val_known: np.ndarray
    val_correct: np.ndarray
    val_unknown: np.ndarray
    test: np.ndarray
    test_correct: np.ndarray
    strangers: np.ndarray


def _nearest(scores: np.ndarray, labels: np.ndarray | None = None, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best score per row and its column; ``exclude[i]``: the class whose columns row i may not use (``labels`` of the columns)."""
    if exclude is not None:
        columns = labels if labels is not None else np.arange(scores.shape[1])
        scores = np.where(columns[None, :] == exclude[:, None], -np.inf, scores)
    best = scores.argmax(1)
    return scores[np.arange(len(scores)), best], best


def similarity_scores(gallery: np.ndarray, gallery_labels: np.ndarray, probes: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                      measure: str) -> Scores:  # fmt: skip
    """Scores against gallery entries (``euclidean``: minus the distance; ``cosine``), each named by its nearest entry."""

    def similarity(x: np.ndarray) -> np.ndarray:
        if measure == "euclidean":
            squared = (x * x).sum(1)[:, None] + (gallery * gallery).sum(1)[None, :] - 2 * x @ gallery.T
            return -np.sqrt(np.maximum(squared, 0.0))
        return openset.l2_normalize(x) @ openset.l2_normalize(gallery).T

    val = similarity(probes["val"])
    known, best = _nearest(val)
    unknown, _ = _nearest(val, gallery_labels, exclude=labels["val"])
    test_known, test_best = _nearest(similarity(probes["test"]))
    strangers, _ = _nearest(similarity(probes["strangers"]))
    return Scores(known, gallery_labels[best] == labels["val"], unknown, test_known, gallery_labels[test_best] == labels["test"], strangers)


def softmax_scores(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], scale: float | None = None) -> Scores:
    """Max softmax (``scale`` None) or max logit / scale (a margin head's top-1 cosine); the stand-in strangers without their class."""

    def score(z: np.ndarray) -> np.ndarray:
        return openset.softmax(z) if scale is None else np.asarray(z, dtype=np.float64) / scale

    val = score(logits["val"])
    known, best = _nearest(val)
    unknown, _ = _nearest(val, exclude=labels["val"])
    if scale is None:  # the softmax renormalized over the other classes: as if the person were not known
        own = val[np.arange(len(val)), labels["val"]]
        unknown = unknown / np.maximum(1.0 - own, 1e-300)
    test_known, test_best = _nearest(score(logits["test"]))
    strangers, _ = _nearest(score(logits["strangers"]))
    return Scores(known, best == labels["val"], unknown, test_known, test_best == labels["test"], strangers)


def judge(scores: Scores, target_fpir: float, threshold: float | None = None) -> dict[str, Any]:
    """Calibrate on validation (unless ``threshold`` is given), then the rates on the test quarter and the strangers."""
    calibration = None
    if threshold is None:
        calibration = openset.calibrate_threshold(
            scores.val_known, scores.val_unknown, target_fpir, known_correct=scores.val_correct
        )
        threshold = calibration.threshold
    fpir, fnir = openset.rates_at(threshold, scores.test, scores.strangers, scores.test_correct)
    return {
        "threshold": float(threshold),
        "rank1": float(np.mean(scores.test_correct)),
        "fnir": fnir,
        "fpir_strangers": fpir,
        "val_fnir": None if calibration is None else calibration.fnir,
        "val_fpir": None if calibration is None else calibration.fpir,
        "oracle_fnir_at_fpir": openset.fnir_at_fpir(scores.test, scores.test_correct, scores.strangers, target_fpir),
    }


# ----------------------------------------------------------------------------- networks
def frozen_embeddings(arch: str, split: Split, *, pretrained: bool, input_size: int | None, cache: Path) -> dict[str, np.ndarray]:
    """Gallery, validation, test and stranger embeddings of architecture ``arch`` as built (frozen), cached in ``cache``."""
    import torch

    from facekit.data.loaders import make_loader
    from facekit.factory import create_model
    from facekit.heads import embedding_model
    from facekit.plugins import architectures
    from facekit.specs import Normalization

    parts = {"gallery": split.paths(split.gallery), "val": split.paths(split.val), "test": split.paths(split.test),
             "strangers": split.strangers}  # fmt: skip
    key = f"{arch}-{input_size}-{pretrained}-{len(split.files)}-{len(split.strangers)}"
    path = cache / f"frozen-{key}.npz"
    if path.is_file():
        saved = np.load(path, allow_pickle=False)
        if all(name in saved for name in parts) and all(len(saved[name]) == len(files) for name, files in parts.items()):
            return {name: saved[name] for name in parts}
    spec = architectures().get(arch)
    size = input_size or spec.input_size
    torch.manual_seed(0)  # a network without pretrained weights (--quick) is the same in every run
    model = create_model(arch, num_classes=2, input_size=size, pretrained=pretrained).eval()
    network = embedding_model(model, spec).eval()
    norm = spec.normalization or Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = {}
    for name, files in parts.items():
        loader = make_loader(files, np.zeros(len(files), dtype=np.int64), batch_size=64, input_size=size, normalization=norm,
                             train=False, rotate=0.0, device=torch.device("cpu"), backend="torch", num_workers=0)  # fmt: skip
        rows = []
        try:
            with torch.no_grad():
                for images, _ in loader:
                    rows.append(network(images)[1].float())
        finally:
            loader.close()
        out[name] = torch.cat(rows).numpy()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def train_recipe(recipe: Recipe, data: Path, out: Path, *, seed: int, threads: int, test_size: float, val_size: float) -> dict[str, Any]:
    """``facekit train`` for one recipe (reused when ``out`` already holds a finished run); its wall seconds."""
    if (out / "predictions.npz").is_file():
        return {"seconds": None, "reused": True}
    command = [
        sys.executable, "-m", "facekit", "train", "--data", str(data), "--arch", recipe.arch, "--loss", recipe.loss,
        "--test-size", str(test_size), "--val-size", str(val_size), "--seed", str(seed), "--rotate", "0",
        "--threads", str(threads), "--loader", "torch", "--workers", "0", "--quiet", *recipe.args,
    ]  # fmt: skip
    command += ["--resume", str(out)] if (out / "config.json").is_file() else ["--out", str(out)]
    if "--resume" in command:  # a resume takes the run's own settings
        command = command[:4] + ["--threads", str(threads), "--quiet", "--resume", str(out)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise SystemExit(f"{recipe.name}: facekit train failed: {result.stderr.strip().splitlines()[-1:]}\n{' '.join(command)}")
    return {"seconds": time.perf_counter() - start, "reused": False, "command": " ".join(command[2:])}


def train_head(recipe: HeadRecipe, frozen: dict[str, np.ndarray], split: Split, *, seed: int, input_size: int | None, batch_size: int = 32,
               lr: float = 1e-4, weight_decay: float = 5e-3) -> tuple[dict[str, Scores], dict[str, Any]]:  # fmt: skip
    """What ``facekit train --arch ARCH --loss LOSS`` (backbone frozen, --rotate 0) trains, on cached embeddings.

    With the backbone frozen (and in eval mode, as the engine keeps it) training changes only
    the classifier, and the classifier sees only the embeddings: so the architecture's own
    classifier, or the loss's head in its place, built by facekit exactly as for a run, is
    trained here on the embeddings the frozen network gave once, with the engine's optimizer
    (Adam, --lr 1e-4, --weight-decay 5e-3), batch size and seed, keeping the epoch of lowest
    validation cross-entropy as the engine does. The loop is this benchmark's; no image passes
    through the backbone again.
    """
    import torch

    from facekit.factory import create_model
    from facekit.heads import classifier_of, logit_scale
    from facekit.plugins import architectures, losses

    start = time.perf_counter()
    torch.manual_seed(seed)
    classes = len(split.classes)
    spec = architectures().get(recipe.arch)
    loss_spec = losses().get(recipe.loss)
    options = loss_spec.resolve_options(list(recipe.options))
    model = create_model(recipe.arch, num_classes=classes, input_size=input_size, pretrained=False, loss=recipe.loss,
                         loss_options=options)  # fmt: skip
    head = classifier_of(model, spec)
    labels = {name: torch.as_tensor(split.labels[getattr(split, name)]) for name in ("gallery", "val", "test")}
    features = {name: torch.as_tensor(values, dtype=torch.float32) for name, values in frozen.items()}
    counts = np.bincount(split.labels[split.gallery], minlength=classes)
    loss_fn = loss_spec.make(counts.tolist(), options=options)
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, history = math.inf, None, []
    for epoch in range(1, recipe.epochs + 1):
        head.train()
        order = torch.randperm(len(labels["gallery"]), generator=generator)
        for batch in order.split(batch_size):
            loss = loss_fn(head(features["gallery"][batch]), labels["gallery"][batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.cross_entropy(head(features["val"]), labels["val"]))
        history.append(val_loss)
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    head.eval()
    with torch.no_grad():
        logits = {name: head(features[name]).numpy() for name in ("gallery", "val", "test", "strangers")}
    score_labels = {"val": split.labels[split.val], "test": split.labels[split.test]}
    scores = {"softmax": softmax_scores(logits, score_labels)}
    centroids = openset.class_centroids(frozen["gallery"], split.labels[split.gallery], classes)
    scores["centroid"] = similarity_scores(centroids, np.arange(classes), frozen, score_labels, "cosine")
    scale = logit_scale(model, spec)
    if scale:
        scores["margin"] = softmax_scores(logits, score_labels, scale=scale)
    info = {"seconds": time.perf_counter() - start, "best_epoch": int(np.argmin(history)) + 1, "val_loss": history,
            "loss_options": options}  # fmt: skip
    return scores, info


def recipe_scores(run_dir: Path, split: Split) -> dict[str, Scores]:
    """Every rejection score the run has, over the benchmark's split (which must be the run's own)."""
    import torch

    from facekit.heads import logit_scale
    from facekit.openset_training import infer
    from facekit.plugins import architectures
    from facekit.runs import Run

    run = Run(run_dir)
    if not np.array_equal(np.asarray(run.split["test"]), split.test):
        raise SystemExit(f"{run_dir}: its test split is not the benchmark's (same --seed, --test-size, --val-size?)")
    model = run.load_model(device=torch.device("cpu"))
    parts = {"gallery": split.paths(split.gallery), "val": split.paths(split.val), "test": split.paths(split.test),
             "strangers": split.strangers}  # fmt: skip
    # Kept beside the run (keyed by its best checkpoint's time), so a rerun of the benchmark infers nothing twice.
    cache = run_dir.parent / f".{run_dir.name}-outputs-{int(run.checkpoint_path('best').stat().st_mtime)}.npz"
    logits, embeddings = {}, {}
    if cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        logits = {name: saved[f"logits_{name}"] for name in parts}
        embeddings = {name: saved[f"embeddings_{name}"] if f"embeddings_{name}" in saved else None for name in parts}
    else:
        for name, files in parts.items():
            logits[name], embeddings[name] = infer(run, model, files, device=torch.device("cpu"))
        arrays = {f"logits_{n}": v for n, v in logits.items()} | {f"embeddings_{n}": v for n, v in embeddings.items() if v is not None}
        np.savez(cache, **arrays)
    labels = {"val": split.labels[split.val], "test": split.labels[split.test]}
    scores = {"softmax": softmax_scores(logits, labels)}
    if embeddings["gallery"] is not None:
        centroids = openset.class_centroids(embeddings["gallery"], split.labels[split.gallery], len(split.classes))
        scores["centroid"] = similarity_scores(centroids, np.arange(len(split.classes)), embeddings, labels, "cosine")
    scale = logit_scale(model, architectures().get(run.config["arch"]))
    if scale:
        scores["margin"] = softmax_scores(logits, labels, scale=scale)
    return scores


# -------------------------------------------------------------------------------- main
def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    environment = describe_environment()
    start = time.perf_counter()
    if args.quick:
        from facekit.data.synth import make_synthetic_dataset

        known = make_synthetic_dataset(work / "quick-known", identities=6, per_identity=12, size=40, seed=1, force=True)
        strangers = make_synthetic_dataset(work / "quick-strangers", identities=40, per_identity=1, size=40, seed=2, force=True)
        recipes, anchor_arch, pretrained, anchor_size = quick_recipes(), "baseline", False, 48
        head_recipes = [HeadRecipe("baseline frozen + arcface head", "baseline", "arcface", ("s=16", "m=0.2"), epochs=5)]
    else:
        known = aligned(Path(args.data), args.aligned_data, work, args.threads)
        strangers = aligned(Path(args.strangers), args.aligned_strangers, work, args.threads)
        recipes = full_recipes(args.epochs, args.baseline_epochs)
        head_recipes = [HeadRecipe(f"dlib-resnet frozen + {loss} head", "dlib-resnet", loss, options, epochs=args.head_epochs)
                        for loss, options in LOSSES]  # fmt: skip
        anchor_arch, pretrained, anchor_size = "dlib-resnet", True, None
    if args.recipes:
        recipes = [r for r in recipes if any(word in r.name for word in args.recipes)]
        head_recipes = [r for r in head_recipes if any(word in r.name for word in args.recipes)]
    split = make_split(known, strangers, args.seed, args.test_size, args.val_size)
    print(f"known: {len(split.files)} images of {len(split.classes)} people (gallery {len(split.gallery)}, validation "
          f"{len(split.val)}, test {len(split.test)}); strangers: {len(split.strangers)} images", flush=True)  # fmt: skip

    def train(recipe: Recipe) -> dict[str, Any]:
        out = work / "runs" / recipe.name.replace(",", "").replace(" ", "-")
        print(f"training: {recipe.name}", flush=True)
        info = train_recipe(recipe, known, out, seed=args.seed, threads=args.threads, test_size=args.test_size, val_size=args.val_size)
        took = "reused" if info["reused"] else f"{info['seconds']:.0f} s"
        print(f"trained: {recipe.name} ({took})", flush=True)
        return info | {"run": str(out)}

    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        trainings = {recipe.name: pool.submit(train, recipe) for recipe in recipes}
        anchor_start = time.perf_counter()
        frozen = frozen_embeddings(anchor_arch, split, pretrained=pretrained, input_size=anchor_size, cache=work)
        labels = {"val": split.labels[split.val], "test": split.labels[split.test]}
        nearest = similarity_scores(frozen["gallery"], split.labels[split.gallery], frozen, labels, "euclidean")
        centroids = openset.class_centroids(frozen["gallery"], split.labels[split.gallery], len(split.classes))
        centroid = similarity_scores(centroids, np.arange(len(split.classes)), frozen, labels, "cosine")
        anchor_seconds = time.perf_counter() - anchor_start
        nearest_curve, centroid_curve = f"nearest image (frozen {anchor_arch})", f"centroid cosine (frozen {anchor_arch})"
        curves[nearest_curve], curves[centroid_curve] = nearest, centroid
        anchors = [
            (f"face_recognition (frozen {anchor_arch}, nearest image, tolerance {TOLERANCE})", nearest_curve, -TOLERANCE),
            (f"face_recognition, tolerance calibrated (frozen {anchor_arch}, nearest image)", nearest_curve, None),
            (f"centroid cosine (frozen {anchor_arch})", centroid_curve, None),
        ]
        for name, curve, threshold in anchors:
            rows.append({"recipe": name, "kind": "anchor", "score": "distance" if curve == nearest_curve else "centroid",
                         "curve": curve, "threshold_kind": "calibrated" if threshold is None else "default",
                         "seconds": anchor_seconds} | judge(curves[curve], args.target_fpir, threshold))  # fmt: skip
        for head_recipe in head_recipes:
            per_score, info = train_head(head_recipe, frozen, split, seed=args.seed, input_size=anchor_size)
            judged = {score: judge(scores, args.target_fpir) for score, scores in per_score.items()}
            chosen = min(judged, key=lambda s: (judged[s]["val_fnir"], list(judged).index(s)))
            curve = f"{head_recipe.name} ({chosen})"
            rows.append({"recipe": head_recipe.name, "kind": "facekit head on frozen embeddings", "score": chosen, "curve": curve,
                         "threshold_kind": "calibrated", "seconds": info["seconds"], "training": info,
                         "all_scores": judged} | judged[chosen])  # fmt: skip
            curves[curve] = per_score[chosen]
            print(f"trained: {head_recipe.name} ({info['seconds']:.0f} s)", flush=True)
        for recipe in recipes:
            info = trainings[recipe.name].result()
            per_score = recipe_scores(Path(info["run"]), split)
            judged = {score: judge(scores, args.target_fpir) for score, scores in per_score.items()}
            # The score validation prefers: the lowest FNIR at the target FPIR on the validation data.
            chosen = min(judged, key=lambda s: (judged[s]["val_fnir"], list(judged).index(s)))
            curve = f"{recipe.name} ({chosen})"
            rows.append({"recipe": recipe.name, "kind": "facekit", "score": chosen, "curve": curve, "threshold_kind": "calibrated",
                         "seconds": info["seconds"], "run": info["run"], "command": info.get("command"),
                         "all_scores": judged} | judged[chosen])  # fmt: skip
            curves[curve] = per_score[chosen]
    result = {
        "benchmark": "openset",
        "quick": bool(args.quick),
        "environment": environment,
        "load_average_end": load_average(),
        "seconds": time.perf_counter() - start,
        "protocol": {
            "known": str(known), "strangers": str(strangers), "people": len(split.classes), "known_images": len(split.files),
            "gallery_images": len(split.gallery), "val_images": len(split.val), "test_images": len(split.test),
            "stranger_images": len(split.strangers), "seed": args.seed, "test_size": args.test_size,
            "val_size": args.val_size, "target_fpir": args.target_fpir, "threads": args.threads,
        },  # fmt: skip
        "rows": rows,
    }
    if args.plot:
        plot_det(curves, rows, args.target_fpir, Path(args.plot))
        result["plot"] = str(args.plot)
    return result


def plot_det(curves: dict[str, Scores], rows: list[dict[str, Any]], target_fpir: float, path: Path) -> None:
    """FNIR against FPIR (test quarter against the strangers), log-log, one line per way of scoring;
    each row's operating point (its calibrated threshold, or face_recognition's tolerance) marked on its line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    colors = {}
    for name, scores in curves.items():
        curve = openset.det_curve(scores.test, scores.strangers, scores.test_correct)
        keep = curve.fpir > 0
        (line,) = axes.plot(curve.fpir[keep], np.maximum(curve.fnir[keep], 1e-3), label=name, linewidth=1.4)
        colors[name] = line.get_color()
    floor = 0.5 / max(len(next(iter(curves.values())).strangers), 1)
    for row in rows:
        marker = "x" if row.get("threshold_kind") == "default" else "o"
        axes.plot(max(row["fpir_strangers"], floor), max(row["fnir"], 1e-3), marker, color=colors[row["curve"]], markersize=7,
                  markerfacecolor="none" if marker == "o" else None)  # fmt: skip
    axes.axvline(target_fpir, color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("FPIR (strangers named as someone)")
    axes.set_ylabel("FNIR (known test images rejected or misnamed)")
    axes.set_title("DET on the test quarter and the strangers; o: threshold calibrated on validation, x: tolerance 0.6")
    axes.title.set_fontsize(9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


COLUMNS = [
    ("recipe", "recipe", "{}"),
    ("score", "score", "{}"),
    ("rank1", "rank-1", "{:.3f}"),
    ("fnir", "FNIR at the calibrated threshold", "{:.3f}"),
    ("fpir_strangers", "FPIR reached on the strangers", "{:.4f}"),
    ("oracle_fnir_at_fpir", "oracle FNIR at FPIR (threshold on the strangers)", "{:.3f}"),
    ("seconds", "seconds", "{:.0f}"),
]


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per row and score: a recipe's scores other than the one validation prefers follow it, marked so."""
    lines = []
    for row in rows:
        lines.append(row | {"score": row["score"] + (" (preferred)" if "all_scores" in row and len(row["all_scores"]) > 1 else "")})
        for score, figures in row.get("all_scores", {}).items():
            if score != row["score"]:
                lines.append(figures | {"recipe": "", "score": score, "seconds": None})
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/lfw_min8", help="Known people: one folder each (aligned below).")
    parser.add_argument("--strangers", default="../shared/data/lfw_strangers", help="Other people, never known, never calibrated on.")
    parser.add_argument("--aligned-data", type=Path, help="An aligned copy of --data made with facekit align (default: made in --work).")
    parser.add_argument("--aligned-strangers", type=Path, help="An aligned copy of --strangers.")
    parser.add_argument("--work", default="~/.cache/facekit-openset", help="Aligned copies, embeddings and training runs (reused).")
    parser.add_argument("--out", required=True, help="JSON results.")
    parser.add_argument("--plot", help="DET plot (PNG).")
    parser.add_argument("--epochs", type=int, default=2, help="Fine-tuning epochs of the dlib-resnet recipes (0: none).")
    parser.add_argument("--head-epochs", type=int, default=10, help="Epochs of the heads trained on the frozen network's embeddings.")
    parser.add_argument("--baseline-epochs", type=int, default=5, help="Epochs of the baseline CNN (0: none).")
    parser.add_argument("--recipes", nargs="*", help="Only the facekit recipes whose name contains one of these words.")
    parser.add_argument("--jobs", type=int, default=2, help="Trainings at once.")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--val-size", type=float, default=0.1)
    parser.add_argument("--target-fpir", type=float, default=0.01)
    parser.add_argument("--quick", action="store_true", help="Toy size on synthetic faces (CI): checks the plumbing, not the figures.")
    args = parser.parse_args(argv)
    result = measure(args)
    write_json(args.out, result)
    print(markdown_table(table_rows(result["rows"]), COLUMNS))
    print(f"load average: start {result['environment']['load_average']}, end {result['load_average_end']}; {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()

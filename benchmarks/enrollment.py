"""Enrollment without retraining, measured: new people enrolled from one photo, recognized on the others.

Takes an open-set run with a gallery (trained with ``--strangers DIR``) and the people of a
folder who have two or more photos and were **not** among the run's calibration strangers (the
threshold was never set on them). Each is enrolled from their first photo (sorted by name),
exactly as ``facekit enroll`` does (:meth:`facekit.openset.Gallery.with_people`), and every
other photo of theirs is then decided as ``facekit predict`` decides it
(:func:`facekit.openset.decide`, at the run's calibrated threshold). Reported:

- ``rank1``: the share of those photos whose nearest gallery entry is the right person;
- ``fnir``: the share not named correctly at the threshold (rejected or misnamed); an image
  nearest an enrolled person is held to the run's ``enrolled`` threshold, as in ``facekit predict``;
- ``fpir_single``: the share of the folder's one-photo people outside the calibration half
  (never enrolled) who are named as someone: strangers must still be rejected;
- ``fnir_known``: the same FNIR for the run's own known test images, with everyone enrolled.

    python -m benchmarks.enrollment --run runs/RUN --people ../shared/data/lfw_strangers --out results/enrollment.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from facekit import openset
from facekit.data.index import index_dataset
from facekit.devices import resolve_device
from facekit.files import write_json
from facekit.openset_training import infer
from facekit.runs import Run


def measure(run_dir: Path, people_dir: Path, *, device: str = "cpu") -> dict:
    run = Run.open(run_dir)
    data = openset.OpenSet.read(run.path)
    if data is None or data.gallery is None or "centroid" not in data.calibration:
        raise SystemExit(f"{run_dir} has no gallery: train it with --strangers on an architecture that gives embeddings")
    calibration = set((run.split.get("openset") or {}).get("strangers", {}).get("calibration", []))
    index = index_dataset(people_dir)
    by_person: dict[str, list[str]] = {}
    for rel, label in zip(index.files, index.labels):
        if rel not in calibration:
            by_person.setdefault(index.classes[int(label)], []).append(rel)
    enrolled = {name: sorted(files) for name, files in by_person.items() if len(files) >= 2}
    singles = [files[0] for files in by_person.values() if len(files) == 1]
    torch_device = resolve_device(device)
    model = run.load_model(device=torch_device)
    start = time.perf_counter()

    def embed(rels: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return infer(run, model, [str(index.root / r) for r in rels], device=torch_device)

    names = sorted(enrolled)
    _, first_embeddings = embed([enrolled[name][0] for name in names])
    gallery = data.gallery.with_people(names, first_embeddings, [1] * len(names))
    with_people = openset.OpenSet(data.score, data.target_fpir, data.calibration, data.logit_scale, gallery)
    probe_rels = [r for name in names for r in enrolled[name][1:]]
    probe_truth = [name for name in names for _ in enrolled[name][1:]]
    logits, embeddings = embed(probe_rels)
    decisions = openset.decide(logits, run.classes, embeddings=embeddings, openset=with_people)
    similarity = openset.l2_normalize(embeddings) @ gallery.embeddings.T.astype(np.float64)
    nearest = [gallery.names[i] for i in similarity.argmax(1)]
    rank1 = float(np.mean([n == t for n, t in zip(nearest, probe_truth)]))
    fnir = float(np.mean([not (d["accepted"] and d["identity"] == t) for d, t in zip(decisions, probe_truth)]))
    single_logits, single_embeddings = embed(singles)
    single_decisions = openset.decide(single_logits, run.classes, embeddings=single_embeddings, openset=with_people)
    fpir_single = float(np.mean([d["accepted"] for d in single_decisions])) if singles else float("nan")
    root = Path(run.split["root"])
    test_idx = np.asarray(run.split["test"], dtype=int)
    known_logits, known_embeddings = infer(run, model, [str(root / run.split["files"][i]) for i in test_idx], device=torch_device)
    known_truth = [run.classes[run.split["labels"][i]] for i in test_idx]
    known_decisions = openset.decide(known_logits, run.classes, embeddings=known_embeddings, openset=with_people)
    fnir_known = float(np.mean([not (d["accepted"] and d["identity"] == t) for d, t in zip(known_decisions, known_truth)]))
    return {
        "run": str(run.path),
        "arch": run.config.get("arch"),
        "score": openset.decision_score(with_people),
        "threshold": with_people.threshold(openset.decision_score(with_people)),
        "enrolled_threshold": with_people.calibration.get(openset.ENROLLED, {}).get("threshold"),
        "enrolled_people": len(names),
        "probe_images": len(probe_rels),
        "rank1": rank1,
        "fnir": fnir,
        "single_photo_strangers": len(singles),
        "fpir_single": fpir_single,
        "known_test_images": len(known_truth),
        "fnir_known": fnir_known,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--people", type=Path, required=True, help="One sub-folder per person (e.g. lfw_strangers).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.run, args.people, device=args.device)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

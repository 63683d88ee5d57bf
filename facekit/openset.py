"""Open-set identification: is a face one of the known people, and which one, or a stranger?

numpy only (no torch): an exported bundle runs :func:`decide` and reads a run's ``openset.json``
and ``gallery.npz`` without torch, and the benchmark scores with the same functions.

Definitions (the conventions of NIST FRVT 1:N and insightface):

- A **known** probe (a mated search) is an image of someone the model knows; an **unknown**
  probe (a non-mated search) is an image of someone it does not. Every probe gets a *score*
  (higher: more confident that it is a known person) and a top-1 identity. At a threshold
  ``t`` a probe is **accepted** when ``score >= t`` and rejected otherwise.
- **FPIR(t)**, the false-positive identification rate: the share of unknown probes accepted
  (named as somebody).
- **FNIR(t)**, the false-negative identification rate: the share of known probes that are
  *not* named correctly: rejected, **or** accepted with a wrong top-1 identity. So at a
  threshold that accepts everything FNIR is the closed-set rank-1 error, never 0 for an
  imperfect classifier.
- **FNIR at FPIR x**: FNIR at the lowest threshold whose FPIR is at most ``x``: the best
  identification rate reachable while naming at most a share ``x`` of the strangers.
- For 1:1 verification of pairs: **FAR(t)** is the share of impostor pairs (two different
  people) with similarity ``>= t``, **TAR(t)** the share of genuine pairs (the same person)
  with similarity ``>= t``; **TAR at FAR x** is TAR at the lowest threshold whose FAR is at
  most ``x``.

These are the operating points scikit-learn's ``roc_curve`` and ``det_curve`` give when the
known probes are the positives and a known probe with a wrong top-1 never counts as found
(tests/test_openset.py checks that).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekit.errors import FacekitError, UsageError

# The scores a run can reject by. All are "higher: more likely a known person".
SCORES = {
    "softmax": "the classifier's top-1 softmax probability",
    "centroid": "cosine similarity of the image's embedding to the nearest class centroid (or enrolled person)",
    "margin": "the margin head's top-1 cosine (runs trained with a margin loss)",
}
# The calibration of the centroid score for people enrolled from a photo or two (``facekit enroll``),
# not a score of its own: a gallery entry of one photo scores lower than a class's mean embedding.
ENROLLED = "enrolled"
# Scores that compare embeddings with the gallery: the ones that can name an enrolled person.
GALLERY_SCORES = ("centroid",)
OPENSET_FILE = "openset.json"
GALLERY_FILE = "gallery.npz"
FPIR_POINTS = (0.1, 0.01, 0.001)
FAR_POINTS = (1e-2, 1e-3)
DEFAULT_TARGET_FPIR = 0.01


# ----------------------------------------------------------------------------- rates
def _scores(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds a score that is not a finite number")
    return array


def _hits(correct: Any, n: int) -> np.ndarray:
    if correct is None:
        return np.ones(n, dtype=bool)
    hits = np.asarray(correct, dtype=bool).ravel()
    if hits.size != n:
        raise ValueError(f"known_correct has {hits.size} entries for {n} known scores")
    return hits


def rates_at(threshold: float, known_scores: Any, unknown_scores: Any, known_correct: Any = None) -> tuple[float, float]:
    """(FPIR, FNIR) when probes with ``score >= threshold`` are accepted; NaN for a side with no probes."""
    known, unknown = _scores(known_scores, "known_scores"), _scores(unknown_scores, "unknown_scores")
    hits = _hits(known_correct, known.size)
    fpir = float(np.mean(unknown >= threshold)) if unknown.size else math.nan
    fnir = float(1.0 - np.mean(hits & (known >= threshold))) if known.size else math.nan
    return fpir, fnir


@dataclass(frozen=True)
class DetCurve:
    """Every operating point, one per distinct score, by increasing threshold (as scikit-learn orders them).

    ``fpir[i]`` and ``fnir[i]`` are the rates when scores ``>= thresholds[i]`` are accepted.
    """

    thresholds: np.ndarray
    fpir: np.ndarray
    fnir: np.ndarray


def det_curve(known_scores: Any, unknown_scores: Any, known_correct: Any = None) -> DetCurve:
    """The DET curve (FNIR against FPIR) of known and unknown probes; ``known_correct`` marks right top-1s (default all)."""
    known, unknown = _scores(known_scores, "known_scores"), _scores(unknown_scores, "unknown_scores")
    hits = _hits(known_correct, known.size)
    if not known.size or not unknown.size:
        raise ValueError("a DET curve needs known and unknown probes")
    thresholds = np.unique(np.concatenate([known, unknown]))  # ascending
    # Probes at or above each threshold, counted with sorted arrays: O((n + m) log(n + m)).
    unknown_sorted = np.sort(unknown)
    found_sorted = np.sort(known[hits])
    accepted_unknown = unknown.size - np.searchsorted(unknown_sorted, thresholds, side="left")
    found = found_sorted.size - np.searchsorted(found_sorted, thresholds, side="left")
    return DetCurve(thresholds, accepted_unknown / unknown.size, 1.0 - found / known.size)


def _threshold_for_rate(negatives: np.ndarray, rate: float) -> float:
    """The lowest threshold (accept ``>=``) that accepts at most a share ``rate`` of ``negatives``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a false-positive rate is from 0 to 1 (got {rate})")
    allowed = int(math.floor(rate * negatives.size + 1e-9))  # 1e-9: 0.29 * 100 is 28.999...
    if allowed >= negatives.size:
        return -math.inf
    ranked = np.sort(negatives)[::-1]
    # Just above the (allowed+1)-th highest negative: it and everything below it are rejected.
    return float(np.nextafter(ranked[allowed], math.inf))


def fnir_at_fpir(known_scores: Any, known_correct: Any, unknown_scores: Any, fpir: float) -> float:
    """FNIR at the lowest threshold whose FPIR on ``unknown_scores`` is at most ``fpir`` (see the module's definitions)."""
    known, unknown = _scores(known_scores, "known_scores"), _scores(unknown_scores, "unknown_scores")
    if not known.size or not unknown.size:
        return math.nan
    return rates_at(_threshold_for_rate(unknown, fpir), known, unknown, known_correct)[1]


def tar_at_far(genuine: Any, impostor: Any, far: float) -> float:
    """TAR of genuine pairs at the lowest threshold whose FAR on ``impostor`` pairs is at most ``far``."""
    genuine, impostor = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    if not genuine.size or not impostor.size:
        return math.nan
    return 1.0 - rates_at(_threshold_for_rate(impostor, far), genuine, impostor)[1]


def resolvable(rate: float, negatives: int) -> bool:
    """Whether ``negatives`` probes can measure a false-positive rate as low as ``rate`` (one probe is at most ``rate``)."""
    return negatives > 0 and rate * negatives >= 1.0 - 1e-9


# ------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """A rejection threshold picked on calibration data, and what it reached there."""

    score: str
    threshold: float
    target_fpir: float
    fpir: float  # reached on the calibration unknowns
    fnir: float  # on the calibration knowns (rejected or wrong top-1)
    known: int
    unknown: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate_threshold(
    known_scores: Any, unknown_scores: Any, target_fpir: float, *, known_correct: Any = None, score: str = "softmax"
) -> Calibration:
    """The threshold that accepts at most ``target_fpir`` of ``unknown_scores`` and as many known probes as that allows.

    It sits halfway between the highest rejected and the lowest accepted unknown score (just
    above the highest one when none is accepted), so a new unknown image scoring like the
    calibration ones falls on the side they did. ``note`` says when there are too few unknown
    images to measure the target rate at all (fewer than ``1 / target_fpir``): the threshold
    then rejects every calibration unknown, and the rate on new faces is not known to be the target.
    """
    known, unknown = _scores(known_scores, "known_scores"), _scores(unknown_scores, "unknown_scores")
    if not unknown.size:
        raise UsageError("no unknown images to calibrate the rejection threshold on: give --strangers DIR or --unknown-identities")
    if not known.size:
        raise UsageError("no validation images of known identities to calibrate the rejection threshold on: use --val-size above 0")
    if not 0.0 < target_fpir < 1.0:
        raise UsageError(f"--target-fpir must be above 0 and below 1 (got {target_fpir})")
    lowest = _threshold_for_rate(unknown, target_fpir)
    threshold = lowest
    accepted = np.sort(unknown[unknown >= lowest])
    if accepted.size and math.isfinite(lowest):
        rejected_top = float(np.nextafter(lowest, -math.inf))
        middle = (rejected_top + float(accepted[0])) / 2.0
        threshold = middle if rejected_top < middle <= accepted[0] else lowest
    fpir, fnir = rates_at(threshold, known, unknown, known_correct)
    note = ""
    if not resolvable(target_fpir, unknown.size):
        note = (
            f"{unknown.size} unknown calibration images cannot measure an FPIR of {target_fpir:g} "
            f"(that needs at least {math.ceil(1 / target_fpir)}): the threshold rejects all of them"
        )
    return Calibration(score, float(threshold), float(target_fpir), fpir, fnir, int(known.size), int(unknown.size), note)


# ------------------------------------------------------------------------------ scores
def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def l2_normalize(vectors: Any) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def class_centroids(embeddings: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Each class's mean unit-length embedding, itself unit length (zero for a class without images)."""
    unit = l2_normalize(embeddings)
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((num_classes, unit.shape[1]))
    np.add.at(sums, labels, unit)
    return l2_normalize(sums)


def pair_scores(embeddings: Any, labels: Any, *, max_pairs: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of genuine (same label) and impostor (different label) pairs of images.

    Every pair while there are at most ``max_pairs`` of them; past that a seeded sample of
    ``max_pairs`` pairs (without repeats) so memory stays bounded.
    """
    unit = l2_normalize(embeddings)
    labels = np.asarray(labels)
    n = unit.shape[0]
    total = n * (n - 1) // 2
    if total == 0:
        return np.zeros(0), np.zeros(0)
    if total <= max_pairs:
        first, second = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        codes = np.unique(rng.integers(0, n * n, size=2 * max_pairs))
        first, second = np.divmod(codes, n)
        keep = first < second
        first, second = first[keep][:max_pairs], second[keep][:max_pairs]
    similarity = np.einsum("ij,ij->i", unit[first], unit[second])
    same = labels[first] == labels[second]
    return similarity[same], similarity[~same]


@dataclass(frozen=True)
class Gallery:
    """The people a run can name by embedding: its classes' centroids and the people enrolled later.

    Stored as ``gallery.npz`` (see docs/train.md): ``names`` (G), ``embeddings`` (G x D float32,
    unit length), ``class_ids`` (G int64: the class id, -1 for an enrolled person) and
    ``images`` (G int64: how many images each entry averages).
    """

    names: list[str]
    embeddings: np.ndarray
    class_ids: np.ndarray
    images: np.ndarray

    @property
    def enrolled(self) -> list[str]:
        return [name for name, cid in zip(self.names, self.class_ids) if cid < 0]

    def to_bytes(self) -> bytes:
        import io

        buffer = io.BytesIO()
        np.savez(
            buffer,
            names=np.asarray(self.names, dtype=str),
            embeddings=np.asarray(self.embeddings, dtype=np.float32),
            class_ids=np.asarray(self.class_ids, dtype=np.int64),
            images=np.asarray(self.images, dtype=np.int64),
        )
        return buffer.getvalue()

    @classmethod
    def read(cls, path: Path) -> "Gallery":
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as data:
                names = [str(n) for n in data["names"]]
                embeddings = np.asarray(data["embeddings"], dtype=np.float32)
                class_ids = np.asarray(data["class_ids"], dtype=np.int64)
                images = np.asarray(data["images"], dtype=np.int64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise FacekitError(f"{path} is damaged ({exc.__class__.__name__}: {exc}): this gallery cannot be read") from None
        g = len(names)
        if embeddings.ndim != 2 or embeddings.shape[0] != g or class_ids.shape != (g,) or images.shape != (g,):
            raise FacekitError(f"{path} is damaged (its arrays disagree in length): this gallery cannot be read")
        return cls(names, embeddings, class_ids, images)

    def with_people(self, names: Sequence[str], embeddings: np.ndarray, images: Sequence[int]) -> "Gallery":
        return Gallery(
            self.names + list(names),
            np.concatenate([self.embeddings, l2_normalize(embeddings).astype(np.float32)]),
            np.concatenate([self.class_ids, np.full(len(names), -1, dtype=np.int64)]),
            np.concatenate([self.images, np.asarray(images, dtype=np.int64)]),
        )

    def without(self, name: str) -> "Gallery":
        keep = np.array([n != name for n in self.names])
        return Gallery([n for n, k in zip(self.names, keep) if k], self.embeddings[keep], self.class_ids[keep], self.images[keep])


@dataclass
class OpenSet:
    """A run's open-set data: the score it rejects by, its calibrated thresholds and its gallery.

    ``openset.json`` holds ``score`` (the default), ``target_fpir``, ``logit_scale`` (the
    margin head's scale, for the ``margin`` score) and ``calibration``: one
    :class:`Calibration` per score measured.
    """

    score: str
    target_fpir: float
    calibration: dict[str, dict[str, Any]]
    logit_scale: float | None = None
    gallery: Gallery | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def threshold(self, score: str) -> float:
        return float(self.calibration[score]["threshold"])

    def to_json(self) -> dict[str, Any]:
        return self.extra | {
            "score": self.score,
            "target_fpir": self.target_fpir,
            "logit_scale": self.logit_scale,
            "calibration": self.calibration,
        }

    @classmethod
    def read(cls, folder: Path) -> "OpenSet | None":
        """The open-set data of a run (or bundle) folder; None when it has none."""
        file = Path(folder) / OPENSET_FILE
        if not file.is_file():
            return None
        try:
            data = json.loads(file.read_text())
            score, calibration = data["score"], data["calibration"]
            float(calibration[score]["threshold"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise FacekitError(f"{file} is damaged ({exc.__class__.__name__}: {exc}): its open-set data cannot be read") from None
        gallery_file = Path(folder) / GALLERY_FILE
        gallery = Gallery.read(gallery_file) if gallery_file.is_file() else None
        known = ("score", "target_fpir", "logit_scale", "calibration")
        return cls(
            score=score,
            target_fpir=float(data.get("target_fpir", math.nan)),
            calibration=calibration,
            logit_scale=data.get("logit_scale"),
            gallery=gallery,
            extra={k: v for k, v in data.items() if k not in known},
        )


# ---------------------------------------------------------------------------- decisions
def probe_scores(score: str, logits: Any, embeddings: Any = None, gallery: Gallery | None = None,
                 logit_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each image's ``score`` and its best index: a class id, or a gallery row for gallery scores."""
    if len(logits) == 0:  # no images: nothing to score (an empty batch has no embedding width either)
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    if score == "softmax":
        probs = softmax(logits)
        return probs.max(axis=1), probs.argmax(axis=1)
    if score == "margin":
        z = np.asarray(logits, dtype=np.float64)
        return z.max(axis=1) / (logit_scale or 1.0), z.argmax(axis=1)
    if score == "centroid":
        if embeddings is None or gallery is None:
            raise FacekitError("the centroid score needs the images' embeddings and the run's gallery.npz")
        similarity = l2_normalize(embeddings) @ l2_normalize(gallery.embeddings).T
        return similarity.max(axis=1), similarity.argmax(axis=1)
    raise UsageError(f"unknown open-set score {score!r}; expected one of {', '.join(SCORES)}")


def decision_score(openset: OpenSet) -> str:
    """The score a run decides by: its default, or the gallery cosine once people are enrolled
    (only an embedding can name someone the classifier never saw)."""
    if openset.gallery is not None and openset.gallery.enrolled and openset.score not in GALLERY_SCORES:
        if "centroid" in openset.calibration:
            return "centroid"
    return openset.score


def decide(
    logits: Any,
    classes: Sequence[str],
    *,
    embeddings: Any = None,
    openset: OpenSet | None = None,
    threshold: float | None = None,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """Accept or reject each image, and name it: the one decision ``facekit predict`` and an exported bundle make.

    Per image: ``identity`` (a name, or ``"unknown"`` when rejected), ``accepted``, ``score``,
    ``score_name``, ``threshold`` (None for a run without open-set data: every image is accepted,
    as in closed-set classification) and ``top``: the classifier's ``top_k`` classes with their
    softmax probabilities. ``threshold`` overrides the run's calibrated one.
    """
    probs = softmax(np.asarray(logits, dtype=np.float64).reshape(len(logits), len(classes)))
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    tops = [
        [{"name": classes[i], "id": int(i), "probability": float(row[i])} for i in ids]
        for row, ids in zip(probs, order)
    ]
    if openset is None:
        score_name, threshold_used = "softmax", threshold
        scores, best = probs.max(axis=1), probs.argmax(axis=1)
        names = [classes[i] for i in best]
    else:
        score_name = decision_score(openset)
        threshold_used = openset.threshold(score_name) if threshold is None else threshold
        scores, best = probe_scores(score_name, logits, embeddings, openset.gallery, openset.logit_scale)
        names = [openset.gallery.names[i] for i in best] if score_name in GALLERY_SCORES else [classes[i] for i in best]
    # An image nearest to an enrolled person is held to the enrolled people's threshold (when calibrated).
    per_image = [threshold_used] * len(names)
    if openset is not None and threshold is None and score_name in GALLERY_SCORES and ENROLLED in openset.calibration:
        enrolled_threshold = openset.threshold(ENROLLED)
        per_image = [enrolled_threshold if openset.gallery.class_ids[i] < 0 else threshold_used for i in best]
    decisions = []
    for name, score, top, threshold_used in zip(names, scores, tops, per_image):
        accepted = threshold_used is None or bool(score >= threshold_used)
        decisions.append({
            "identity": name if accepted else "unknown",
            "accepted": accepted,
            "score": float(score),
            "score_name": score_name,
            "threshold": None if threshold_used is None else float(threshold_used),
            "top": top,
        })  # fmt: skip
    return decisions


# ---------------------------------------------------------------------------- summaries
def openset_metrics(
    known_scores: Any, known_correct: Any, unknown_scores: Any, *, threshold: float | None = None,
    genuine: Any = None, impostor: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The test figures of one score: rank-1, FNIR at each FPIR of :data:`FPIR_POINTS` (NaN where
    too few unknowns measure it), the rates at the run's ``threshold``, and TAR at each FAR of
    :data:`FAR_POINTS` when pair similarities are given."""
    known, unknown = _scores(known_scores, "known_scores"), _scores(unknown_scores, "unknown_scores")
    hits = _hits(known_correct, known.size)
    result: dict[str, Any] = {
        "known": int(known.size),
        "unknown": int(unknown.size),
        "rank1": float(hits.mean()) if known.size else math.nan,
        "fnir_at_fpir": {
            f"{x:g}": (fnir_at_fpir(known, hits, unknown, x) if resolvable(x, unknown.size) else math.nan) for x in FPIR_POINTS
        },
    }
    if threshold is not None:
        fpir, fnir = rates_at(threshold, known, unknown, hits)
        result["at_threshold"] = {"threshold": float(threshold), "fpir": fpir, "fnir": fnir}
    if genuine is not None and impostor is not None:
        impostors = np.asarray(impostor).size
        result["pairs"] = {"genuine": int(np.asarray(genuine).size), "impostor": int(impostors)}
        result["tar_at_far"] = {
            f"{x:g}": (tar_at_far(genuine, impostor, x) if resolvable(x, impostors) else math.nan) for x in FAR_POINTS
        }
    return result

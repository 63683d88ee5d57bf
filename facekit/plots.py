"""The report's figures (PNG): loss curves, the most confused classes, score vs training images.

Up to MANY_CLASSES classes a figure can name every class it shows; beyond that the report draws
the top confusions as bars and the per-class scores as distributions instead.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: no global state, no
GUI backend, nothing to close, safe to call from tests and threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from facekit.metrics import ClassMetrics, spearman

if TYPE_CHECKING:
    from facekit.report import Report

DPI = 110
MANY_CLASSES = 50  # above this, per-class figures become distributions (see the module docstring)


def report_figures(report: "Report", out: Path) -> list[Path]:
    """A report's figures in ``out``: loss curves (when the run has a history), then the most
    confused classes and score vs training images, or their many-class forms above MANY_CLASSES."""
    run = report.run
    written = []
    if run.history:
        best_epochs = {int(f["fold"]): int(f["best_epoch"]) for f in run.folds.get("folds", []) if "best_epoch" in f}
        written.append(plot_loss_curves(
            run.history, out / "loss_curves.png", kept_fold=run.kept_fold, best_epochs=best_epochs,
            title=f"Loss curves: {report.name} ({run.config.get('arch')})",
        ))
    shown = max(len(report.confusions), 10)  # at least enough to show a pattern
    if report.metrics.num_classes > MANY_CLASSES:  # too many classes to name them all
        written.append(plot_top_confusions(
            report.metrics, report.classes, out / "top_confusions.png", n=shown,
            title=f"Most common confusions: {report.name}",
        ))
        written.append(plot_score_distribution(
            report.metrics, report.train_counts, out / "score_distribution.png",
            title=f"Per-class aggregated scores: {report.name}",
        ))
    else:
        written.append(plot_confusion_matrix(
            report.metrics, report.classes, out / "confusion_matrix.png", n=shown,
            title=f"Most confused classes: {report.name}",
        ))
        written.append(plot_score_vs_training_images(
            report.metrics, report.classes, report.train_counts, out / "score_vs_training_images.png",
            title=f"Aggregated score vs training images: {report.name}",
        ))
    return written


def readable(name: str) -> str:
    """Folder names use underscores for spaces (``George_W_Bush``); figures read better without.

    Control characters are shown escaped and ``$`` literally (matplotlib would read ``$...$`` as math).
    """
    from facekit.text import printable

    return printable(name.replace("_", " ")).replace("$", r"\$")


def save(figure: Figure, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=DPI, bbox_inches="tight")
    return out_path


def plot_loss_curves(
    history: Sequence[dict[str, Any]], out_path: Path, *, kept_fold: int = 0,
    best_epochs: dict[int, int] | None = None, title: str = "Loss curves",
) -> Path:
    """Training (dashed) and validation (solid) loss per epoch for every fold's model, with
    accuracy beside it; the kept model is drawn bold, the others faint, its best epoch marked."""
    folds = sorted({int(row["fold"]) for row in history})
    with_accuracy = all("val_acc" in row and "train_acc" in row for row in history)
    figure = Figure(figsize=(11 if with_accuracy else 6.5, 4.2), layout="constrained")
    panels = figure.subplots(1, 2 if with_accuracy else 1, squeeze=False)[0]
    metrics = [("loss", "Cross-entropy loss")] + ([("acc", "Accuracy")] if with_accuracy else [])
    for axis, (metric, label) in zip(panels, metrics):
        for position, fold in enumerate(folds):
            rows = sorted((r for r in history if int(r["fold"]) == fold), key=lambda r: r["epoch"])
            epochs = [r["epoch"] for r in rows]
            kept = fold == kept_fold
            style = {"color": f"C{position % 10}", "linewidth": 2.2 if kept else 1.0, "alpha": 1.0 if kept else 0.4}
            name = f"fold {fold}" + (" (kept)" if kept else "") if len(folds) > 1 else "model"
            axis.plot(epochs, [r[f"train_{metric}"] for r in rows], linestyle="--", label=f"{name} train", **style)
            axis.plot(epochs, [r[f"val_{metric}"] for r in rows], linestyle="-", label=f"{name} validation", **style)
            best = (best_epochs or {}).get(fold)
            if kept and best is not None:
                value = next((r[f"val_{metric}"] for r in rows if r["epoch"] == best), None)
                if value is not None:
                    axis.plot([best], [value], marker="o", markersize=8, color=style["color"],
                              markeredgecolor="black", linestyle="none", label=f"best epoch ({best})")
        axis.set_xlabel("Epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    # Below the panels, so that it never hides a curve.
    figure.legend(*panels[0].get_legend_handles_labels(), loc="outside lower center", fontsize=8,
                  ncol=min(4, 2 * len(folds) + 1), frameon=False)
    figure.suptitle(title)
    return save(figure, out_path)


def plot_confusion_matrix(
    metrics: ClassMetrics, classes: Sequence[str], out_path: Path, *, n: int = 10,
    title: str = "Most confused classes",
) -> Path:
    """Confusion counts among the ``n`` classes involved in the most mistakes; the colour is the
    share of the true class (row), so small and large classes read alike."""
    chosen = metrics.most_confused_classes(n) or metrics.top_k(n)  # a perfect model has no mistakes
    chosen = sorted(chosen)
    counts = metrics.confusion.matrix(chosen)
    support = metrics.support[chosen][:, None]
    shares = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    labels = [f"{readable(classes[i])} ({i})" for i in chosen]

    size = 1.6 + 0.55 * len(chosen)
    figure = Figure(figsize=(size + 1.8, size), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        if count:
            axis.text(col, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if shares[row, col] > 0.55 else "black")
    axis.set_xticks(range(len(chosen)), labels, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(chosen)), labels, fontsize=8)
    axis.set_xlabel("Predicted class")
    axis.set_ylabel("True class")
    others = metrics.num_classes - len(chosen)
    subtitle = f"{len(chosen)} of {metrics.num_classes} classes" + (" (rows may not sum to 1: mistakes into other classes)" if others else "")
    # A figure-level title: constrained layout keeps it above the axes and the colour bar alike,
    # so the bar's label never runs into it; wrapped to the figure's width.
    import textwrap

    wrap = max(30, int(figure.get_figwidth() * 11))
    figure.suptitle(f"{title}\n{textwrap.fill(subtitle, wrap)}", fontsize=10)
    figure.colorbar(image, ax=axis, shrink=0.8, label="Share of the true class\n(numbers: counts)")
    return save(figure, out_path)


def plot_score_vs_training_images(
    metrics: ClassMetrics, classes: Sequence[str], train_counts: np.ndarray, out_path: Path, *,
    annotate: int = 5, title: str = "Does imbalance explain failure?",
) -> Path:
    """Each measured class's aggregated score against its training images (log scale), marker
    area proportional to its test samples; the ``annotate`` worst and best classes are named."""
    ids = np.flatnonzero(metrics.measured)
    counts = np.asarray(train_counts)[ids]
    scores = metrics.aggregated[ids]
    rho = spearman(counts, scores)

    figure = Figure(figsize=(8, 5), layout="constrained")
    axis = figure.subplots()
    sizes = 25 + 120 * metrics.support[ids] / max(int(metrics.support.max()), 1)
    axis.scatter(counts, scores, s=sizes, c=scores, cmap="RdYlGn", vmin=0, vmax=1,
                 edgecolors="black", linewidths=0.5, alpha=0.85)
    # Classes with the same training images and score sit on one point: name them together.
    named: dict[tuple[float, float], list[str]] = {}
    for class_id in sorted(set(metrics.worst_k(annotate)) | set(metrics.top_k(annotate))):
        point = (float(train_counts[class_id]), round(float(metrics.aggregated[class_id]), 3))
        named.setdefault(point, []).append(readable(classes[class_id]))
    _label_points(axis, figure, named, counts)
    axis.axhline(metrics.macro("aggregated"), color="grey", linestyle="--", linewidth=1,
                 label=f"macro average {metrics.macro('aggregated'):.3f}")
    axis.legend(loc="lower right", fontsize=8, frameon=False)
    # symlog keeps a class with no training images on the axis; log otherwise.
    if counts.size and counts.min() < 1:
        axis.set_xscale("symlog", linthresh=1)
    else:
        axis.set_xscale("log")
    # Image counts read best as plain numbers (5, 10, 20), not powers of ten; within about one
    # decade every integer gets a tick.
    narrow = counts.size and counts.max() <= 30 * max(counts.min(), 1)
    axis.xaxis.set_major_locator(LogLocator(subs="all" if narrow else (1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_ylim(-0.05, 1.05)
    axis.margins(x=0.08)  # room for the names of the outermost classes
    axis.set_xlabel("Training images of the class (log scale)")
    axis.set_ylabel("Aggregated score on the test split")
    axis.grid(alpha=0.3, which="both")
    if counts.size and np.unique(counts).size == 1:
        # One count for every class: imbalance cannot explain anything, and a rank correlation is undefined.
        axis.set_xscale("linear")
        axis.set_xlim(counts[0] - 1, counts[0] + 1)
        axis.set_xticks([counts[0]], [f"{counts[0]:g}"])
        axis.set_xlabel("Training images of the class")
        correlation = f"every class has {counts[0]:g} training images: no imbalance to explain failures"
    elif scores.size and np.unique(scores).size == 1:
        correlation = f"every class scores {scores[0]:.3f}: rank correlation undefined"
    elif ids.size < 3:
        correlation = f"only {ids.size} measured classes: rank correlation undefined"
    else:
        correlation = f"Spearman rank correlation {rho:+.2f} over {ids.size} classes"
    axis.set_title(f"{title}\n{correlation} (marker area: test images)", fontsize=10)
    return save(figure, out_path)


def _label_points(axis, figure: Figure, named: dict[tuple[float, float], list[str]], counts: np.ndarray) -> None:
    """Name the points beside them, never on one another: labels are stacked vertically with a
    thin line to their point, to the right (to the left in the right part of the plot), and kept
    within the axes' height so that none reaches the title. Heights are in axes fractions (the
    y range is fixed), so the stacking holds whatever size the layout gives the axes."""
    y_low, y_high = -0.05, 1.05
    axes_pt = figure.get_figheight() * 72 * 0.62  # a low estimate of the axes' height: generous gaps
    line = 8.5 / axes_pt  # one line of 7-pt text, in axes fraction
    gap = 2.0 / axes_pt
    low_x, high_x = (float(counts.min()), float(counts.max())) if counts.size else (1.0, 1.0)
    span = np.log10(max(high_x, 1) / max(low_x, 1))
    sides: dict[bool, list[tuple[float, float, str]]] = {False: [], True: []}
    for (x, y), names in named.items():
        on_left = bool(span > 0 and np.log10(max(x, 1) / max(low_x, 1)) > 0.6 * span)
        sides[on_left].append((x, y, "\n".join(names)))
    for on_left, labels in sides.items():
        labels.sort(key=lambda item: -item[1])  # the highest point's label on top
        heights = [line * (text.count("\n") + 1) for _, _, text in labels]
        centres: list[float] = []
        for i, ((x, y, text), height) in enumerate(zip(labels, heights)):
            centre = min((y - y_low) / (y_high - y_low), 1.0 - height / 2)
            # Only labels of points close by (about a label's width) can overlap this one.
            for j in range(i):
                near = abs(np.log10(max(x, 1) / max(labels[j][0], 1))) < 0.2 * max(span, 0.5)
                reach = (heights[j] + height) / 2 + gap
                if near and abs(centre - centres[j]) < reach:
                    centre = centres[j] - reach
            centres.append(centre)
        lowest = min((c - h / 2 for c, h in zip(centres, heights)), default=0.0)
        if lowest < 0:  # pushed below the axes: move the labels up together, as far as the top allows
            room = min((1.0 - c - h / 2 for c, h in zip(centres, heights)), default=0.0)
            centres = [c + min(-lowest, max(0.0, room)) for c in centres]
        for (x, y, text), centre in zip(labels, centres):
            axis.annotate(
                text, (x, y), xytext=(-16 if on_left else 16, centre), textcoords=("offset points", "axes fraction"),
                fontsize=7, va="center", ha="right" if on_left else "left", linespacing=1.1,
                arrowprops=dict(arrowstyle="-", color="grey", linewidth=0.5, shrinkA=0, shrinkB=4),
            )


def plot_top_confusions(
    metrics: ClassMetrics, classes: Sequence[str], out_path: Path, *, n: int = 10,
    title: str = "Most common confusions",
) -> Path:
    """The ``n`` most frequent (true, predicted) mistakes as bars, longest first: bar length is
    the count, the label at its end adds the share of the true class's test samples. Stays
    readable for any number of classes, where a confusion matrix cannot."""
    confusions = metrics.confusions(n)
    labels = [f"{readable(classes[c.true])} ({c.true}) → {readable(classes[c.predicted])} ({c.predicted})"
              for c in confusions]
    counts = [c.count for c in confusions]
    figure = Figure(figsize=(8, 1.4 + 0.32 * max(len(confusions), 1)), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(confusions))
    axis.barh(positions, counts, color="C0")
    for position, confusion in zip(positions, confusions):
        axis.text(confusion.count, position, f" {confusion.count} ({confusion.share:.1%} of the true class)",
                  va="center", fontsize=8)
    axis.set_yticks(positions, labels, fontsize=8)
    axis.invert_yaxis()  # the most frequent mistake on top
    axis.set_xlim(0, 1.35 * max(counts, default=1))  # room for the labels
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("Test images of the true class predicted as the other")
    axis.grid(axis="x", alpha=0.3)
    subtitle = (f"{len(confusions)} most frequent of {int(metrics.total - metrics.true_positives.sum())} mistakes"
                f" over {metrics.num_classes} classes" if confusions else "no mistakes")
    axis.set_title(f"{title}\n{subtitle}", fontsize=10)
    return save(figure, out_path)


def plot_score_distribution(
    metrics: ClassMetrics, train_counts: np.ndarray, out_path: Path, *,
    title: str = "Per-class scores",
) -> Path:
    """For many classes: a histogram of the measured classes' aggregated scores, and beside it
    the median score (a bar spanning the middle half of the classes, the number of classes beside
    it) against training images per class."""
    ids = np.flatnonzero(metrics.measured)
    scores = metrics.aggregated[ids]
    counts = np.asarray(train_counts)[ids]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)

    left.hist(scores, bins=np.linspace(0, 1, 21), color="C0", edgecolor="white")
    left.axvline(metrics.macro("aggregated"), color="grey", linestyle="--", linewidth=1,
                 label=f"macro average {metrics.macro('aggregated'):.3f}")
    left.set_xlabel("Aggregated score on the test split")
    left.set_ylabel("Classes")
    left.legend(loc="best", fontsize=8, frameon=False)
    left.grid(axis="y", alpha=0.3)
    left.set_title(f"Distribution over {ids.size} measured classes", fontsize=10)

    if counts.size:
        # One group per distinct training-image count when there are few, else ~12 log-spaced bins.
        distinct = np.unique(counts)
        edges = (np.append(distinct, distinct[-1] + 1) if distinct.size <= 12 else
                 np.unique(np.geomspace(max(distinct[0], 1), distinct[-1] + 1, 13).astype(int)))
        if distinct[0] < edges[0]:  # classes with no training images get their own group
            edges = np.insert(edges, 0, 0)
        inside = [(counts >= low) & (counts < high) for low, high in zip(edges, edges[1:])]
        # Each group: the fewest and most training images of its classes, and their scores.
        groups = [(counts[mask].min(), counts[mask].max(), scores[mask]) for mask in inside if mask.any()]
        x = np.array([np.sqrt(low * high) for low, high, _ in groups], dtype=float)
        quartiles = np.array([np.percentile(group, [25, 50, 75]) for _, _, group in groups])
        right.errorbar(x, quartiles[:, 1], yerr=[quartiles[:, 1] - quartiles[:, 0], quartiles[:, 2] - quartiles[:, 1]],
                       marker="o", capsize=4, color="C0", label="median; bar: middle half of the classes")
        for position, (_, _, group), median in zip(x, groups, quartiles[:, 1]):
            right.annotate(f"{group.size}", (position, median), xytext=(6, 4), textcoords="offset points", fontsize=7)
        right.legend(loc="best", fontsize=8, frameon=False)
    if counts.size and counts.min() < 1:
        right.set_xscale("symlog", linthresh=1)
    else:
        right.set_xscale("log")
    if counts.size:  # one tick per group, named by its range of training images
        right.set_xticks(x, [f"{low}" if high == low else f"{low}-{high}" for low, high, _ in groups],
                         rotation=45 if len(groups) > 6 else 0, fontsize=8)
        right.xaxis.set_minor_locator(NullLocator())
    right.set_ylim(-0.05, 1.05)
    right.set_xlabel("Training images of the class (log scale)")
    right.set_ylabel("Aggregated score")
    right.grid(alpha=0.3, which="both")
    right.set_title(f"Score vs training images: Spearman {spearman(counts, scores):+.2f}", fontsize=10)
    figure.suptitle(title)
    return save(figure, out_path)


def plot_det_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], out_path: Path, *, marks: dict[str, tuple[float, float]] | None = None,
    default: str | None = None, title: str = "DET curve",
) -> Path:
    """FNIR against FPIR (log axes), one curve per score, the run's threshold marked on each.

    ``curves[name] = (fpir, fnir)``; ``marks[name] = (fpir, fnir)`` at the calibrated threshold.
    Rates of 0 cannot sit on a log axis: they are drawn on the dotted floor lines (half the smallest rate measured)."""
    figure = Figure(figsize=(6.2, 5), layout="constrained")
    axis = figure.subplots()
    floor = 1.0
    for fpir, fnir in curves.values():
        positive = np.concatenate([fpir[fpir > 0], fnir[fnir > 0]])
        floor = min(floor, positive.min() if positive.size else 1.0)
    floor /= 2
    for position, (name, (fpir, fnir)) in enumerate(curves.items()):
        style = {"color": f"C{position % 10}", "linewidth": 2.2 if name == default else 1.2}
        label = f"{name} (default)" if name == default else name
        axis.step(np.maximum(fpir, floor), np.maximum(fnir, floor), where="post", label=label, **style)
        if marks and name in marks:
            x, y = marks[name]
            axis.plot([max(x, floor)], [max(y, floor)], marker="o", markersize=7, markeredgecolor="black",
                      linestyle="none", color=style["color"], label=f"{name}: the run's threshold")
    axis.set_xscale("log")
    axis.set_yscale("log")
    # The floor lines stand for a rate of 0; a little room below them keeps a curve lying there visible.
    axis.axhline(floor, color="grey", linewidth=0.8, linestyle=":")
    axis.axvline(floor, color="grey", linewidth=0.8, linestyle=":")
    axis.set_xlim(floor / 1.6, 1.05)
    axis.set_ylim(floor / 1.6, 1.05)
    axis.text(1.0, floor, "rate 0 ", fontsize=7, color="grey", ha="right", va="bottom")
    axis.set_xlabel("FPIR: share of unknown people named as someone")
    axis.set_ylabel("FNIR: share of known people rejected or misnamed")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8, frameon=False)
    axis.set_title(title)
    return save(figure, out_path)

"""The report's figures read well in the cases a first run meets: every class with the same
number of training images (the demo), names that would pile up, a colour bar beside a long title.
Checked on the drawn figure: text boxes inside the axes, not on each other, not on the title."""

import numpy as np
import pytest

import facekit.plots as plots
from facekit.metrics import per_class_metrics

CLASSES = [f"person_{i:02d}" for i in range(8)]


@pytest.fixture
def drawn(monkeypatch):
    """Call a plot function; get its figure back, drawn."""
    figures = []

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def keep(figure, out_path):
        FigureCanvasAgg(figure).draw()
        figures.append(figure)
        return out_path

    monkeypatch.setattr(plots, "save", keep)
    return figures


def _metrics(y_true, y_pred):
    return per_class_metrics(np.array(y_true), np.array(y_pred), len(CLASSES))


# Four test images per class; six perfect classes, two with one mistake each.
Y_TRUE = [c for c in range(8) for _ in range(4)]
Y_PRED = [c if not (c == 4 and i == 0 or c == 7 and i < 2) else (c + 1) % 8 for c in range(8) for i in range(4)]


def _texts(figure):
    axis = figure.axes[0]
    return axis, [t for t in axis.texts if t.get_text()]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5


@pytest.mark.parametrize("counts", [[14] * 8, [5, 7, 9, 12, 20, 30, 50, 80], [3, 3, 3, 3, 40, 40, 40, 40]])
def test_score_vs_training_images_names_stay_apart_and_below_the_title(drawn, tmp_path, counts):
    plots.plot_score_vs_training_images(_metrics(Y_TRUE, Y_PRED), CLASSES, np.array(counts), tmp_path / "p.png", annotate=5)
    figure = drawn[0]
    axis, labels = _texts(figure)
    renderer = figure.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(label, renderer) for label in labels]  # the text alone, not its connector line
    top = axis.get_window_extent(renderer).y1
    assert sum(label.get_text().count("\n") + 1 for label in labels) == 8, "every annotated class is named"
    for i, box in enumerate(boxes):
        assert box.y1 <= top + 1, f"{labels[i].get_text()!r} reaches above the axes, onto the title"
        for j in range(i):
            assert not _overlap(box, boxes[j]), f"{labels[i].get_text()!r} lies on {labels[j].get_text()!r}"


@pytest.mark.slow
def test_no_correlation_is_claimed_where_it_is_undefined(drawn, tmp_path):
    metrics = _metrics(Y_TRUE, Y_PRED)
    plots.plot_score_vs_training_images(metrics, CLASSES, np.full(8, 14), tmp_path / "p.png")
    title = drawn[-1].axes[0].get_title()
    assert "Spearman" not in title and "every class has 14 training images" in title
    perfect = _metrics(Y_TRUE, Y_TRUE)
    plots.plot_score_vs_training_images(perfect, CLASSES, np.arange(1, 9) * 3, tmp_path / "q.png")
    title = drawn[-1].axes[0].get_title()
    assert "Spearman" not in title and "rank correlation undefined" in title
    plots.plot_score_vs_training_images(metrics, CLASSES, np.arange(1, 9) * 3, tmp_path / "r.png")
    assert "Spearman rank correlation" in drawn[-1].axes[0].get_title()


def test_the_colour_bar_label_stays_off_the_title(drawn, tmp_path):
    plots.plot_confusion_matrix(_metrics(Y_TRUE, Y_PRED), CLASSES, tmp_path / "c.png", n=2, title="Most confused classes: demo")
    figure = drawn[0]
    renderer = figure.canvas.get_renderer()
    title = figure._suptitle.get_window_extent(renderer)
    colour_bar = figure.axes[-1]
    label = colour_bar.yaxis.label.get_window_extent(renderer)
    assert not _overlap(title, label)
    assert title.x0 >= -1 and title.x1 <= figure.bbox.x1 + 1, "the title fits the figure's width"

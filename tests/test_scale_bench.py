"""benchmarks/scale.py: the slope fit, the docs table, and a smoke run of --quick."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import scale
from facekit.runs import Run


def test_fit_slope_recovers_the_exponent():
    x = [1000, 10000, 50000]
    assert scale.fit_slope(x, [3 * v for v in x]) == 1.0
    assert scale.fit_slope(x, [v**2 / 7 for v in x]) == 2.0
    assert scale.fit_slope(x, [5.0, 5.0, 5.0]) == 0.0
    assert scale.fit_slope([1000], [1.0]) is None


def test_fabricated_run_is_a_run_folder(tmp_path):
    scale.fabricate_run(tmp_path / "run", classes=30, per_class=4)
    run = Run.open(tmp_path / "run")
    y_true, y_pred = run.test_labels()
    assert y_true.tolist() == list(range(30))  # one test image per class
    assert run.train_counts().tolist() == [2] * 30  # 4 images: 2 train, 1 val, 1 test
    assert run.predictions()["probs"].shape == (30, 30)


def test_update_doc_replaces_only_the_table(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Bench\n\nkept\n\n{scale.TABLE_START}\nold\n{scale.TABLE_END}\n\nafter\n")
    scale.update_doc("| new |\n", doc)
    assert doc.read_text() == f"# Bench\n\nkept\n\n{scale.TABLE_START}\n| new |\n{scale.TABLE_END}\n\nafter\n"


@pytest.mark.slow
def test_quick_mode_measures_every_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "scale.json"
    result = scale.main(["--quick", "--threads", "1", "--out", str(out), "--work", str(tmp_path)])
    assert json.loads(out.read_text()) == result
    rows = result["rows"]
    assert [(r["classes"], r["images"], r["report_run"]) for r in rows] == [(200, 800, "trained"), (400, 1600, "fabricated")]
    assert "train" in rows[0] and "train" not in rows[1]
    for row in rows:
        for step in ("check", "report"):
            assert row[step]["seconds"] > 0 and row[step]["peak_rss_mb"] > 10, (row["classes"], step)
    assert result["slopes"]["train"] == {"seconds": None, "peak_rss_mb": None}  # one trained size: no fit
    assert all(np.isfinite(result["slopes"][step]["seconds"]) for step in ("check", "report"))
    assert list(tmp_path.glob("facekit-scale-*")) == []  # the scratch data is removed
    table = capsys.readouterr().out
    assert "| 200 | 800 |" in table and "| report |" in table

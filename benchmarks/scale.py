"""How facekit scales with identities: index + check, one training epoch, and the report.

    python -m benchmarks.scale --out results/scale.json            # 1k, 10k and 50k classes
    python -m benchmarks.scale --quick --out /tmp/scale.json       # a smoke test (200, 400 classes)

For each number of classes N it writes N identities x M tiny images (16x16 PNG: a random
pattern per identity plus noise), then times, each in its own process so that its peak memory
(ru_maxrss of that process) is its own:

- ``facekit data check`` (index with every image decoded, then the split check; no cache);
- ``facekit train`` for one epoch of the baseline at 40 px (its smallest input; holdout split);
- ``facekit report`` on that run (tables, plots and report.csv).

Training every N takes long on a small CPU; ``--train-up-to`` bounds the classes trained for
real. Above it the report runs on a fabricated run folder (same files as ``facekit train``
writes: config, classes, split, folds, predictions.npz with y_true/y_pred, the top-k classes
and, up to facekit.runs.DENSE_PROBS_LIMIT values, probs), whose predictions are right with
probability 0.6, so that the report measures the same work.
Each measured figure is fitted as ``a * x**slope`` over the classes (log-log least squares):
a slope near 1 means linear growth. Writes JSON and the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
TABLE_START, TABLE_END = "<!-- scale-table:start -->", "<!-- scale-table:end -->"
STEPS = ("check", "train", "report")
IMAGE_SIZE = 16


def write_identities(root: Path, classes: int, per_class: int, seed: int = 0) -> int:
    """``classes`` folders of ``per_class`` 16x16 PNGs; returns the bytes written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width = len(str(classes - 1))
    written = 0
    for identity in range(classes):
        folder = root / f"id_{identity:0{width}d}"
        folder.mkdir(parents=True)
        pattern = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
        for shot in range(per_class):
            noisy = np.clip(pattern + rng.integers(-24, 25, pattern.shape), 0, 255).astype(np.uint8)
            path = folder / f"{shot}.png"
            Image.fromarray(noisy).save(path, compress_level=1)
            written += path.stat().st_size
    return written


def fabricate_run(run_dir: Path, classes: int, per_class: int, seed: int = 0) -> None:
    """A run folder as ``facekit train --split holdout`` leaves it, with made-up predictions:
    one test image per class (the last), right with probability 0.6."""
    from facekit.files import write_json
    from facekit.runs import DENSE_PROBS_LIMIT, TOP_K

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    positions = np.arange(labels.size)
    test = positions[per_class - 1 :: per_class]
    val = positions[per_class - 2 :: per_class] if per_class > 2 else np.array([], dtype=int)
    train = np.setdiff1d(positions, np.concatenate([test, val]))
    width = len(str(classes - 1))
    names = [f"id_{c:0{width}d}" for c in range(classes)]
    write_json(run_dir / "config.json", {
        "arch": "baseline", "loss": "plain", "split": "holdout", "data": "synthetic", "input_size": 40,
        "epochs": 1, "seed": seed, "fabricated": True,
    })
    write_json(run_dir / "classes.json", names)
    write_json(run_dir / "split.json", {
        "strategy": "holdout", "root": "synthetic", "files": [f"{names[c]}/{i % per_class}.png" for i, c in enumerate(labels)],
        "labels": labels.tolist(), "test": test.tolist(),
        "folds": [{"train": train.tolist(), "val": val.tolist()}], "notes": [],
    })
    write_json(run_dir / "history.json", [
        {"fold": 0, "epoch": 1, "train_loss": 9.0, "val_loss": 9.5, "train_acc": 0.5, "val_acc": 0.4,
         "images_per_s": 0.0, "seconds": 0.0},
    ])
    write_json(run_dir / "folds.json", {"kept": 0, "folds": [{"fold": 0, "best_epoch": 1, "val_loss": 9.5, "val_acc": 0.4}]})
    y_true = labels[test]
    y_pred = np.where(rng.random(test.size) < 0.6, y_true, rng.integers(0, classes, test.size))
    # As train writes them: the prediction first among the top k (certain), and the N x C probs
    # only while small; the report must read neither.
    k = min(classes, TOP_K)
    top_probs = np.zeros((test.size, k), dtype=np.float32)
    top_probs[:, 0] = 1.0
    arrays = {
        "index": test, "y_true": y_true, "y_pred": y_pred, "top_probs": top_probs,
        "top_ids": ((y_pred[:, None] + np.arange(k)) % classes).astype(np.int32),
    }  # fmt: skip
    if test.size * classes <= DENSE_PROBS_LIMIT:
        arrays["probs"] = np.zeros((test.size, classes), dtype=np.float32)
        arrays["probs"][np.arange(test.size), y_pred] = 1.0
    np.savez(run_dir / "predictions.npz", **arrays)


# Runs one command and reports its time and peak memory. A process started from this (large)
# benchmark process inherits its memory high-water mark in ru_maxrss (vfork + exec fold the
# parent's peak into the child's), so the command is started from this small launcher instead.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
stderr = process.stderr.read()
_, status, usage = os.wait4(process.pid, 0)
seconds = time.perf_counter() - start
print(json.dumps({"status": os.waitstatus_to_exitcode(status), "seconds": seconds,
                  "maxrss_kib": usage.ru_maxrss, "stderr": stderr.decode(errors="replace")[-2000:]}))
"""


def measure(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``command``; its wall time, its own peak resident memory (ru_maxrss from os.wait4) and
    the machine's 1-minute load average before and after (other jobs slow the time, not the memory)."""
    load_before = os.getloadavg()[0]
    launched = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, capture_output=True, text=True)
    if launched.returncode != 0:
        raise SystemExit(f"the launcher failed:\n{launched.stderr[-2000:]}")
    result = json.loads(launched.stdout)
    if result["status"] != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result['stderr']}")
    return {"seconds": round(result["seconds"], 2), "peak_rss_mb": round(result["maxrss_kib"] / 1024, 1),
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def measure_classes(classes: int, per_class: int, train: bool, work: Path, threads: int) -> dict:
    """The three steps on N = ``classes`` identities of ``per_class`` images."""
    data, run_dir = work / f"data-{classes}", work / f"run-{classes}"
    start = time.perf_counter()
    data_bytes = write_identities(data, classes, per_class)
    row: dict = {
        "classes": classes, "images": classes * per_class, "per_class": per_class,
        "synth_seconds": round(time.perf_counter() - start, 1), "data_mb": round(data_bytes / 2**20, 1),
    }
    env = {**os.environ, "FACEKIT_CACHE_DIR": str(work / f"cache-{classes}"), "OMP_NUM_THREADS": str(threads)}
    facekit = [sys.executable, "-m", "facekit"]
    row["check"] = measure([*facekit, "data", "check", str(data), "--split", "holdout", "--json"], env)
    if train:
        row["train"] = measure([
            *facekit, "train", "--data", str(data), "--arch", "baseline", "--split", "holdout", "--epochs", "1",
            "--input-size", "40", "--batch-size", "64", "--loader", "torch", "--threads", str(threads),
            "--out", str(run_dir), "--quiet",
        ], env)
    else:
        fabricate_run(run_dir, classes, per_class)
    row["report_run"] = "trained" if train else "fabricated"
    row["report"] = measure([*facekit, "report", str(run_dir), "--format", "csv"], env)
    return row


def fit_slope(x: list[float], y: list[float]) -> float | None:
    """Exponent b of y = a * x**b (least squares in log-log); None with fewer than 2 points."""
    if len(x) < 2:
        return None
    slope, _ = np.polyfit(np.log(x), np.log(y), 1)
    return round(float(slope), 2)


def slopes(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per step: the fitted exponents of time and peak memory against the classes."""
    fitted = {}
    for step in STEPS:
        measured = [r for r in rows if step in r]  # train only where it ran for real
        x = [r["classes"] for r in measured]
        fitted[step] = {
            "seconds": fit_slope(x, [r[step]["seconds"] for r in measured]),
            "peak_rss_mb": fit_slope(x, [r[step]["peak_rss_mb"] for r in measured]),
        }
    return fitted


def markdown(result: dict) -> str:
    lines = [
        "| Classes | Images | check s | check MB | train 1 epoch s | train MB | report s | report MB | report on | load average |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        train = r.get("train")
        train_cells = f"{train['seconds']:.1f} | {train['peak_rss_mb']:.0f}" if train else "- | -"
        lines.append(
            f"| {r['classes']:,} | {r['images']:,} | {r['check']['seconds']:.1f} | {r['check']['peak_rss_mb']:.0f}"
            f" | {train_cells} | {r['report']['seconds']:.1f} | {r['report']['peak_rss_mb']:.0f} | {r['report_run']} run"
            f" | {_load_range(r)} |"
        )
    lines += ["", "Fitted exponent b of `a * classes**b` (1 = linear):", "",
              "| Step | time | peak memory |", "|---|---:|---:|"]
    for step, fitted in result["slopes"].items():
        cells = ["-" if fitted[key] is None else f"{fitted[key]:.2f}" for key in ("seconds", "peak_rss_mb")]
        lines.append(f"| {step} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _load_range(row: dict) -> str:
    """The lowest and highest 1-minute load average around this row's steps ('-' for older results)."""
    loads = [x for step in STEPS if step in row for x in row[step].get("load_average", [])]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"


def update_doc(table: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    block = f"{TABLE_START}\n{table}{TABLE_END}"
    if TABLE_START not in text:
        raise SystemExit(f"{doc} has no {TABLE_START} marker: add the scale section first")
    doc.write_text(re.sub(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), lambda _: block, text, flags=re.S))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--per-class", type=int, default=4, help="images per identity (1 test, 1 val, the rest train)")
    parser.add_argument("--train-up-to", type=int, default=10000, help="train for real up to this many classes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 200 and 400 classes of 4 images, the first trained")
    parser.add_argument("--out", type=Path, default=Path("results/scale.json"))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--update-doc", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.per_class, args.train_up_to = [200, 400], 4, 200
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="facekit-scale-", dir=args.work))
    try:
        rows = []
        for classes in args.classes:
            rows.append(measure_classes(classes, args.per_class, classes <= args.train_up_to, work, args.threads))
            print(json.dumps(rows[-1]), flush=True)
        result = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_average": os.getloadavg()[0],
            "image_size": IMAGE_SIZE, "threads": args.threads, "rows": rows, "slopes": slopes(rows),
        }
        from facekit.files import write_json

        write_json(args.out, result)
        print(markdown(result), flush=True)
        if args.update_doc:
            update_doc(markdown(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # 200k small files at 50k classes: this takes a while
    return result


if __name__ == "__main__":
    main()

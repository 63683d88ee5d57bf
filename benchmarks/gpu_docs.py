"""The GPU tables of docs/benchmarks.md and docs/results.md, from a ``benchmarks.gpu`` JSON.

Every table sits between ``<!-- gpu-NAME:start -->`` and ``<!-- gpu-NAME:end -->`` markers and
is replaced whole. A part that did not run (or failed) leaves its cells "not measured" and its
error line under the table, so a partial GPU session still fills what it measured. ``render``
with no result gives the tables as they stand before any GPU run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs"
NOT_MEASURED = "not measured"
TRAIN_ROWS = [
    ("train-resnet18", "ResNet18, frozen backbone"),
    ("train-resnet18-finetune", "ResNet18, `--finetune`"),
    ("train-tronnet", "TronNet"),
    ("train-baseline", "baseline"),
]


def _parts(result: dict | None) -> dict[str, dict]:
    return {p["part"]: p for p in (result or {}).get("parts", [])}


def _ok(parts: dict[str, dict], name: str) -> dict | None:
    part = parts.get(name)
    return part["result"] if part and part["status"] == "ok" else None


def _cell(value: Any, fmt: str = "{:,.0f}") -> str:
    return NOT_MEASURED if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _caption(result: dict | None) -> list[str]:
    if not result:
        return ["Not measured on a GPU for this version yet: `python -m benchmarks.gpu` fills these tables."]
    env, sizes = result["environment"], result["sizes"]
    quick = " (`--quick`: toy sizes on a CPU, not GPU figures)" if result.get("quick") else ""
    return [
        f"Measured {env['date'][:10]} with `python -m benchmarks.gpu`{quick} on {env['gpu'] or 'no GPU'}, "
        f"{env['cpu_count']} cores, load average {env['load_average']} before and {result.get('load_average_after')} after; "
        f"torch {env['torch']}, DALI {env['dali']}; {sizes['input_size']} px, batch {sizes['batch_size']}, "
        f"{sizes['images']} files of `{Path(result['data']).name}` per timed epoch, best of {sizes['rounds']} rounds; "
        f"the whole command took {result['seconds']:.0f} s."
    ]


def _errors(parts: dict[str, dict], names: list[str]) -> list[str]:
    lines = [f"- `{n}`: {parts[n]['error']}" for n in names if n in parts and parts[n]["status"] != "ok"]
    return ["", "Parts that did not finish:", "", *lines] if lines else []


def train_table(result: dict | None) -> list[str]:
    parts = _parts(result)
    header = ["224 px, batch 256, bf16 + channels-last", "(a) device tensors", "(b) facekit, files", "(c) facekit, cache",
              "ImageFolder + DataLoader", "DALI reference", "(b)/(a)", "(c)/(a)"]  # fmt: skip
    rows = []
    for name, title in TRAIN_ROWS:
        got = _ok(parts, name)
        row = got["rows"][0] if got else {}
        rows.append([title, _cell(row.get("device_tensors")), _cell(row.get("loader_files")), _cell(row.get("loader_cached")),
                     _cell(row.get("imagefolder_train")), _cell(row.get("dali_reference_train")),
                     _cell(row.get("efficiency_files"), "{:.2f}"), _cell(row.get("efficiency_cached"), "{:.2f}")])  # fmt: skip
    alone = (_ok(parts, "loader") or {}).get("loaders", {})

    def rate(name: str) -> Any:
        return alone.get(name, {}).get("images_per_s")

    rows.append(["loader alone (no training)", "-", _cell(rate("facekit dali")), _cell(rate("facekit dali + cache")),
                 _cell(rate("torchvision ImageFolder + DataLoader (reference)")), _cell(rate("DALI reference pipeline")), "-", "-"])  # fmt: skip
    lines = [*_caption(result), "", *_table(header, rows)]
    lines += ["", "Columns are training images/s; the two reference columns feed the same training step (their loaders alone: the last row)."]
    return lines + _errors(parts, [n for n, _ in TRAIN_ROWS] + ["loader"])


def compile_table(result: dict | None) -> list[str]:
    parts = _parts(result)
    rows_by_mode = {r["compile"]: r for r in (_ok(parts, "compile") or {}).get("rows", [])}
    header = ["ResNet18, frozen backbone", "compile s", "(a) device tensors", "(b) facekit, files", "(c) facekit, cache",
              "(a) vs eager", "(b)/(a)", "(c)/(a)"]  # fmt: skip
    rows = []
    for mode in ("eager", "default", "reduce-overhead"):
        r = rows_by_mode.get(mode, {})
        rows.append([mode, _cell(r.get("compile_seconds"), "{:.1f}"), _cell(r.get("device_tensors")), _cell(r.get("loader_files")),
                     _cell(r.get("loader_cached")), _cell(r.get("ceiling_vs_eager"), "{:.2f}x"),
                     _cell(r.get("efficiency_files"), "{:.2f}"), _cell(r.get("efficiency_cached"), "{:.2f}")])  # fmt: skip
    hw = {str(r.get("hw_decoder_load")): r for r in (_ok(parts, "hw-decoder") or {}).get("rows", [])}
    hw_rows = []
    for load, title in (("0.0", "0 (nvJPEG's hybrid CPU + GPU decoder only)"), ("1.0", "1 (the hardware decoder first)")):
        r = hw.get(load, {})
        hw_rows.append([title, _cell(r.get("device_tensors")), _cell(r.get("loader_files")), _cell(r.get("efficiency_files"), "{:.2f}")])
    lines = [*_caption(result), "", *_table(header, rows), "", "DALI's hardware JPEG decoder (ResNet18 frozen, eager; DALI's default share is 0.65, the training table's):", ""]
    lines += _table(["hw decoder load", "(a) device tensors", "(b) facekit, files", "(b)/(a)"], hw_rows)
    return lines + _errors(parts, ["compile", "hw-decoder"])


def augment_table(result: dict | None) -> list[str]:
    parts = _parts(result)
    got = _ok(parts, "augment") or {}
    rows = []
    for title, r in zip(("rotation only", "all five: " + ", ".join(f"`{a}`" for a in ("rotate:15", "flip", "crop:0.8", "color:0.4", "erase"))),
                        got.get("rows", [{}, {}])):  # fmt: skip
        rows.append([title, _cell(r.get("device_tensors")), _cell(r.get("loader_files")), _cell(r.get("loader_cached")),
                     _cell(r.get("efficiency_files"), "{:.3f}"), _cell(r.get("efficiency_cached"), "{:.3f}")])  # fmt: skip
    rows.append(["cost (drop in efficiency)", "-", "-", "-", _cell(got.get("cost_files"), "{:.3f}"), _cell(got.get("cost_cached"), "{:.3f}")])
    lines = [*_caption(result), "", *_table(["ResNet18 frozen, augmentation", "(a) device tensors", "(b) files", "(c) cache", "(b)/(a)", "(c)/(a)"], rows)]
    return lines + _errors(parts, ["augment"])


def backends_table(result: dict | None) -> list[str]:
    parts = _parts(result)
    got = _ok(parts, "backends")
    if got is None:
        return [*_caption(result), "", "torch against DALI per use on a GPU: " + NOT_MEASURED + "."] + _errors(parts, ["backends"])
    from benchmarks.backends import table

    return [*_caption(result), "", f"ResNet18 frozen, torch against DALI (median of {len(got['load_averages'])} alternating rounds, range):", "", table(got)]


def study_table(result: dict | None) -> list[str]:
    parts = _parts(result)
    part = parts.get("study")
    got = part.get("result") if part and part["status"] == "ok" else None
    rows = []
    for arch, title in (("tronnet", "TronNet"), ("baseline", "baseline")):
        r = (got or {}).get(arch, {})
        best = f"{r['epochs_done']} ({r['best_epoch']})" if "best_epoch" in r else (str(r["epochs_done"]) if "epochs_done" in r else NOT_MEASURED)
        minutes = _cell(r.get("seconds") and r["seconds"] / 60, "{:.1f}")
        rows.append([title, best, _cell(r.get("balanced_accuracy"), "{:.3f}"), _cell(r.get("macro_f1"), "{:.3f}"),
                     _cell(r.get("accuracy"), "{:.3f}"), minutes, r.get("error", "") if r else ""])  # fmt: skip
    recipe = ("Adam, lr 1e-3, weight decay 5e-3, rotation +-15, batch 64, bf16 + channels-last, 224 px, up to 100 epochs, "
              "no early stopping, the epoch with the lowest validation loss kept; seed 42, test 0.2, validation 0.1")  # fmt: skip
    lines = [*_caption(result), "", f"Recipe: {recipe}.", ""]
    lines += _table(["network", "epochs (best)", "balanced acc.", "macro F1", "accuracy", "minutes", "note"], rows)
    return lines + _errors(parts, ["study"])


BENCHMARKS_BLOCKS = {"gpu-train": train_table, "gpu-compile": compile_table, "gpu-augment": augment_table, "gpu-backends": backends_table}
RESULTS_BLOCKS = {"gpu-study": study_table}


def replace_block(text: str, name: str, lines: list[str]) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"the page has no {start} ... {end} block to fill")
    block = "\n".join([start, *lines, end])
    return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)


def write_docs(result: dict | None, docs: Path = DOCS, *, allow_quick: bool = False) -> list[Path]:
    """Fill every GPU block of docs/benchmarks.md and docs/results.md from ``result``."""
    if result and result.get("quick") and not allow_quick:
        raise SystemExit("a --quick run's toy CPU figures do not go into the docs; run it on a GPU")
    from facekit.files import atomic_write

    written = []
    for page, blocks in (("benchmarks.md", BENCHMARKS_BLOCKS), ("results.md", RESULTS_BLOCKS)):
        path = docs / page
        text = path.read_text()
        for name, render in blocks.items():
            text = replace_block(text, name, render(result))
        atomic_write(path, text.encode())
        written.append(path)
    return written

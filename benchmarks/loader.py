"""Loader throughput on a real data set: facekit's loaders against the two reference loaders.

    python -m benchmarks.loader --data ../shared/data/lfw_min8 --out results/loader.json

Every loader reads the same files with random rotation on (training mode) and yields normalized
NCHW batches on ``--device``; nothing consumes them (the loader alone; ``benchmarks.train`` times
them feeding training). The references are ``benchmarks.anchors``: a torchvision ImageFolder +
DataLoader (every core a worker) and DALI's documented pipeline. Cached loaders are timed on
their later epochs (warm cache); the others on the mean of all epochs. Writes JSON; with
``--write-docs`` also replaces the loader table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.anchors import anchor_loaders, loader_alone
from benchmarks.environment import describe_environment, load_average, replace_marked_table
from facekit.files import write_json

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
TABLE_START, TABLE_END = "<!-- loader-table:start -->", "<!-- loader-table:end -->"
ANCHOR_NAMES = {"imagefolder": "torchvision ImageFolder + DataLoader (reference)", "dali_reference": "DALI reference pipeline"}
BASELINE = ANCHOR_NAMES["imagefolder"]


def run(data: Path, batch_size: int, input_size: int, epochs: int, rotate: float, limit: int | None, device: str = "cpu") -> dict:
    """Every loader's images/s per epoch, with where and on what it ran."""
    from facekit.api import Normalization
    from facekit.data.index import index_dataset
    from facekit.data.loaders import available_backends, make_loader

    index = index_dataset(data)
    files, labels = index.paths(), index.labels
    if limit:
        files, labels = files[:limit], labels[:limit]
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    device = torch.device(device)
    environment = describe_environment()  # the load average before any loader runs
    results: dict[str, dict] = {}

    def record(name: str, loader, warm_from: int) -> None:
        rates = [loader_alone(loader, device) for _ in range(epochs)]
        steady = rates[warm_from:]
        results[name] = {"epochs": rates, "images_per_s": sum(steady) / len(steady)}

    anchors = anchor_loaders(files, labels, size=input_size, batch_size=batch_size, rotate=rotate, norm=norm, device=device)
    for key, build in anchors.items():
        loader = build()
        record(ANCHOR_NAMES[key], loader, warm_from=1)  # epoch 1 starts workers / builds the pipeline
        del loader
    for backend in [b for b in ("torch", "dali") if b in available_backends()]:
        for cache in (False, True):
            loader = make_loader(
                files, labels, batch_size=batch_size, input_size=input_size, normalization=norm, train=True,
                rotate=rotate, backend=backend, cache=cache, device=device,
            )  # fmt: skip
            # With the cache, epoch 1 decodes and fills it; later epochs show the steady state.
            record(f"facekit {backend}" + (" + cache" if cache else ""), loader, warm_from=1 if cache else 0)
            loader.close()

    baseline = results[BASELINE]["images_per_s"]
    for entry in results.values():
        entry["vs_baseline"] = entry["images_per_s"] / baseline
    return {
        "environment": environment,
        "load_average_after": load_average(),
        "device": str(device),
        "data": str(data),
        "images": len(files),
        "batch_size": batch_size,
        "input_size": input_size,
        "epochs": epochs,
        "rotate": rotate,
        "loaders": results,
    }


def markdown_table(report: dict) -> str:
    env = report["environment"]
    where = f"GPU {env['gpu']}" if report["device"].startswith("cuda") else "CPU only"
    lines = [
        f"Measured {env['date'][:10]} on {env['cpu_count']} CPU cores ({env['processor']}), {where}, "
        f"1-minute load average {env['load_average']} before and {report['load_average_after']} after; "
        f"{report['images']} images of `{Path(report['data']).name}`, batch {report['batch_size']}, "
        f"{report['input_size']}x{report['input_size']}, rotation +-{report['rotate']:g} degrees, "
        f"{report['epochs']} epochs; torch {env['torch']}, torchvision {env['torchvision']}, DALI {env['dali']}.",
        "",
        "| loader | images/s | vs ImageFolder | per epoch |",
        "|---|---:|---:|---|",
    ]
    for name, entry in report["loaders"].items():
        epochs = ", ".join(f"{r:.0f}" for r in entry["epochs"])
        lines.append(f"| {name} | {entry['images_per_s']:.0f} | {entry['vs_baseline']:.2f}x | {epochs} |")
    return "\n".join(lines)


def update_doc(report: dict, doc: Path = DOC) -> None:
    """Replace the loader table between its markers in ``doc``."""
    replace_marked_table(doc, TABLE_START, TABLE_END, markdown_table(report))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data set folder (one sub-folder per identity)")
    parser.add_argument("--out", type=Path, default=Path("results/loader.json"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rotate", type=float, default=15.0)
    parser.add_argument("--device", default="cpu", help="where the batches go: cpu or cuda")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (quick runs)")
    parser.add_argument("--write-docs", action="store_true", help="replace the loader table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: cached loaders are timed on a warm epoch")
    report = run(args.data, args.batch_size, args.input_size, args.epochs, args.rotate, args.limit, args.device)
    write_json(args.out, report)
    print(markdown_table(report))
    if args.write_docs:
        update_doc(report)
    return report


if __name__ == "__main__":
    main()

"""Loader throughput on a real data set: a plain torchvision DataLoader against facekit's loaders.

    python -m benchmarks.loader --data ../shared/data/lfw_min8 --out results/loader.json

Every loader reads the same files with random rotation on (training mode) and yields float32
NCHW batches. Cached loaders are timed on their second epoch (warm cache); the others on the
mean of all epochs. Writes JSON and updates the loader table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import time
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
TABLE_START, TABLE_END = "<!-- loader-table:start -->", "<!-- loader-table:end -->"


class _PlainDataset(torch.utils.data.Dataset):
    """The textbook recipe: PIL decode, Resize, RandomRotation, ToTensor, Normalize per image."""

    def __init__(self, files: list[str], size: int, rotate: float):
        import torchvision.transforms as T

        self.files = files
        self.transform = T.Compose(
            [T.Resize((size, size)), T.RandomRotation(rotate), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB")), 0


def _time_epochs(loader, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        seen, start = 0, time.perf_counter()
        for images, _labels in loader:
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def run(data: Path, batch_size: int, input_size: int, epochs: int, rotate: float, limit: int | None) -> dict:
    from facekit.api import Normalization
    from facekit.data.index import index_dataset
    from facekit.data.loaders import available_backends, make_loader

    index = index_dataset(data)
    files, labels = index.paths(), index.labels
    if limit:
        files, labels = files[:limit], labels[:limit]
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    results: dict[str, dict] = {}

    plain = torch.utils.data.DataLoader(
        _PlainDataset(files, input_size, rotate), batch_size=batch_size, shuffle=True, num_workers=2, persistent_workers=True
    )
    rates = _time_epochs(plain, epochs)
    results["torchvision DataLoader (baseline)"] = {"epochs": rates, "images_per_s": sum(rates) / len(rates)}
    del plain

    for backend in [b for b in ("torch", "dali") if b in available_backends()]:
        for cache in (False, True):
            loader = make_loader(
                files, labels, batch_size=batch_size, input_size=input_size, normalization=norm, train=True,
                rotate=rotate, backend=backend, cache=cache,
            )
            rates = _time_epochs(loader, epochs)
            loader.close()
            name = f"facekit {backend}" + (" + cache" if cache else "")
            # With the cache, epoch 1 decodes and fills it; later epochs show the steady state.
            steady = rates[1:] if cache else rates
            results[name] = {"epochs": rates, "images_per_s": sum(steady) / len(steady)}

    baseline = results["torchvision DataLoader (baseline)"]["images_per_s"]
    for entry in results.values():
        entry["vs_baseline"] = entry["images_per_s"] / baseline
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": _versions(),
        "data": str(data),
        "images": len(files),
        "batch_size": batch_size,
        "input_size": input_size,
        "epochs": epochs,
        "rotate": rotate,
        "loaders": results,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions() -> dict[str, str]:
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        import nvidia.dali

        versions["dali"] = nvidia.dali.__version__
    except ImportError:
        versions["dali"] = "not installed"
    return versions


def markdown_table(report: dict) -> str:
    lines = [
        f"Measured {report['date'][:10]} on {report['cpu_count']} CPU cores ({report['processor']}), no GPU; "
        f"{report['images']} images of `{Path(report['data']).name}`, batch {report['batch_size']}, "
        f"{report['input_size']}x{report['input_size']}, rotation +-{report['rotate']:g} degrees, "
        f"{report['epochs']} epochs; torch {report['versions']['torch']}, torchvision "
        f"{report['versions']['torchvision']}, DALI {report['versions']['dali']}.",
        "",
        "| loader | images/s | vs baseline | per epoch |",
        "|---|---:|---:|---|",
    ]
    for name, entry in report["loaders"].items():
        epochs = ", ".join(f"{r:.0f}" for r in entry["epochs"])
        lines.append(f"| {name} | {entry['images_per_s']:.0f} | {entry['vs_baseline']:.2f}x | {epochs} |")
    return "\n".join(lines)


def update_doc(report: dict, doc: Path = DOC) -> None:
    block = f"{TABLE_START}\n{markdown_table(report)}\n{TABLE_END}"
    text = doc.read_text() if doc.exists() else ""
    if TABLE_START in text and TABLE_END in text:
        text = re.sub(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data set folder (one sub-folder per identity)")
    parser.add_argument("--out", type=Path, default=Path("results/loader.json"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rotate", type=float, default=15.0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (quick runs)")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: cached loaders are timed on a warm epoch")
    report = run(args.data, args.batch_size, args.input_size, args.epochs, args.rotate, args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown_table(report))
    if not args.no_doc:
        update_doc(report)


if __name__ == "__main__":
    main()

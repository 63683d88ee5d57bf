"""Is training ever waiting for data? Training images/s per architecture, three ways.

(a) from tensors already on the device: the model's own ceiling;
(b) fed by the real loader from the image files;
(c) fed by the real loader with the decoded-image cache (a warm epoch).
Input efficiency = (b)/(a) and (c)/(a). Also evaluation (inference) images/s.

It runs the engine's own training step (facekit.engine.Trainer), so what it measures is what
`facekit train` does: mixed precision and channels-last on CUDA, fp32 on CPU. The loaders
augment as `facekit train` does: rotation (rotate:15) unless `--augment STEP` (repeatable,
the same steps) chooses others; compare its (b)/(a) with the rotation-only run's. With
--compile, every architecture is measured eagerly and then with the steps compiled in each
mode given (`facekit train --compile`), with the seconds spent compiling. --hw-decoder-load
sets the share of JPEGs DALI's mixed decoder gives the GPU's hardware decoder (0: the hybrid
decoder only).

    python -m benchmarks.train --data ../shared/data/lfw_min8 --arch baseline tronnet resnet18 \
        --images 512 --compile default reduce-overhead --out results/train.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.anchors import ANCHOR_COLUMNS, bench_anchors, repeated_files, synchronize, training_rate, training_setup
from benchmarks.environment import describe_environment, markdown_table
from facekit.api import Normalization
from facekit.config import COMPILE_MODES
from facekit.data.index import index_dataset
from facekit.data.loaders import make_loader
from facekit.engine import Trainer
from facekit.files import atomic_write, write_json

# Face-set-like statistics; the benchmark measures speed, so exact values do not matter.
FACE_STATS = Normalization((0.5, 0.45, 0.4), (0.25, 0.25, 0.25))


class DeviceTensors:
    """A loader stand-in yielding the same batches, already on the device: no input cost at all."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def timed_eval(trainer: Trainer, model, batches: DeviceTensors) -> float:
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.evaluate(model, batches, torch.nn.CrossEntropyLoss())
    synchronize(trainer.device)
    return sum(len(y) for _, y in batches) / (time.perf_counter() - start)


def timed_compile(setup, batches: DeviceTensors) -> float:
    """Seconds the first training and evaluation passes spend compiling (0 when eager); also the warm-up."""
    trainer, model, loss_fn, optimizer, scaler = setup
    synchronize(trainer.device)
    start = time.perf_counter()
    stats = trainer.train_epoch(model, batches, loss_fn, optimizer, scaler)
    trainer.evaluate(model, batches, torch.nn.CrossEntropyLoss())
    synchronize(trainer.device)
    # The training pass counts its compiling calls; evaluation compiles in its one call here.
    return stats.compile_seconds + (time.perf_counter() - start - stats.seconds if trainer.compile_mode else 0.0)


def with_decoder_load(loader, hw_decoder_load: float | None):
    """``loader`` with DALI's hardware-decoder share set (None: as it is)."""
    if hw_decoder_load is None:
        return loader
    loader.close()
    return make_loader(loader.files, loader.labels, options=dataclasses.replace(loader.options, hw_decoder_load=hw_decoder_load))


def bench_arch(arch: str, files: list[str], labels: np.ndarray, num_classes: int, args, compile_mode: str | None) -> dict:
    torch._dynamo.reset()  # each architecture and mode compiles from scratch: honest compile seconds
    setup = training_setup(
        arch, num_classes, data=args.data, batch_size=args.batch_size, input_size=args.input_size, device=args.device,
        finetune=args.finetune, loader=args.loader, workers=args.workers, augment=args.augment, compile=compile_mode,
    )  # fmt: skip
    trainer, model = setup[0], setup[1]
    norm = trainer.arch.normalization or FACE_STATS
    size = trainer.input_size

    n_batches = max(2, len(files) // args.batch_size)
    x = torch.randn(args.batch_size, 3, size, size, device=trainer.device)
    y = torch.randint(0, num_classes, (args.batch_size,), device=trainer.device)
    tensors = DeviceTensors([(x, y)] * n_batches)
    compile_seconds = timed_compile(setup, DeviceTensors([(x, y)] * 2))  # and the warm-up: cuDNN autotune
    row = {"arch": arch, "compile": trainer.compile_mode or "eager", "compile_seconds": compile_seconds}
    row |= {"augment": " ".join(trainer.config.augment), "input_size": size, "batch_size": args.batch_size,
            "images": len(files), "hw_decoder_load": args.hw_decoder_load}  # fmt: skip
    loaders = {}
    for key, cache in (("loader_files", False), ("loader_cached", True)):
        loaders[key] = with_decoder_load(trainer._loader(files, labels, norm, train=True, seed=0), args.hw_decoder_load)
        loaders[key].cache = cache
        row["backend"] = loaders[key].backend
    try:
        loaders["loader_cached"].set_epoch(0)  # fill the cache: its later epochs are the warm ones
        training_rate(setup, loaders["loader_cached"])
        # (a), (b), (c) in turn, several rounds, best of each: a shared machine's load drifts,
        # and a fixed order would hand the drift to whichever is timed last.
        rates: dict[str, list[float]] = {"device_tensors": [], "loader_files": [], "loader_cached": [], "eval": []}
        for round_ in range(args.rounds):
            rates["device_tensors"].append(training_rate(setup, tensors))
            for key, loader in loaders.items():
                loader.set_epoch(round_ + 1)
                rates[key].append(training_rate(setup, loader))
            rates["eval"].append(timed_eval(trainer, model, tensors))
    finally:
        for loader in loaders.values():
            loader.close()
    row |= {key: max(values) for key, values in rates.items()}
    row["rounds"] = rates
    row["efficiency_files"] = row["loader_files"] / row["device_tensors"]
    row["efficiency_cached"] = row["loader_cached"] / row["device_tensors"]
    return row


COLUMNS = [
    ("arch", "architecture", "{}"),
    ("compile", "steps", "{}"),
    ("compile_seconds", "compile s", "{:.1f}"),
    ("backend", "loader", "{}"),
    ("augment", "augmentation", "{}"),
    ("device_tensors", "(a) device tensors img/s", "{:.0f}"),
    ("loader_files", "(b) loader, files img/s", "{:.0f}"),
    ("loader_cached", "(c) loader, cache img/s", "{:.0f}"),
    ("ceiling_vs_eager", "(a) vs eager", "{:.2f}x"),
    ("efficiency_files", "(b)/(a)", "{:.2f}"),
    ("efficiency_cached", "(c)/(a)", "{:.2f}"),
    ("eval", "eval img/s", "{:.0f}"),
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--arch", nargs="+", default=["baseline", "tronnet", "resnet18"])
    parser.add_argument("--images", type=int, default=512, help="Images per timed epoch (files repeat if fewer).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--loader", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--finetune", action="store_true", help="Train every layer of pretrained backbones.")
    parser.add_argument(
        "--augment", action="append", metavar="STEP", help="Training augmentation, repeatable, as `facekit train --augment` (default rotate:15)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds of (a), (b), (c); the best of each counts.")
    parser.add_argument("--anchors", action="store_true", help="Also time the two reference loaders (benchmarks.anchors).")
    parser.add_argument(
        "--compile", nargs="*", choices=COMPILE_MODES, default=None, metavar="MODE",
        help=f"Also measure compiled steps in these modes ({', '.join(COMPILE_MODES)}; none given: default).",
    )  # fmt: skip
    parser.add_argument(
        "--hw-decoder-load", type=float, default=None, metavar="SHARE",
        help="DALI on a GPU: share of JPEGs for the hardware decoder, 0 to 1 (default: DALI's, 0.65; 0: hybrid only).",
    )  # fmt: skip
    parser.add_argument("--out", default="results/train.json")
    args = parser.parse_args(argv)

    index = index_dataset(args.data)
    # Repeat the file list when the data set is shorter than the timed epoch (fast GPUs).
    files, labels = repeated_files(index, args.images)
    columns = COLUMNS + (ANCHOR_COLUMNS if args.anchors else [])
    modes = [None] if args.compile is None else [None, *(args.compile or ["default"])]
    rows = []
    for arch in args.arch:
        eager: dict = {}  # modes[0] is None: the eager row comes first and is every row's reference
        for mode in modes:
            row = bench_arch(arch, files, labels, index.num_classes, args, mode)
            eager = row if mode is None else eager
            row["ceiling_vs_eager"] = row["device_tensors"] / eager["device_tensors"]
            if args.anchors:  # the reference loaders, same files, same run, same training step
                setup = training_setup(
                    arch, index.num_classes, data=args.data, batch_size=args.batch_size, input_size=args.input_size,
                    device=args.device, finetune=args.finetune, compile=mode,
                )  # fmt: skip
                row |= bench_anchors(setup, files, labels, norm=setup[0].arch.normalization or FACE_STATS)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"benchmark": "train", "environment": describe_environment(), "data": str(args.data), "rows": rows}
    write_json(args.out, result)
    table = markdown_table(rows, columns)
    atomic_write(Path(args.out).with_suffix(".md"), (table + "\n").encode())
    print(table)
    return result


if __name__ == "__main__":
    main()

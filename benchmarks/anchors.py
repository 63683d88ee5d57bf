"""The two reference loaders facekit's figures are read against, timed alone and feeding training.

- **ImageFolder + DataLoader**: the textbook torchvision recipe (PIL decode, ``Resize``,
  ``RandomRotation``, ``ToTensor``, ``Normalize`` per image), one worker process per core,
  pinned memory on CUDA, shuffled.
- **DALI reference**: DALI's documented pipeline: ``fn.readers.file`` (shuffling reader),
  ``fn.decoders.image`` (``device="mixed"`` on a GPU), ``fn.resize``, ``fn.rotate`` by a random
  angle and ``fn.crop_mirror_normalize``, through ``DALIGenericIterator``.

Both read the same files at the same size and rotation as facekit's loaders and feed the engine's
own training step (``Trainer.train_epoch``, as ``benchmarks.train`` does).

    python -m benchmarks.anchors --data ../shared/data/lfw_min8 --arch resnet18 --images 2048 \
        --out results/anchors.json

``python -m benchmarks.train ... --anchors`` adds the same columns to its table in one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from benchmarks.environment import describe_environment, markdown_table
from facekit.api import Normalization
from facekit.data.index import index_dataset
from facekit.data.loaders.options import available_cores
from facekit.config import TrainConfig
from facekit.engine import Trainer
from facekit.training.optim import build_optimizer
from facekit.factory import create_model
from facekit.files import write_json

ANCHOR_COLUMNS = [
    ("imagefolder_alone", "ImageFolder alone img/s", "{:.0f}"),
    ("imagefolder_train", "ImageFolder training img/s", "{:.0f}"),
    ("dali_reference_alone", "DALI reference alone img/s", "{:.0f}"),
    ("dali_reference_train", "DALI reference training img/s", "{:.0f}"),
]


class _FolderDataset(torch.utils.data.Dataset):
    """What ``torchvision.datasets.ImageFolder`` does per item, over an explicit file list."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], size: int, rotate: float, norm: Normalization):
        import torchvision.transforms as T

        self.files, self.labels = list(files), [int(label) for label in labels]
        self.transform = T.Compose(
            [T.Resize((size, size)), T.RandomRotation(rotate), T.ToTensor(), T.Normalize(norm.mean, norm.std)]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


class _OnDevice:
    """Batches of a torch DataLoader moved to the device (from pinned memory, without blocking)."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return len(self.loader)


def imagefolder_loader(files, labels, *, size: int, batch_size: int, rotate: float, norm: Normalization, device, workers=None):
    """The torchvision anchor: every core a worker, pinned memory on CUDA."""
    workers = available_cores() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _FolderDataset(files, labels, size, rotate, norm), batch_size=batch_size, shuffle=True,
        num_workers=workers, pin_memory=torch.device(device).type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
    )  # fmt: skip
    return _OnDevice(loader, torch.device(device))


class _DaliReference:
    """DALIGenericIterator's dictionaries as (images, labels) pairs; one epoch per ``iter()``."""

    def __init__(self, iterator, batches: int):
        self.iterator, self.batches = iterator, batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for (batch,) in self.iterator:
            yield batch["images"], batch["labels"].view(-1).long()

    def __len__(self) -> int:
        return self.batches


def dali_reference_loader(files, labels, *, size: int, batch_size: int, rotate: float, norm: Normalization, device, threads=None):
    """DALI's documented image-classification pipeline (reader, mixed decode, GPU augmentation)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    device = torch.device(device)
    on_gpu = device.type == "cuda"

    @pipeline_def(
        batch_size=batch_size, num_threads=threads or min(available_cores(), 8),
        device_id=(device.index or 0) if on_gpu else None, seed=0,
    )  # fmt: skip
    def pipeline():
        encoded, label = fn.readers.file(
            files=list(files), labels=[int(x) for x in labels], random_shuffle=True, pad_last_batch=True, name="Reader"
        )
        images = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=size, resize_y=size)
        images = fn.rotate(images, angle=fn.random.uniform(range=(-rotate, rotate)), keep_size=True, fill_value=0)
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW",
            mean=[255 * m for m in norm.mean], std=[255 * s for s in norm.std],
        )  # fmt: skip
        return images, label.gpu() if on_gpu else label

    pipe = pipeline()
    pipe.build()
    iterator = DALIGenericIterator(
        [pipe], ["images", "labels"], reader_name="Reader", last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True
    )
    return _DaliReference(iterator, -(-len(files) // batch_size))


def anchor_loaders(files, labels, *, size, batch_size, rotate, norm, device) -> dict[str, Callable[[], object]]:
    """Name -> a function building that anchor (the DALI one only where DALI imports)."""
    from facekit.data.loaders import available_backends

    common = dict(size=size, batch_size=batch_size, rotate=rotate, norm=norm, device=device)
    builders: dict[str, Callable[[], object]] = {"imagefolder": lambda: imagefolder_loader(files, labels, **common)}
    if "dali" in available_backends():
        builders["dali_reference"] = lambda: dali_reference_loader(files, labels, **common)
    return builders


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_alone(loader, device: torch.device) -> float:
    """Images/s of one epoch with nothing consuming the batches."""
    synchronize(device)
    seen, start = 0, time.perf_counter()
    for _images, labels in loader:
        seen += len(labels)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def training_setup(
    arch: str, num_classes: int, *, data, batch_size: int, input_size, device: str, finetune: bool,
    loader: str = "auto", workers: int | None = None, augment: list[str] | None = None, compile: str | None = None,
):  # fmt: skip
    """The engine's trainer and a fresh model, optimizer and scaler, as ``facekit train`` sets them up.

    ``augment``: the training augmentation steps, as ``--augment`` takes them (None: rotate:15).
    """
    trainer = Trainer(TrainConfig(
        data=Path(data), arch=arch, batch_size=batch_size, device=device, augment=augment, loader=loader,
        workers=workers, input_size=input_size, finetune=finetune, compile=compile,
    ))  # fmt: skip
    torch.manual_seed(0)
    model = create_model(
        arch, num_classes=num_classes, input_size=trainer.input_size, finetune=finetune, pretrained=False,
        device=trainer.device, channels_last=trainer.channels_last,
    )  # fmt: skip
    optimizer = build_optimizer(model, trainer.arch, lr=1e-4, weight_decay=0.0)
    scaler = torch.amp.GradScaler(trainer.device.type, enabled=trainer.amp and not torch.cuda.is_bf16_supported())
    return trainer, model, torch.nn.CrossEntropyLoss(), optimizer, scaler


def training_rate(setup, loader) -> float:
    """Images/s of one full training epoch fed by ``loader`` (synchronised, so GPU work counts)."""
    trainer, model, loss_fn, optimizer, scaler = setup
    synchronize(trainer.device)
    start = time.perf_counter()
    seen = trainer.train_epoch(model, loader, loss_fn, optimizer, scaler).images
    synchronize(trainer.device)
    return seen / (time.perf_counter() - start)


def bench_anchors(setup, files, labels, *, norm: Normalization, rotate: float = 15.0, rounds: int = 2) -> dict:
    """Per anchor: the loader alone and feeding training, best of ``rounds`` epochs after a warm-up."""
    trainer = setup[0]
    row: dict[str, float] = {}
    builders = anchor_loaders(
        files, labels, size=trainer.input_size, batch_size=trainer.config.batch_size, rotate=rotate, norm=norm,
        device=trainer.device,
    )  # fmt: skip
    for name, build in builders.items():
        loader = build()
        loader_alone(loader, trainer.device)  # warm-up: worker start-up, pipeline build, first reads
        row[f"{name}_alone"] = max(loader_alone(loader, trainer.device) for _ in range(rounds))
        row[f"{name}_train"] = max(training_rate(setup, loader) for _ in range(rounds))
        del loader
    return row


def repeated_files(index, images: int) -> tuple[list[str], np.ndarray]:
    """``images`` files of the index, repeating it when it is shorter."""
    order = list(itertools.islice(itertools.cycle(range(len(index.files))), images))
    paths = index.paths()  # once: it builds the whole list
    return [paths[i] for i in order], index.labels[order]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--arch", nargs="+", default=["resnet18"])
    parser.add_argument("--images", type=int, default=512, help="Images per timed epoch (files repeat if fewer).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--finetune", action="store_true", help="Train every layer of pretrained backbones.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="results/anchors.json")
    args = parser.parse_args(argv)

    index = index_dataset(args.data)
    files, labels = repeated_files(index, args.images)
    norm = Normalization((0.5, 0.45, 0.4), (0.25, 0.25, 0.25))
    rows = []
    for arch in args.arch:
        setup = training_setup(
            arch, index.num_classes, data=args.data, batch_size=args.batch_size, input_size=args.input_size,
            device=args.device, finetune=args.finetune,
        )  # fmt: skip
        row = {"arch": arch, "images": len(files), "batch_size": args.batch_size, "input_size": setup[0].input_size}
        row |= bench_anchors(setup, files, labels, norm=norm, rounds=args.rounds)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"benchmark": "anchors", "environment": describe_environment(), "data": str(args.data), "rows": rows}
    write_json(args.out, result)
    print(markdown_table(rows, [("arch", "architecture", "{}"), *ANCHOR_COLUMNS]))
    return result


if __name__ == "__main__":
    main()

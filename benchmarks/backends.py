"""Which loader backend should ``--loader auto`` pick on this device, for training and for evaluation?

    python -m benchmarks.backends --data ../shared/data/lfw_min8 --out results/backends.json

Every backend that works here (torch, and DALI where it imports) is timed in ONE process, in
alternating rounds (torch then DALI, then DALI then torch, ...), so a shared machine's drifting
load falls on both alike. Per round and backend, on the same files:

- **alone**: a training loader (rotation +-15) with nothing consuming its batches;
- **train, files / train, cache**: the engine's own training step (``Trainer.train_epoch``, as
  ``facekit train`` runs it) fed from the JPEG files, then from a warm decoded-image cache;
- **eval, files**: the engine's evaluation pass (``Trainer.evaluate``: no augmentation, what
  validation, the test split and ``facekit predict`` run) fed from the files.

It reports every round's images/s, the median per backend and use, the ratio torch / DALI of
the medians, and the 1-minute load average at each round. The rule that ``--loader auto``
follows lives in ``facekit.data.loaders.choice``; this benchmark is how its figures are made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.anchors import loader_alone, repeated_files, synchronize, training_rate, training_setup
from benchmarks.environment import describe_environment, load_average, markdown_table
from facekit.api import Normalization
from facekit.data.index import index_dataset
from facekit.data.loaders import available_backends, make_loader
from facekit.files import write_json

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
FACE_STATS = Normalization((0.5, 0.45, 0.4), (0.25, 0.25, 0.25))
USES = ("alone", "train_files", "train_cache", "eval_files")


def evaluation_rate(setup, loader) -> float:
    """Images/s of one evaluation pass fed by ``loader``."""
    trainer, model = setup[0], setup[1]
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.evaluate(model, loader, torch.nn.CrossEntropyLoss().to(trainer.device))
    synchronize(trainer.device)
    return len(loader.files) / (time.perf_counter() - start)


def compare(
    data: Path, *, arch: str = "baseline", images: int = 256, eval_images: int = 512, batch_size: int = 32,
    input_size: int | None = None, device: str = "auto", rounds: int = 5, backends: list[str] | None = None,
) -> dict:  # fmt: skip
    """Every round's images/s per backend and use, alternating the backends' order each round."""
    index = index_dataset(data)
    files, labels = repeated_files(index, images)
    eval_files, eval_labels = repeated_files(index, eval_images)
    backends = backends or [b for b in ("torch", "dali") if b in available_backends()]
    environment = describe_environment()
    setup = training_setup(arch, index.num_classes, data=data, batch_size=batch_size, input_size=input_size,
                           device=device, finetune=False)  # fmt: skip
    trainer = setup[0]
    norm = trainer.arch.normalization or FACE_STATS
    loaders = {}
    for backend in backends:
        train = trainer._loader(files, labels, norm, train=True, seed=0)
        evaluation = trainer._loader(eval_files, eval_labels, norm, train=False, seed=0)
        train.close(), evaluation.close()  # built with the trainer's own options; rebuilt per backend below
        loaders[backend] = {
            "files": make_loader(files, labels, options=dataclasses.replace(train.options, backend=backend, cache="off")),
            "cache": make_loader(files, labels, options=dataclasses.replace(train.options, backend=backend, cache="auto")),
            "eval": make_loader(eval_files, eval_labels, options=dataclasses.replace(evaluation.options, backend=backend, cache="off")),
        }  # fmt: skip
    rates: dict[str, dict[str, list[float]]] = {b: {use: [] for use in USES} for b in backends}
    loads: list[float | None] = []
    try:
        for backend in backends:  # warm-up: cuDNN / pipelines / the cache's first (filling) epoch
            training_rate(setup, loaders[backend]["cache"])
            evaluation_rate(setup, loaders[backend]["eval"])
        for round_ in range(rounds):
            loads.append(load_average())
            order = backends if round_ % 2 == 0 else backends[::-1]
            for backend in order:
                own = loaders[backend]
                own["files"].set_epoch(round_ + 1)
                rates[backend]["alone"].append(loader_alone(own["files"], trainer.device))
                for key, use in (("files", "train_files"), ("cache", "train_cache")):
                    own[key].set_epoch(round_ + 1)
                    rates[backend][use].append(training_rate(setup, own[key]))
                rates[backend]["eval_files"].append(evaluation_rate(setup, own["eval"]))
            print(json.dumps({"round": round_ + 1, "load_average": loads[-1],
                              **{b: {u: round(r[u][-1]) for u in USES} for b, r in rates.items()}}), flush=True)  # fmt: skip
    finally:
        for own in loaders.values():
            for loader in own.values():
                loader.close()
    medians = {b: {use: statistics.median(values) for use, values in r.items()} for b, r in rates.items()}
    ratio = paired = None
    if {"torch", "dali"} <= set(backends):
        ratio = {use: medians["torch"][use] / medians["dali"][use] for use in USES}
        # Within a round the two backends ran back to back, under nearly the same load: the
        # median of the per-round ratios is the figure a drifting load disturbs least.
        paired = {use: [t / d for t, d in zip(rates["torch"][use], rates["dali"][use])] for use in USES}
    return {
        "benchmark": "backends", "environment": environment, "load_averages": loads, "load_average_after": load_average(),
        "data": str(data), "arch": arch, "device": str(trainer.device), "images": images, "eval_images": eval_images,
        "batch_size": batch_size, "input_size": trainer.input_size, "rounds": rates, "median": medians,
        "torch_over_dali": ratio, "torch_over_dali_per_round": paired,
        "torch_over_dali_paired_median": None if paired is None else {u: statistics.median(v) for u, v in paired.items()},
    }  # fmt: skip


def table(result: dict) -> str:
    rows = []
    for backend, medians in result["median"].items():
        row = {"backend": backend}
        for use in USES:
            values = result["rounds"][backend][use]
            row[use] = f"{medians[use]:.0f} ({min(values):.0f}-{max(values):.0f})"
        rows.append(row)
    if result["torch_over_dali"]:
        rows.append({"backend": "torch / dali, of the medians", **{u: f"{v:.2f}" for u, v in result["torch_over_dali"].items()}})
        paired = result["torch_over_dali_per_round"]
        rows.append({"backend": "torch / dali, per round (median, range)", **{
            u: f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for u, v in paired.items()}})  # fmt: skip
    columns = [("backend", "backend", "{}"), ("alone", "alone img/s", "{}"), ("train_files", "train, files img/s", "{}"),
               ("train_cache", "train, cache img/s", "{}"), ("eval_files", "eval, files img/s", "{}")]  # fmt: skip
    return markdown_table(rows, columns)


def caption(result: dict) -> str:
    env = result["environment"]
    loads = [x for x in result["load_averages"] + [result["load_average_after"]] if x is not None]
    where = f"GPU {env['gpu']}" if result["device"].startswith("cuda") else "CPU only"
    return (
        f"Measured {env['date'][:10]} with `python -m benchmarks.backends` on {env['cpu_count']} CPU cores, {where}, "
        f"{env['torch_threads']} torch thread(s), 1-minute load average {min(loads):.1f} to {max(loads):.1f} during the run; "
        f"`{result['arch']}`, {result['input_size']} px, batch {result['batch_size']}, {result['images']} images per timed "
        f"training epoch, {result['eval_images']} per evaluation pass, {len(result['load_averages'])} alternating rounds; "
        f"images/s as median (lowest-highest); torch {env['torch']}, DALI {env['dali']}."
    )


def update_doc(result: dict, doc: Path = DOC) -> None:
    """Replace the CPU figures behind ``--loader auto`` in docs/benchmarks.md with this run's."""
    from benchmarks.gpu_docs import replace_block

    block = "gpu-backends" if result["device"].startswith("cuda") else "loader-choice-cpu"
    doc.write_text(replace_block(doc.read_text(), block, [caption(result), "", table(result)]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--arch", default="baseline")
    parser.add_argument("--images", type=int, default=256, help="images per timed training epoch (files repeat if fewer)")
    parser.add_argument("--eval-images", type=int, default=512, help="images per timed evaluation pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--out", type=Path, default=Path("results/backends.json"))
    parser.add_argument("--write-docs", action="store_true", help="replace the CPU figures behind --loader auto in docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = compare(
        args.data, arch=args.arch, images=args.images, eval_images=args.eval_images, batch_size=args.batch_size,
        input_size=args.input_size, device=args.device, rounds=args.rounds,
    )  # fmt: skip
    write_json(args.out, result)
    print(f"load average per round: {result['load_averages']}, after: {result['load_average_after']}")
    print(table(result))
    if args.write_docs:
        update_doc(result)
    return result


if __name__ == "__main__":
    main()

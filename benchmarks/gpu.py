"""Everything a GPU session measures, in one command, one JSON, within a time budget.

    python -m benchmarks.gpu --data DATA/lfw_min8 --out results/gpu.json        # on the GPU machine
    python -m benchmarks.gpu --from results/gpu.json --write-docs               # fill the docs' GPU tables
    python -m benchmarks.gpu --quick --out /tmp/gpu-quick.json                  # every part, toy sizes, CPU

A GPU is lent now and then, for minutes, often without network: so the whole measurement is one
prepared command. It prints what this machine lacks, then runs its parts in order of importance,
each in its own process with its own time cap (a part that fails, crashes or runs out of time is
recorded with one error line, and the next one runs), and stops starting parts when the budget
(``--budget``, 360 s) is spent; the parts not run are recorded as skipped. Sizes on a GPU: 224 px,
batch 256, bf16 + channels-last (the engine's CUDA defaults), ``--images`` files per timed epoch.

Parts (``--parts`` picks some):

- ``tests``: ``pytest tests/test_gpu.py`` (DALI's mixed pipeline, the GPU rotate + normalize,
  a short GPU training run);
- ``train-resnet18``, ``train-resnet18-finetune``, ``train-tronnet``, ``train-baseline``:
  ``benchmarks.train --anchors``: (a) device tensors, (b) facekit from files, (c) from the
  decoded-image cache, and the two reference loaders feeding the same step;
- ``compile``: ResNet18's steps eager, ``--compile default`` and ``reduce-overhead``;
- ``augment``: ResNet18 fed with rotation only, then with all five built-in augmentations;
  the cost is the drop in (b)/(a) and (c)/(a);
- ``study``: the study's TronNet and baseline from scratch with the best recipe known (Adam
  1e-3, weight decay 5e-3, rotation +-15, batch 64, 100 epochs, 224 px, no early stopping, the
  checkpoint with the lowest validation loss kept; seed 42, test 0.2, val 0.1), both at once;
- ``loader``: ``benchmarks.loader``: every loader alone (no training);
- ``hw-decoder``: ResNet18 fed by DALI with the hardware JPEG decoder off (load 0) and on (1);
- ``backends``: ``benchmarks.backends``: torch against DALI per use on this device, the
  figures behind ``--loader auto``'s CUDA entries.

``--quick`` runs every part at toy sizes on the CPU on a synthetic JPEG set (CI runs it, so the
command never rots); its compiled steps use torch.compile's ``eager`` backend (graph capture
without code generation, seconds instead of minutes on a CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEFAULT_BUDGET = 360.0
HANG_FOR_TESTS = "BENCHMARKS_GPU_HANG"  # a part's name: that part sleeps (tests of the time caps)
# What facekit or a part uses, by import name: (what needs it). Optional features' packages are
# listed to say what this machine cannot do; facekit imports them only where they are used.
PACKAGES = {
    "nvidia.dali": "the DALI loader and DALI's reference pipeline",
    "pytest": "the tests part",
    "triton": "--compile on CUDA",
    "torchvision": "the torch loader and the ImageFolder reference",
    "onnx": "facekit export (ONNX)",
    "onnxruntime": "checking ONNX exports",
    "tensorboard": "the TensorBoard tracker",
    "mlflow": "the MLflow tracker",
    "yaml": "config files",
}
FIVE_AUGMENTATIONS = ["rotate:15", "flip", "crop:0.8", "color:0.4", "erase"]
# The study's recipe on a GPU (docs/results.md; 0.566 balanced accuracy for TronNet in a
# standalone probe with rotation only, Adam 1e-3, weight decay 5e-3, 100 epochs).
STUDY_RECIPE = ["--lr", "1e-3", "--weight-decay", "5e-3", "--augment", "rotate:15", "--batch-size", "64",
                "--seed", "42", "--test-size", "0.2", "--val-size", "0.1", "--split", "holdout", "--patience", "0"]  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the GPU's real sizes, or ``--quick``'s toy ones."""

    device: str
    input_size: int
    batch_size: int
    images: int
    rounds: int
    loader_limit: int
    study_epochs: int
    study_input: int

    @classmethod
    def for_run(cls, quick: bool, images: int | None) -> "Sizes":
        if quick:
            return cls("cpu", 40, 8, images or 16, 1, 16, 2, 40)
        return cls("cuda", 224, 256, images or 4096, 2, 4096, 100, 224)


@dataclass(frozen=True)
class Part:
    name: str
    cap_s: float  # on the GPU
    quick_cap_s: float  # --quick on a CPU: generous, a smoke test must not fail because the machine is busy
    what: str


PARTS = [
    Part("tests", 45, 180, "pytest tests/test_gpu.py"),
    Part("train-resnet18", 30, 180, "ResNet18 frozen: (a) tensors, (b) files, (c) cache, reference loaders"),
    Part("train-resnet18-finetune", 30, 180, "ResNet18 --finetune: (a), (b), (c), reference loaders"),
    Part("train-tronnet", 30, 180, "TronNet: (a), (b), (c), reference loaders"),
    Part("train-baseline", 25, 180, "baseline: (a), (b), (c), reference loaders"),
    Part("compile", 75, 180, "ResNet18 steps eager / default / reduce-overhead"),
    Part("augment", 25, 180, "ResNet18: rotation only against all five augmentations"),
    Part("study", 110, 180, "TronNet and baseline from scratch, 100 epochs, 224 px, lfw_min8"),
    Part("loader", 20, 180, "every loader alone, no training"),
    Part("hw-decoder", 25, 180, "DALI's hardware JPEG decoder off / on"),
    Part("backends", 25, 180, "torch against DALI per use (--loader auto's figures)"),
]
PART_NAMES = [part.name for part in PARTS]


def missing_packages() -> dict[str, str]:
    """Import name -> what needs it, for every package in PACKAGES this Python cannot import."""
    missing = {}
    for name, needed_by in PACKAGES.items():
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or a broken one
            found = False
        if not found:
            missing[name] = needed_by
    return missing


# ----------------------------------------------------------------------------------- the parts
# Each runs in a child process (``--run-part``) and returns a JSON-able dict.


def _train_rows(args: list[str], out: Path) -> list[dict]:
    from benchmarks import train

    return train.main([*args, "--out", str(out)])["rows"]


def _train_args(data: str, sizes: Sizes, arch: str, *extra: str) -> list[str]:
    return ["--data", data, "--arch", arch, "--images", str(sizes.images), "--batch-size", str(sizes.batch_size),
            "--input-size", str(sizes.input_size), "--device", sizes.device, "--rounds", str(sizes.rounds), *extra]  # fmt: skip


def part_tests(data: str, sizes: Sizes, work: Path, deadline: float) -> dict:
    if importlib.util.find_spec("pytest") is None:
        raise RuntimeError("pytest is not installed here (pack its wheel with the GPU parts)")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, deadline - time.time()),
    )  # fmt: skip
    print(done.stdout[-3000:], flush=True)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", summary)}
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest tests/test_gpu.py: {summary or done.stderr.strip()[-300:]}")
    return {"summary": summary, **counts}


def _train_part(arch: str, *extra: str) -> Callable[..., dict]:
    def run(data: str, sizes: Sizes, work: Path, deadline: float) -> dict:
        return {"rows": _train_rows(_train_args(data, sizes, arch, "--anchors", *extra), work / "train.json")}

    return run


def part_compile(data: str, sizes: Sizes, work: Path, deadline: float) -> dict:
    return {"rows": _train_rows(_train_args(data, sizes, "resnet18", "--compile", "default", "reduce-overhead"), work / "compile.json")}


def part_augment(data: str, sizes: Sizes, work: Path, deadline: float) -> dict:
    plain = _train_rows(_train_args(data, sizes, "resnet18"), work / "rotation.json")[0]
    five = _train_rows(_train_args(data, sizes, "resnet18", *[f"--augment={a}" for a in FIVE_AUGMENTATIONS]), work / "five.json")[0]
    return {
        "rows": [plain, five],
        "cost_files": plain["efficiency_files"] - five["efficiency_files"],
        "cost_cached": plain["efficiency_cached"] - five["efficiency_cached"],
    }


def part_hw_decoder(data: str, sizes: Sizes, work: Path, deadline: float) -> dict:
    rows = []
    for load in ("0", "1"):
        rows += _train_rows(_train_args(data, sizes, "resnet18", "--hw-decoder-load", load), work / f"hw{load}.json")
    return {"rows": rows}


def part_loader(data: str, sizes: Sizes, work: Path, deadline: float) -> dict:
    from benchmarks import loader

    return loader.run(Path(data), sizes.batch_size, sizes.input_size, 2, 15.0, sizes.loader_limit, sizes.device)


def part_backends(data: str, sizes: Sizes, work: Path, deadline: float) -> dict:
    from benchmarks import backends

    return backends.compare(Path(data), arch="resnet18", images=sizes.images, eval_images=sizes.images,
                            batch_size=sizes.batch_size, input_size=sizes.input_size, device=sizes.device,
                            rounds=max(2, sizes.rounds + 1))  # fmt: skip


def part_study(data: str, sizes: Sizes, work: Path, deadline: float) -> dict:
    """Both networks at once (each leaves most of an H200 idle), stopped at the deadline."""
    runs = {}
    for arch in ("tronnet", "baseline"):
        out = work / arch
        command = [sys.executable, "-m", "facekit", "train", "--data", data, "--arch", arch, "--epochs", str(sizes.study_epochs),
                   "--input-size", str(sizes.study_input), "--device", sizes.device, "--cache", "auto", "--out", str(out),
                   "--quiet", *STUDY_RECIPE]  # fmt: skip
        log = open(work / f"{arch}.log", "w")
        runs[arch] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), out, log)
    start = time.time()
    result: dict[str, Any] = {"recipe": " ".join(STUDY_RECIPE), "epochs": sizes.study_epochs, "input_size": sizes.study_input}
    for arch, (process, out, log) in runs.items():
        try:
            process.wait(timeout=max(1.0, deadline - time.time() - 3))  # 3 s to read what finished
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        result[arch] = _study_row(out, process.returncode, time.time() - start, work / f"{arch}.log")
    return result


def _study_row(run_dir: Path, returncode: int, seconds: float, log: Path) -> dict:
    from facekit.runs import Run

    row: dict[str, Any] = {"seconds": round(seconds, 1), "finished": returncode == 0}
    try:
        run = Run(run_dir)
        history = run.history
        row["epochs_done"] = max((r["epoch"] for r in history), default=0)
        if returncode == 0 and run.has_predictions:
            from facekit.metrics import per_class_metrics

            y_true, y_pred = run.test_labels()
            metrics = per_class_metrics(y_true, y_pred, len(run.classes))
            row |= {"balanced_accuracy": metrics.balanced_accuracy, "macro_f1": metrics.macro("f1"),
                    "accuracy": metrics.overall_accuracy, "best_epoch": run.folds["folds"][0]["best_epoch"],
                    "train_images_per_s": _median([r.get("images_per_s") for r in history])}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - no run folder yet: the error below says why
        row["error"] = f"{type(exc).__name__}: {exc}"
    if returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        row["error"] = f"stopped at the time cap after {row.get('epochs_done', 0)} epochs" if returncode < 0 else (
            f"exit {returncode}: {tail[0] if tail else ''}")
    return row


def _median(values: list) -> float | None:
    values = sorted(v for v in values if v)
    return values[len(values) // 2] if values else None


RUNNERS: dict[str, Callable[..., dict]] = {
    "tests": part_tests,
    "train-resnet18": _train_part("resnet18"),
    "train-resnet18-finetune": _train_part("resnet18", "--finetune"),
    "train-tronnet": _train_part("tronnet"),
    "train-baseline": _train_part("baseline"),
    "compile": part_compile,
    "augment": part_augment,
    "study": part_study,
    "loader": part_loader,
    "hw-decoder": part_hw_decoder,
    "backends": part_backends,
}


def run_part_here(name: str, data: str, sizes: Sizes, work: Path, deadline: float, result_file: Path, quick: bool) -> int:
    """The child process: run one part, write {"result": ...} or {"error": ...} to result_file."""
    if quick:
        import torch

        torch.set_num_threads(1)
        _compile_without_codegen()
    if os.environ.get(HANG_FOR_TESTS) == name:  # the tests' stand-in for a part that never returns
        time.sleep(3600)
    try:
        result = {"result": RUNNERS[name](data, sizes, work, deadline)}
    except BaseException as exc:  # noqa: BLE001 - recorded as the part's one error line
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    result_file.write_text(json.dumps(result, default=str))
    return 0 if "result" in result else 1


def _compile_without_codegen() -> None:
    """--quick: torch.compile with the ``eager`` backend (dynamo's graph capture, no code generation)."""
    import torch

    original = torch.compile

    def compile_eagerly(model=None, **options):
        options.pop("mode", None)
        options["backend"] = "eager"
        return original(model, **options) if model is not None else original(**options)

    torch.compile = compile_eagerly


# ------------------------------------------------------------------------------ the orchestra
def run_parts(data: str, parts: list[str], sizes: Sizes, *, quick: bool, budget: float, work: Path) -> list[dict]:
    start = time.time()
    records = []
    for part in [p for p in PARTS if p.name in parts]:
        left = budget - (time.time() - start)
        cap = min(part.quick_cap_s if quick else part.cap_s, left)
        record: dict[str, Any] = {"part": part.name, "what": part.what, "cap_s": round(cap, 1)}
        if cap < 5:
            record |= {"status": "skipped", "error": f"skipped: the {budget:.0f} s budget was spent"}
            print(f"[gpu] {part.name}: skipped (budget spent)", flush=True)
            records.append(record)
            continue
        print(f"[gpu] {part.name}: {part.what} (cap {cap:.0f} s, {left:.0f} s of the budget left)", flush=True)
        part_dir = work / part.name
        part_dir.mkdir(parents=True, exist_ok=True)
        result_file = part_dir / "result.json"
        began = time.time()
        deadline = began + cap
        command = [sys.executable, "-m", "benchmarks.gpu", "--run-part", part.name, "--data", data,
                   "--work", str(part_dir), "--deadline", str(deadline), "--images", str(sizes.images)]  # fmt: skip
        if quick:
            command.append("--quick")
        # --quick shares a small CPU: one torch thread per process, as the test suite runs.
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if quick else None
        process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, env=env)
        try:
            process.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        record["seconds"] = round(time.time() - began, 1)
        outcome = json.loads(result_file.read_text()) if result_file.exists() else None
        if outcome is None:
            ran_out = record["seconds"] >= cap - 0.5
            record |= {"status": "failed", "error": f"timed out after {cap:.0f} s" if ran_out else f"the part's process died (exit {process.returncode})"}
        elif "error" in outcome:
            record |= {"status": "failed", "error": outcome["error"]}
        else:
            record |= {"status": "ok", "result": outcome["result"]}
        print(f"[gpu] {part.name}: {record['status']} in {record['seconds']:.0f} s" + (f": {record['error']}" if "error" in record else ""), flush=True)
        records.append(record)
    return records


def describe_machine() -> dict:
    from benchmarks.environment import describe_environment

    return describe_environment()


def quick_data(work: Path) -> str:
    from facekit.data.synth import make_synthetic_dataset

    return str(make_synthetic_dataset(work / "faces", identities=4, per_identity=8, size=64, fmt="jpg"))


def main(argv: list[str] | None = None) -> dict | int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the data set (lfw_min8); --quick makes a synthetic one when not given")
    parser.add_argument("--out", type=Path, default=Path("results/gpu.json"))
    parser.add_argument("--quick", action="store_true", help="every part at toy sizes on the CPU")
    parser.add_argument("--budget", type=float, default=None, help=f"seconds for all parts (default {DEFAULT_BUDGET:.0f}; --quick 1200)")
    parser.add_argument("--parts", nargs="+", choices=PART_NAMES, default=None, metavar="PART", help=f"run only these ({', '.join(PART_NAMES)})")
    parser.add_argument("--images", type=int, default=None, help="files per timed epoch (default 4096 on a GPU, 16 with --quick)")
    parser.add_argument("--write-docs", action="store_true", help="fill the GPU tables of docs/benchmarks.md and docs/results.md")
    parser.add_argument("--from", dest="from_json", type=Path, default=None, help="a JSON this command wrote: only --write-docs from it")
    parser.add_argument("--run-part", choices=PART_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = Sizes.for_run(args.quick, args.images)

    if args.run_part:  # a child: one part
        code = run_part_here(args.run_part, args.data, sizes, args.work, args.deadline, args.work / "result.json", args.quick)
        # Its result is written: leave now. Loader threads, worker processes and CUDA contexts
        # can take seconds to wind down at interpreter exit, and the time is the next part's.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)

    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        result = measure(args, sizes)
    if args.write_docs:
        from benchmarks.gpu_docs import write_docs

        for path in write_docs(result):
            print(f"[gpu] wrote {path}")
    return result


def measure(args, sizes: Sizes) -> dict:
    import torch

    from benchmarks.environment import load_average
    from facekit.files import write_json

    began = time.time()
    missing = missing_packages()
    print("[gpu] missing here: " + (", ".join(f"{name} ({why})" for name, why in missing.items()) or "nothing"), flush=True)
    if not args.quick and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device here; run it on a GPU machine, or --quick for the CPU smoke run")
    budget = args.budget or (1200.0 if args.quick else DEFAULT_BUDGET)
    with tempfile.TemporaryDirectory(prefix="facekit-gpu-") as scratch:
        work = Path(scratch)
        data = args.data or (quick_data(work) if args.quick else None)
        if data is None:
            raise SystemExit("benchmarks.gpu: --data DATA/lfw_min8 is needed (only --quick makes its own)")
        if not Path(data).is_dir():
            raise SystemExit(f"benchmarks.gpu: --data {data}: no such folder")
        data = str(Path(data).resolve())
        environment = describe_machine()
        print(f"[gpu] {environment['gpu'] or 'no GPU'}, {environment['cpu_count']} cores, torch {environment['torch']}, "
              f"DALI {environment['dali']}, load average {environment['load_average']}; data {data}; budget {budget:.0f} s", flush=True)  # fmt: skip
        parts = run_parts(data, args.parts or PART_NAMES, sizes, quick=args.quick, budget=budget, work=work)
    result = {
        "benchmark": "gpu", "quick": args.quick, "environment": environment, "missing": missing,
        "load_average_after": load_average(), "data": data, "sizes": sizes.__dict__, "budget_s": budget,
        "seconds": round(time.time() - began, 1), "parts": parts,
    }  # fmt: skip
    write_json(args.out, result)
    failed = [p["part"] for p in parts if p["status"] != "ok"]
    print(f"[gpu] done in {result['seconds']:.0f} s; {len(parts) - len(failed)} of {len(parts)} parts ok"
          + (f"; not ok: {', '.join(failed)}" if failed else "") + f"; wrote {args.out}", flush=True)  # fmt: skip
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(outcome if isinstance(outcome, int) else 0)

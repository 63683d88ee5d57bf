"""`python -m benchmarks.gpu`: the one command a GPU session runs. Here without a GPU: its parts
at toy sizes on the CPU (--quick), its failure and time-cap handling, and the docs it fills.
Nothing here times anything: the figures are the GPU's to make."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu, gpu_docs

ROOT = Path(__file__).resolve().parents[1]


def run_command(*args, env=None, timeout=900):
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})  # fmt: skip
    assert "Traceback" not in done.stdout, done.stdout[-3000:]
    return done


def fake_row(**extra):
    row = {"arch": "resnet18", "compile": "eager", "device_tensors": 30000.0, "loader_files": 27600.0, "loader_cached": 29500.0,
           "efficiency_files": 0.92, "efficiency_cached": 0.983, "imagefolder_train": 2500.0, "dali_reference_train": 19000.0,
           "compile_seconds": 0.0, "ceiling_vs_eager": 1.0, "hw_decoder_load": None}  # fmt: skip
    return row | extra


def fake_result(parts):
    return {
        "benchmark": "gpu", "quick": False, "seconds": 351.0, "load_average_after": 1.0, "data": "/data/lfw_min8",
        "environment": {"date": "2026-12-04T10:00:00", "gpu": "NVIDIA H200", "cpu_count": 16, "load_average": 0.5,
                        "torch": "2.11.0", "dali": "2.4.0"},
        "sizes": {"input_size": 224, "batch_size": 256, "images": 4096, "rounds": 2},
        "parts": parts,
    }  # fmt: skip


@pytest.fixture
def docs(tmp_path):
    for page in ("benchmarks.md", "results.md"):
        (tmp_path / page).write_text((ROOT / "docs" / page).read_text())
    return tmp_path


def test_every_gpu_block_is_in_the_docs_and_fills_from_a_partial_run(docs):
    result = fake_result([
        {"part": "train-resnet18", "status": "ok", "result": {"rows": [fake_row()]}},
        {"part": "compile", "status": "failed", "error": "timed out after 75 s"},
        {"part": "study", "status": "ok", "result": {
            "tronnet": {"seconds": 96.0, "finished": True, "epochs_done": 100, "best_epoch": 91, "balanced_accuracy": 0.631,
                        "macro_f1": 0.61, "accuracy": 0.72},
            "baseline": {"seconds": 110.0, "finished": False, "epochs_done": 87, "error": "stopped at the time cap after 87 epochs"}}},
        {"part": "hw-decoder", "status": "skipped", "error": "skipped: the 360 s budget was spent"},
    ])  # fmt: skip
    gpu_docs.write_docs(result, docs)
    bench, results = (docs / "benchmarks.md").read_text(), (docs / "results.md").read_text()
    train = bench[bench.index("<!-- gpu-train:start -->") : bench.index("<!-- gpu-train:end -->")]
    assert "| ResNet18, frozen backbone | 30,000 | 27,600 | 29,500 | 2,500 | 19,000 | 0.92 | 0.98 |" in train
    assert "| TronNet | not measured |" in train, "a part that did not run stays 'not measured'"
    assert "NVIDIA H200" in train and "2026-12-04" in train
    assert "- `compile`: timed out after 75 s" in bench and "- `hw-decoder`: skipped" in bench
    assert "| TronNet | 100 (91) | 0.631 | 0.610 | 0.720 | 1.6 |" in results
    assert "stopped at the time cap after 87 epochs" in results
    # Filling again replaces the blocks; it does not add a second copy.
    gpu_docs.write_docs(result, docs)
    assert (docs / "benchmarks.md").read_text().count("<!-- gpu-train:start -->") == 1


def test_the_docs_refuse_a_quick_runs_toy_figures(docs):
    with pytest.raises(SystemExit, match="--quick"):
        gpu_docs.write_docs(fake_result([]) | {"quick": True}, docs)


def test_missing_packages_are_named_with_what_needs_them(monkeypatch):
    monkeypatch.setattr(gpu, "PACKAGES", {"surely_not_installed_pkg": "a feature", "json": "the JSON"})
    assert gpu.missing_packages() == {"surely_not_installed_pkg": "a feature"}


@pytest.mark.slow
def test_a_failing_part_is_one_line_and_the_next_part_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "gpu.json"
    done = run_command("--quick", "--data", empty, "--parts", "loader", "backends", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("[gpu] missing here:"), "what the machine lacks comes first"
    parts = {p["part"]: p for p in json.loads(out.read_text())["parts"]}
    assert list(parts) == ["loader", "backends"]
    for part in parts.values():
        assert part["status"] == "failed" and "\n" not in part["error"] and "empty" in part["error"], part


@pytest.mark.slow
def test_a_part_past_its_time_cap_is_stopped_and_recorded(tmp_path, synthetic_dataset):
    out = tmp_path / "gpu.json"
    done = run_command("--quick", "--data", synthetic_dataset, "--parts", "loader", "hw-decoder", "--budget", "12", "--out", out,
                       env={gpu.HANG_FOR_TESTS: "loader"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    parts = {p["part"]: p for p in json.loads(out.read_text())["parts"]}
    assert parts["loader"]["status"] == "failed" and parts["loader"]["error"] == "timed out after 12 s"
    assert parts["hw-decoder"]["status"] == "skipped", "the budget was spent by the part that hung"


@pytest.mark.slow
def test_quick_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = run_command("--quick", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    parts = {p["part"]: p for p in result["parts"]}
    assert list(parts) == gpu.PART_NAMES
    failed = {name: p.get("error") for name, p in parts.items() if p["status"] != "ok"}
    assert not failed, f"parts that failed at toy sizes: {failed}"
    assert {row["compile"] for row in parts["compile"]["result"]["rows"]} == {"eager", "default"}  # CPU: reduce-overhead runs as default
    assert set(parts["study"]["result"]) >= {"tronnet", "baseline"}
    assert all(parts["study"]["result"][arch]["finished"] for arch in ("tronnet", "baseline"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in ("benchmarks.md", "results.md"):
        (docs / page).write_text((ROOT / "docs" / page).read_text())
    gpu_docs.write_docs(result, docs, allow_quick=True)
    assert "toy sizes on a CPU" in (docs / "benchmarks.md").read_text()


def test_the_loader_choice_figures_fill_their_block(docs):
    from benchmarks import backends

    rounds = {"torch": {u: [100.0, 120.0, 90.0] for u in backends.USES}, "dali": {u: [80.0, 100.0, 100.0] for u in backends.USES}}
    result = {
        "environment": {"date": "2026-12-04T10:00:00", "cpu_count": 2, "torch_threads": 1, "torch": "2.14.1", "dali": "2.4.0"},
        "load_averages": [1.5, 2.5, 2.0], "load_average_after": 1.8, "device": "cpu", "arch": "baseline", "input_size": 224,
        "batch_size": 32, "images": 256, "eval_images": 512, "rounds": rounds,
        "median": {b: {u: sorted(v)[1] for u, v in r.items()} for b, r in rounds.items()},
        "torch_over_dali": {u: 1.0 for u in backends.USES},
        "torch_over_dali_per_round": {u: [1.25, 1.2, 0.9] for u in backends.USES},
    }  # fmt: skip
    backends.update_doc(result, docs / "benchmarks.md")
    text = (docs / "benchmarks.md").read_text()
    block = text[text.index("<!-- loader-choice-cpu:start -->") : text.index("<!-- loader-choice-cpu:end -->")]
    assert "load average 1.5 to 2.5" in block and "| torch | 100 (90-120) |" in block
    assert "| torch / dali, per round (median, range) | 1.20 (0.90-1.25) |" in block

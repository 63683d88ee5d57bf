"""Data-parallel training: the process's place, the collectives on 2 gloo processes, a lost peer, and
training on 2 CPU processes end to end (torchrun, ``--nproc``, a killed job resumed).

The multi-process tests are marked ``distributed`` (deselect with ``-m "not distributed"``).
"""

import datetime
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from facekit import distributed
from facekit.distributed import Distributed
from facekit.errors import FacekitError, UsageError

REPO = Path(__file__).resolve().parents[1]
BOUND_S = 240  # a hang guard for the subprocesses, not a speed check


def test_a_plain_process_is_rank_0_of_1():
    place = Distributed.from_env({})
    assert (place.rank, place.world_size, place.local_rank) == (0, 1, 0)
    assert place.is_main and not place.is_distributed
    assert place.per_rank_batch(7) == 7
    assert place.device(torch.device("cpu")) == torch.device("cpu")


def test_torchrun_environment_gives_the_place():
    place = Distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (place.rank, place.world_size, place.local_rank) == (3, 4, 1)
    assert not place.is_main and place.is_distributed


@pytest.mark.parametrize(
    "environ, named",
    [({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"), ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2, WORLD_SIZE=2")],
)
def test_a_broken_environment_is_a_usage_error(environ, named):
    with pytest.raises(UsageError, match=named):
        Distributed.from_env(environ)


def test_the_global_batch_must_divide_among_the_ranks():
    place = Distributed(rank=1, world_size=4)
    assert place.per_rank_batch(32) == 8
    with pytest.raises(UsageError, match="--batch-size 30 .* multiple of 4"):
        place.per_rank_batch(30)


def test_each_rank_takes_its_own_gpu_so_a_numbered_device_is_refused():
    with pytest.raises(UsageError, match="--device cuda:1: under torchrun"):
        Distributed(rank=0, world_size=2).device(torch.device("cuda", 1))
    assert Distributed(rank=1, world_size=2).device(torch.device("cpu")) == torch.device("cpu")


def test_the_collective_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout() == datetime.timedelta(seconds=distributed.DEFAULT_TIMEOUT_S)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2.5")
    assert distributed.timeout() == datetime.timedelta(seconds=2.5)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(UsageError, match="FACEKIT_DIST_TIMEOUT='soon'"):
        distributed.timeout()


def test_one_process_needs_no_process_group():
    place = Distributed()
    with distributed.joined(place), distributed.translate_failures(place):
        assert not torch.distributed.is_initialized()
        assert distributed.sum_across_ranks([1, 2.5]) == [1.0, 2.5]
        assert distributed.broadcast_object({"a": 1}) == {"a": 1}
        assert distributed.gather_shards(torch.arange(3).numpy()).tolist() == [0, 1, 2]
        distributed.barrier()


def test_the_launcher_refuses_no_processes_and_nesting(monkeypatch):
    with pytest.raises(UsageError, match="--nproc must be at least 1"):
        distributed.launch(0, ["train"])
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    with pytest.raises(UsageError, match="already runs under torchrun"):
        distributed.launch(2, ["train"])


@pytest.mark.parametrize(
    "exitcode, code, says",
    [
        (2, 2, "rank 1 of 2 failed first (exit code 2); its message is above"),
        (-9, 1, "rank 1 of 2 was killed (SIGKILL, by another process or the system"),
        (-6, 1, "rank 1 of 2 was aborted (SIGABRT: a crash in native code"),
    ],
)
def test_the_launcher_runs_torchrun_and_passes_the_first_failure_on(monkeypatch, exitcode, code, says):
    import torch.distributed.run as torchrun_module
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def failing_run(args):
        assert (args.standalone, args.nproc_per_node, args.module, args.training_script) == (True, "2", True, "facekit")
        assert args.training_script_args == ["train", "--data", "faces"]
        raise ChildFailedError("facekit", {1: ProcessFailure(local_rank=1, pid=1, exitcode=exitcode, error_file="")})

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(torchrun_module, "run", failing_run)
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    monkeypatch.setattr(distributed, "_oom_kills", lambda: 0)
    with pytest.raises(distributed.RankFailed) as failure:
        distributed.launch(2, ["train", "--data", "faces"])
    assert str(failure.value).startswith(says) and failure.value.exit_code == code
    assert "lack of memory" not in str(failure.value), "the out-of-memory killer did not act"


def test_a_killed_rank_blames_memory_only_when_the_oom_killer_acted(monkeypatch):
    counts = iter([3, 4])
    monkeypatch.setattr(distributed, "_oom_kills", lambda: next(counts))
    assert distributed._why_killed("SIGKILL", distributed._oom_kills()).startswith("killed by the system for lack of memory")
    monkeypatch.setattr(distributed, "_oom_kills", lambda: None)  # unknown: say only what is known
    assert "lack of memory" not in distributed._why_killed("SIGKILL", None)
    assert "lack of memory" not in distributed._why_killed("SIGABRT", None)


@pytest.mark.parametrize(
    "nproc, device, cuda_devices, says",
    [
        (64, "auto", 0, "--nproc 64: this machine gives facekit 2 CPU cores and no GPU; give at most 2"),
        (3, "cpu", 4, "--nproc 3: this machine gives facekit 2 CPU cores and no GPU is used; give at most 2"),
        (2, "auto", 1, "--nproc 2: this machine has 1 GPU and each process takes one; give at most 1 (or --device cpu)"),
        (9, "cuda", 8, "--nproc 9: this machine has 8 GPUs"),
    ],
)
def test_the_launcher_refuses_more_processes_than_devices_before_torchrun_starts(monkeypatch, nproc, device, cuda_devices, says):
    import torch.distributed.run as torchrun_module

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(torchrun_module, "run", lambda args: pytest.fail("torchrun started"))
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
    with pytest.raises(UsageError) as refused:
        distributed.launch(nproc, ["train", "--data", "faces", "--device", device])
    assert str(refused.value).startswith(says)


def test_nproc_beyond_the_cores_is_one_line_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from facekit.cli import app

    too_many = distributed.usable_cores() + 1
    result = CliRunner().invoke(app, ["train", "--nproc", str(too_many), "--data", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"Error: --nproc {too_many}: ")


# ------------------------------------------------------------------ two gloo processes
def refuse() -> None:
    raise UsageError("run folder RUN already exists")


def pair_worker(rank: int, mode: str, environ: dict[str, str], out: str) -> None:
    """One of two processes wired up the way torchrun wires them (env:// on 127.0.0.1)."""
    os.environ.update(environ, RANK=str(rank), LOCAL_RANK=str(rank))
    place = Distributed.from_env()
    result: dict = {}
    try:
        with distributed.joined(place), distributed.translate_failures(place, run_dir="RUN-DIR"):
            result["sums"] = distributed.sum_across_ranks([place.rank + 1, 10])
            setup = distributed.broadcast_object({"from": place.rank, "weights": torch.arange(3.0)} if place.is_main else None)
            result["setup"] = [setup["from"], setup["weights"].tolist()]
            # 7 samples over 2 ranks: rank 0 evaluated 0, 2, 4, 6 and rank 1 evaluated 1, 3, 5.
            part = np.arange(7, dtype=np.float32)[place.rank :: place.world_size, None] * [1, -1]
            gathered = distributed.gather_shards(part)
            result["gathered"] = None if gathered is None else gathered.tolist()
            try:  # rank 0's refusal reaches every rank as the same error
                distributed.from_main(place, refuse)
            except UsageError as exc:
                result["refusal"] = str(exc)
            if mode == "dies" and place.rank == 1:
                Path(f"{out}-{rank}.json").write_text(json.dumps(result))
                os._exit(3)  # no goodbye: the connection just closes
            if mode == "stalls" and place.rank == 1:
                time.sleep(float(environ[distributed.TIMEOUT_ENV]) + 1.5)  # then finds rank 0 gone
            distributed.barrier()
    except FacekitError as exc:
        result["error"] = str(exc)
    Path(f"{out}-{rank}.json").write_text(json.dumps(result))
    os._exit(0)  # past pytest's own exit handlers, which belong to the parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(tmp_path: Path, mode: str, timeout_s: float = 60) -> tuple[list[dict], list[int | None]]:
    """Two processes forked from this one (torch is already imported: no start-up cost) join one gloo group."""
    environ = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    environ[distributed.TIMEOUT_ENV] = str(timeout_s)
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=pair_worker, args=(rank, mode, environ, str(tmp_path / "result"))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=BOUND_S)
    for p in procs:
        if p.is_alive():
            p.kill()
    return [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in range(2)], [p.exitcode for p in procs]


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_sum_share_gather_and_a_dead_peer_ends_the_other_with_one_clear_line(tmp_path):
    (survivor, dead), codes = run_pair(tmp_path, "dies")
    assert survivor["sums"] == dead["sums"] == [3.0, 20.0]
    assert survivor["setup"] == dead["setup"] == [0, [0.0, 1.0, 2.0]]
    assert survivor["gathered"] == [[i, -i] for i in range(7)] and dead["gathered"] is None
    assert survivor["refusal"] == dead["refusal"] == "run folder RUN already exists"
    assert codes == [0, 3]  # rank 1 died after all that, without a word
    assert survivor["error"].startswith("rank 0 lost contact with the other ranks (")
    assert "see the other ranks' logs" in survivor["error"]
    assert survivor["error"].endswith("resume with `facekit train --resume RUN-DIR`")
    assert "\n" not in survivor["error"] and "pair.cc" not in survivor["error"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_silent_peer_times_out_instead_of_hanging(tmp_path):
    (waiting, late), _ = run_pair(tmp_path, "stalls", timeout_s=3)
    assert late["sums"] == [3.0, 20.0] and late["gathered"] is None  # rank 1 got its share, then stalled
    assert late["error"].startswith("rank 1 lost contact with the other ranks (")
    assert waiting["error"].startswith("rank 0 lost contact with the other ranks (Timed out")


# ------------------------------------------------------- training on two processes, end to end
# No batch norm and no dropout: what each rank computes on its half of a batch is exactly what one
# process computes on those images, so the two runs differ only by the order in which floating
# point sums are taken (gradients averaged over the ranks by gloo, losses summed over them).
PLAIN_NET = """
    import os
    import time

    from torch import nn

    from facekit.api import ArchitectureSpec, hookimpl


    class PlainNet(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
            )
            self.head = nn.Linear(16, num_classes)

        def forward(self, x):
            if self.training and os.environ.get("PLAIN_NET_STEP_S"):
                time.sleep(float(os.environ["PLAIN_NET_STEP_S"]))  # time for a test to kill the run mid-way
            return self.head(self.features(x))


    @hookimpl
    def register_architectures(register):
        register(ArchitectureSpec("plain", lambda options: PlainNet(options.num_classes), "no batch norm", input_size=32))
"""
# 32 images: 16 train (2 global batches of 8, 4 per rank), 8 validation, 8 test.
TRAIN_ARGS = dict(arch="plain", epochs=3, batch_size=8, lr=1e-2, seed=5, rotate=10.0, loader="torch", workers=0,
                  test_size=0.25, val_size=0.25, device="cpu", threads=1)  # fmt: skip
# float32 sums taken in another order differ in the last bits: measured 9e-8 relative on the
# figures and 6e-8 on the test probabilities after three epochs of Adam; this leaves room for
# other CPUs' kernels, and a resume that lost any state would miss it by orders of magnitude.
TOLERANCE = 1e-5
FIGURES = ("train_loss", "val_loss", "train_acc", "val_acc")


def cli_args(data: Path, out: Path) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out)]
    for key, value in TRAIN_ARGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def plain_net_site(tmp_path_factory) -> Path:
    from facekit.testing import make_fake_distribution

    site = tmp_path_factory.mktemp("site-packages")
    return make_fake_distribution(site, "facekit-plain-net", {"plain_net": textwrap.dedent(PLAIN_NET)}, {"plain": "plain_net"})


def facekit_env(site: Path, **extra: str) -> dict[str, str]:
    env = worker_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return env


@pytest.fixture(scope="module")
def single_process_run(plain_net_site, synthetic_dataset, tmp_path_factory) -> Path:
    """The reference: one process, in this one, with the same global batch and seed."""
    from facekit.engine import TrainConfig, Trainer
    from facekit.plugins import PluginSet, reset_plugins

    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(plain_net_site))
        previous = reset_plugins(PluginSet())
        try:
            out = tmp_path_factory.mktemp("single") / "run"
            return Trainer(TrainConfig(data=synthetic_dataset, out=out, **TRAIN_ARGS)).train()
        finally:
            reset_plugins(previous)
            sys.modules.pop("plain_net", None)


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "facekit", *args]


@pytest.fixture(scope="module")
def two_process_run(plain_net_site, synthetic_dataset, tmp_path_factory) -> dict:
    """A two-process gloo run, killed after its first epoch and resumed to the end.

    Started with torchrun, killed (torchrun and both ranks, no chance to tidy up) once rank 0 has
    written the first epoch, then resumed with ``facekit train --nproc 2 --resume`` (torchrun again,
    started by facekit). Two launches instead of three keep the test's wall time down.
    """
    if distributed.usable_cores() < 2:
        pytest.skip("facekit train --nproc 2 needs 2 CPU cores (it refuses more processes than cores)")
    workdir = tmp_path_factory.mktemp("two-processes")
    run_dir = workdir / "run"
    slow = facekit_env(plain_net_site, PLAIN_NET_STEP_S="0.3")  # an epoch takes at least 0.6 s
    job = subprocess.Popen(torchrun(*cli_args(synthetic_dataset, run_dir), "-q"), cwd=workdir, env=slow, start_new_session=True)
    try:
        deadline = time.monotonic() + BOUND_S
        while not (run_dir / "history.json").is_file() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=BOUND_S)
    from facekit.runs import Run

    interrupted = Run(run_dir)
    killed = {
        "epochs": [row["epoch"] for row in interrupted.history],
        "checkpoint": (run_dir / "checkpoints" / "fold-0-last.pt").is_file(),
        "predictions": interrupted.has_predictions,
    }
    done = subprocess.run(
        [sys.executable, "-m", "facekit", "train", "--nproc", "2", "--resume", str(run_dir), "--json", "--log", "tensorboard"],
        cwd=workdir, env=facekit_env(plain_net_site), capture_output=True, text=True, timeout=BOUND_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--log tensorboard" not in done.stderr, done.stderr[-3000:]  # the tracker did not fail
    assert "torch/distributed" not in done.stderr and "*****" not in done.stderr, "torchrun's log lines stay out of the way"
    return {"workdir": workdir, "run": run_dir, "killed": killed, "printed": json.loads(done.stdout)}


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_torchrun_job_resumes_with_facekit_train_nproc(two_process_run):
    from facekit.runs import Run

    killed = two_process_run["killed"]
    assert killed["checkpoint"] and not killed["predictions"]
    assert killed["epochs"] in ([1], [1, 2])  # killed after the first epoch, before the end
    run = Run(two_process_run["run"])
    assert [(r["fold"], r["epoch"], r["world_size"]) for r in run.history] == [(0, e, 2) for e in (1, 2, 3)]
    assert two_process_run["printed"]["run"] == str(two_process_run["run"])  # rank 0 alone printed (one JSON document)
    assert sorted(p.name for p in two_process_run["workdir"].iterdir()) == ["run"]  # one run folder, nothing under runs/


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_learn_what_one_process_learns_with_the_same_global_batch(single_process_run, two_process_run):
    from facekit.runs import Run

    one, two = Run(single_process_run), Run(two_process_run["run"])
    assert two.config["world_size"] == 2 and one.config["world_size"] == 1
    assert len(one.history) == len(two.history) == 3
    assert two.history[-1]["train_loss"] < two.history[0]["train_loss"]  # it learns
    for a, b in zip(one.history, two.history):  # epoch 1 before the kill, 2 and 3 after the resume
        for figure in FIGURES:
            assert close(a[figure], b[figure]), (figure, a[figure], b[figure])
    assert two.folds["kept"] == one.folds["kept"] and two.folds["folds"][0]["best_epoch"] == one.folds["folds"][0]["best_epoch"]


@pytest.mark.slow
@pytest.mark.distributed
def test_rank_0_writes_the_test_predictions_once_in_test_split_order(single_process_run, two_process_run):
    from facekit.runs import Run

    run = Run(two_process_run["run"])
    one, two = Run(single_process_run).predictions(), run.predictions()
    test = run.split["test"]
    assert two["index"].tolist() == test  # every test image, once, in order (gathered from both ranks)
    assert two["probs"].shape == one["probs"].shape
    assert np.allclose(two["probs"], one["probs"], rtol=0, atol=TOLERANCE)
    assert two["y_pred"].tolist() == one["y_pred"].tolist()
    rows = (two_process_run["run"] / "predictions.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [run.split["files"][i] for i in test]


@pytest.mark.distributed
def test_only_rank_0_tracks(two_process_run):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (scripts/install.sh installs it)")
    # Each process that tracked would have written its own event file (the file name holds its pid).
    events = sorted((two_process_run["run"] / "tensorboard" / "fold-0").glob("events.out.tfevents.*"))
    assert len(events) == 1, events

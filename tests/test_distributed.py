"""Data-parallel training: the process's place, the collectives on 2 gloo processes, a lost peer, the launcher.

The multi-process tests are marked ``distributed`` (deselect with ``-m "not distributed"``).
"""

import datetime
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

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


# ------------------------------------------------------------------ two gloo processes
WORKER = """
    import json, os, sys, time
    import numpy as np, torch
    from facekit import distributed
    from facekit.errors import FacekitError

    mode, out = sys.argv[1], sys.argv[2]
    place = distributed.Distributed.from_env()
    result = {}
    try:
        with distributed.joined(place), distributed.translate_failures(place, run_dir="RUN-DIR"):
            result["sums"] = distributed.sum_across_ranks([place.rank + 1, 10])
            setup = distributed.broadcast_object({"from": place.rank, "weights": torch.arange(3.0)} if place.is_main else None)
            result["setup"] = [setup["from"], setup["weights"].tolist()]
            # 7 samples over 2 ranks: rank 0 evaluated 0, 2, 4, 6 and rank 1 evaluated 1, 3, 5.
            part = np.arange(7, dtype=np.float32)[place.rank :: place.world_size, None] * [1, -1]
            gathered = distributed.gather_shards(part)
            result["gathered"] = None if gathered is None else gathered.tolist()
            if mode == "dies" and place.rank == 1:
                os._exit(3)  # no goodbye: the connection just closes
            if mode == "stalls" and place.rank == 1:
                time.sleep(2 * float(os.environ[distributed.TIMEOUT_ENV]))  # then finds rank 0 gone
            distributed.barrier()
    except FacekitError as exc:
        result["error"] = str(exc)
    with open(f"{out}-{place.rank}.json", "w") as handle:
        json.dump(result, handle)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", **extra)
    return env


def run_pair(tmp_path: Path, mode: str, timeout_s: float = 60) -> list[dict]:
    """Two worker processes wired up the way torchrun wires them (env:// on 127.0.0.1)."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    common = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    common[distributed.TIMEOUT_ENV] = str(timeout_s)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), mode, str(tmp_path / "result")],
            env=worker_env(RANK=str(rank), LOCAL_RANK=str(rank), **common),
        )
        for rank in range(2)
    ]
    try:
        codes = [p.wait(timeout=BOUND_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for rank in range(2):
        file = tmp_path / f"result-{rank}.json"
        results.append(json.loads(file.read_text()) if file.is_file() else {"exit": codes[rank]})
    return results


@pytest.mark.distributed
def test_two_processes_sum_share_gather_and_a_dead_peer_ends_the_other_with_one_clear_line(tmp_path):
    survivor, dead = run_pair(tmp_path, "dies")
    assert survivor["sums"] == [3.0, 20.0]
    assert survivor["setup"] == [0, [0.0, 1.0, 2.0]]
    assert survivor["gathered"] == [[i, -i] for i in range(7)]
    assert dead == {"exit": 3}  # rank 1 died after its part of the gather
    assert survivor["error"].startswith("rank 0 lost contact with the other ranks (")
    assert "see the other ranks' logs" in survivor["error"]
    assert survivor["error"].endswith("resume with `facekit train --resume RUN-DIR`")
    assert "\n" not in survivor["error"] and "pair.cc" not in survivor["error"]


@pytest.mark.distributed
def test_a_silent_peer_times_out_instead_of_hanging(tmp_path):
    waiting, late = run_pair(tmp_path, "stalls", timeout_s=3)
    assert late["sums"] == [3.0, 20.0] and late["gathered"] is None  # rank 1 got its share, then stalled
    assert late["error"].startswith("rank 1 lost contact with the other ranks (")
    assert waiting["error"].startswith("rank 0 lost contact with the other ranks (Timed out")

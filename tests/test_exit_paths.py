"""How facekit ends: a Ctrl-C at any moment (in a checkpoint write, after the command while
libraries shut down) says "Interrupted", never a traceback or a wrong cause."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from facekit.cli import app
from facekit.runs import CHECKPOINTS, Run, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
FAST = ["--input-size", "48", "--epochs", "3", "--batch-size", "8", "--loader", "torch", "--workers", "0",
        "--rotate", "0", "--threads", "1", "--lr", "1e-3", "--test-size", "0.25", "--val-size", "0.25"]  # fmt: skip


class _InterruptedHandle(io.RawIOBase):
    """A file whose third write is interrupted by Ctrl-C, as a SIGINT arriving mid-write would be."""

    def __init__(self, handle):
        self.handle, self.writes = handle, 0

    def writable(self):
        return True

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt
        return self.handle.write(data)


def test_ctrl_c_during_a_checkpoint_write_says_interrupted_not_disk_full(synthetic_dataset, tmp_path, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and not isinstance(f, (str, Path)):
            return real_save(obj, _InterruptedHandle(f), *args, **kwargs)  # torch makes it a RuntimeError
        return real_save(obj, f, *args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save)
        result = CliRunner().invoke(app, ["train", "--data", str(synthetic_dataset), *FAST, "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "disk" not in result.output and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == f"Interrupted. Continue with: facekit train --resume {out}"
    assert load_checkpoint(out / CHECKPOINTS / "fold-0-last.pt")["epoch"] == 1, "the previous checkpoint is intact"
    assert not list(out.rglob("*.tmp"))
    assert CliRunner().invoke(app, ["train", "--resume", str(out), "--quiet"]).exit_code == 0
    assert [r["epoch"] for r in Run(out).history] == [1, 2, 3]


LATE = """
import atexit, sys, time
from facekit.cli import main

def slow_exit_handler():  # as DALI's: gc.collect() and pipeline shutdown at interpreter exit
    print("exit handler running", flush=True)
    time.sleep(60)

atexit.register(slow_exit_handler)
main(["plugins", "--all", "--json"])
"""


def test_a_late_ctrl_c_while_libraries_shut_down_is_quiet(tmp_path):
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-c", LATE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "exit handler running" in line or not line:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert '"package": "facekit"' in "".join(lines), "the command's output came out whole"
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr

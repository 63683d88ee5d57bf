"""How facekit ends: a Ctrl-C at any moment (in a checkpoint write, after the command while
libraries shut down) says "Interrupted", never a traceback or a wrong cause."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_command_on_its_own_line_after_the_bar(synthetic_dataset, tmp_path, monkeypatch):
    """On a terminal the epoch bar is live; the line after Ctrl-C must not be written into it (and the bar drawn again)."""
    from rich.console import Console

    import facekit.cli.train_cmd
    from facekit.cli import progress
    from facekit.engine import Trainer

    screen = io.StringIO()
    monkeypatch.setattr(facekit.cli.train_cmd, "console", Console(file=screen, force_terminal=True, width=100))
    real = Trainer.train_epoch
    calls = {"n": 0}

    def interrupted_in_epoch_2(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            self.progress.batch_end(1.0, 8)  # the bar is up and running
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted_in_epoch_2)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(synthetic_dataset), *FAST, "--out", str(out)])
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [f"Interrupted. Continue with: facekit train --resume {out}"]
    assert "Interrupted" not in screen.getvalue(), "written into the live bar"
    assert progress._running_bars == []
    assert screen.getvalue().count("epoch 2/3") >= 1


def test_only_rank_0_says_how_to_continue_and_the_launcher_says_nothing_more(monkeypatch):
    import typer

    from facekit import distributed

    cli = typer.Typer(cls=app.info.cls)

    @cli.command()
    def work():
        raise KeyboardInterrupt

    @cli.command()
    def launch():
        raise distributed.RankFailed("", 130)  # what launch() raises on Ctrl-C

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["work"])
    assert result.exit_code == 130 and result.output == ""
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert CliRunner().invoke(cli, ["work"]).output == "Interrupted.\n"
    result = CliRunner().invoke(cli, ["launch"])
    assert result.exit_code == 130 and result.output == ""


def test_the_launcher_ends_quietly_on_ctrl_c(monkeypatch):
    import torch.distributed.run as torchrun_module
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from facekit import distributed

    def interrupted(args):
        raise SignalException("interrupted", signal.SIGINT)

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(torchrun_module, "run", interrupted)
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    try:
        distributed.launch(2, ["train", "--data", "faces"])
    except distributed.RankFailed as stopped:
        assert str(stopped) == "" and stopped.exit_code == 130
    else:
        raise AssertionError("no RankFailed")

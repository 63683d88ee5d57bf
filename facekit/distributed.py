"""Data-parallel training: the process's place in a torchrun job, its process group, the few collectives.

PyTorch's launcher (``torchrun``, i.e. ``python -m torch.distributed.run``) starts one process per
GPU, or several on a CPU machine, and tells each its place through the environment: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``. facekit joins those processes into
one process group (NCCL for CUDA tensors and gloo for CPU ones, or gloo alone without CUDA),
wraps the model in ``DistributedDataParallel`` and uses the helpers below for everything else:
sums of losses and counts, rank 0's setup sent to the others (no shared file system needed),
the evaluation shards gathered back in sample order. A single process is rank 0 of 1 and every
helper is then a no-op.

A rank that dies or stops answering must not leave the others waiting for ever: collectives
time out after :func:`timeout` (``FACEKIT_DIST_TIMEOUT`` seconds, 30 minutes by default), a peer
whose connection closes fails them at once, and :func:`translate_failures` turns either into one
line saying what to do. torchrun itself stops the remaining processes of a job once one fails.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch

from facekit.errors import FacekitError, UsageError

T = TypeVar("T")

TIMEOUT_ENV = "FACEKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 30 * 60  # rank 0 may index and measure a large data set while the others wait

# What gloo and the TCP store say when a peer went away; a RuntimeError without these is a bug of
# its own and passes through untouched.
_LOST_PEER_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "broken pipe")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel job; a plain process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Distributed":
        """The place torchrun gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); rank 0 of 1 without it."""
        environ = os.environ if environ is None else environ
        values = {}
        for field, name, default in (("rank", "RANK", 0), ("world_size", "WORLD_SIZE", 1), ("local_rank", "LOCAL_RANK", 0)):
            text = environ.get(name, "").strip()
            try:
                values[field] = int(text) if text else default
            except ValueError:
                raise UsageError(f"environment variable {name}={text!r} is not a whole number; start facekit with torchrun") from None
        place = cls(**values)
        if place.world_size < 1 or not 0 <= place.rank < place.world_size or place.local_rank < 0:
            raise UsageError(
                f"RANK={place.rank}, WORLD_SIZE={place.world_size}, LOCAL_RANK={place.local_rank} do not describe a "
                "process of a job; let torchrun set them"
            )
        return place

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and talks to the user."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: each process of a CUDA job takes the GPU of its ``LOCAL_RANK``."""
        if not self.is_distributed or device.type != "cuda":
            return device
        if device.index is not None:
            raise UsageError(
                f"--device {device}: under torchrun every process would use that one GPU; pass --device cuda "
                "(or auto) and each process takes the GPU numbered by its LOCAL_RANK"
            )
        if self.local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {self.local_rank} has no GPU (this machine has {torch.cuda.device_count()}): "
                "start at most one process per GPU (--nproc-per-node)"
            )
        return torch.device("cuda", self.local_rank)

    def per_rank_batch(self, batch_size: int) -> int:
        """``--batch-size`` is the global batch: each of the ``world_size`` processes takes an equal part."""
        if batch_size % self.world_size:
            raise UsageError(
                f"--batch-size {batch_size} is the global batch and must divide evenly among the {self.world_size} "
                f"processes: use a multiple of {self.world_size}"
            )
        return batch_size // self.world_size


def wrap_model(place: Distributed, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model that trains: itself, or wrapped in DistributedDataParallel under torchrun.

    On CUDA, batch norms become SyncBatchNorm, so their batch statistics cover the global batch
    as in one process; on the CPU (gloo) each rank normalizes over its own part of the batch.
    """
    if not place.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(model), device_ids=[device.index])
    return DistributedDataParallel(model)


def timeout() -> _dt.timedelta:
    """How long a collective waits for the other ranks before it fails (``FACEKIT_DIST_TIMEOUT`` seconds)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return _dt.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise UsageError(f"{TIMEOUT_ENV}={text!r}: give the collective timeout as a positive number of seconds")
    return _dt.timedelta(seconds=seconds)


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def joined(place: Distributed) -> Iterator[Distributed]:
    """Join this process to the job's process group for the duration of the block (nothing to do for one process).

    The group is made once, before the run's settings are known (a resume learns them from rank 0):
    with CUDA it has NCCL for CUDA tensors and gloo for CPU ones, so ``--device cpu`` works on a GPU
    machine and the small control messages (setup, sums) never wait on a GPU stream. A group that
    already exists (made by the caller) is used and left in place.
    """
    if not place.is_distributed or _initialized():
        yield place
        return
    if not torch.distributed.is_available():
        raise FacekitError("this PyTorch build has no torch.distributed: install a build with it to train on several processes")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() else "gloo"
    if backend != "gloo" and place.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(place.local_rank)  # NCCL's communicators bind to the current device
    with translate_failures(place):
        torch.distributed.init_process_group(backend, timeout=timeout(), rank=place.rank, world_size=place.world_size)
    try:
        yield place
    except BaseException:
        torch.distributed.destroy_process_group()
        raise
    _leave_together()


def _leave_together() -> None:
    """Tear the process group down once every rank is done with it, and while Python is fully alive.

    A rank that destroys its group while a peer still has messages in flight, or a group kept
    alive past the command by an object in a reference cycle (a DistributedDataParallel reducer),
    leaves gloo's worker threads to be torn down during interpreter shutdown: the process then
    aborts (SIGABRT, "terminate called without an active exception"), more often the busier the
    machine. So: a barrier (a peer that is gone already just ends it), the cyclic garbage that
    may hold the group collected, then the group destroyed.
    """
    import gc

    try:
        torch.distributed.barrier()
    except Exception:  # noqa: BLE001 -- a peer that failed or left: nothing to wait for
        pass
    gc.collect()
    torch.distributed.destroy_process_group()


def _lost_peer(exc: BaseException) -> bool:
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc).lower() for marker in _LOST_PEER_MARKERS)


@contextmanager
def translate_failures(place: Distributed, run_dir: Path | None = None) -> Iterator[None]:
    """Turn a lost or silent peer, seen by any collective in the block, into one FacekitError line.

    The cause is in the log of the rank that failed first; this rank only saw the connection go.
    """
    if not place.is_distributed:
        yield
        return
    try:
        yield
    except Exception as exc:
        if isinstance(exc, FacekitError) or not _lost_peer(exc):
            raise
        # gloo starts its messages with the C++ source location: of no use to the user.
        first = re.sub(r"^\[[^\]]*\]\s*", "", (str(exc).strip().splitlines() or [""])[0]) or exc.__class__.__name__
        first = first.split(". ")[0]  # the first sentence says what happened; gloo's advice follows
        resume = f"facekit train --resume {run_dir}" if run_dir is not None else "facekit train --resume RUN"
        raise FacekitError(
            f"rank {place.rank} lost contact with the other ranks ({first[:200]}): "
            f"see the other ranks' logs for the cause; resume with `{resume}`"
        ) from None


# ------------------------------------------------------------------------------ collectives
def sum_across_ranks(values: Sequence[float]) -> list[float]:
    """The sum of each value over all ranks (float64), the same on every rank."""
    if not _initialized():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; tensors are sent to the CPU first)."""
    if not _initialized():
        return obj
    box = [obj if torch.distributed.get_rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def from_main(place: Distributed, produce: Callable[[], T]) -> T:
    """Rank 0 calls ``produce()`` and every rank gets its result, or raises the FacekitError it raised.

    Reading or writing the run folder is rank 0's job; the others learn the outcome from it, so a
    multi-node job needs no shared file system and a bad option fails with the same line everywhere.
    """
    if not place.is_distributed:
        return produce()
    outcome: tuple[bool, Any] = (True, None)
    if place.is_main:
        try:
            outcome = (True, produce())
        except FacekitError as exc:
            outcome = (False, (type(exc), str(exc)))
            broadcast_object(outcome)
            raise
    ok, value = broadcast_object(outcome)
    if not ok:
        error_type, message = value
        try:
            error = error_type(message)
        except TypeError:  # an error class with its own constructor: the line is what matters
            error = FacekitError(message)
        raise error
    return value


def gather_shards(part: np.ndarray) -> np.ndarray | None:
    """Rank 0 gets every rank's evaluation shard put back in sample order; other ranks get None.

    Rank ``r`` evaluated samples ``r, r + W, r + 2W, ...`` of the list (the loaders' unpadded
    evaluation shards), so row ``i`` of the result is row ``i // W`` of rank ``i % W``'s part.
    """
    if not _initialized():
        return part
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    parts: list[np.ndarray] | None = [None] * world if rank == 0 else None  # type: ignore[list-item]
    torch.distributed.gather_object(np.asarray(part), parts, dst=0)
    if parts is None:
        return None
    total = sum(len(p) for p in parts)
    widths = {p.shape[1:] for p in parts if len(p)}
    if len(widths) > 1:
        raise FacekitError(f"evaluation shards disagree on their shape ({sorted(widths)}): the ranks run different models")
    for r, p in enumerate(parts):
        expected = len(range(r, total, world))
        if len(p) != expected:
            raise FacekitError(
                f"rank {r} evaluated {len(p)} samples where {expected} were expected: an image failed to decode "
                "on that rank; run `facekit data check` on the data set"
            )
    reference = next((p for p in parts if len(p)), parts[0])
    out = np.empty((total, *reference.shape[1:]), dtype=reference.dtype)
    for r, p in enumerate(parts):
        out[r::world] = p
    return out


def barrier() -> None:
    """Wait until every rank got here."""
    if _initialized():
        torch.distributed.barrier()


# --------------------------------------------------------------------------------- launcher
class RankFailed(FacekitError):
    """A process of a job started by :func:`launch` failed; its own message came before this one."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launch(nproc: int, facekit_args: Sequence[str]) -> None:
    """Run ``facekit <facekit_args>`` as ``nproc`` processes on this machine through torchrun.

    The same as ``torchrun --standalone --nproc-per-node NPROC -m facekit ARGS`` (torchrun's own
    code, in this process); a failed process becomes :class:`RankFailed` with its exit code.
    More processes than this machine has GPUs (CUDA) or CPU cores are refused before any starts,
    and torchrun's own banner and log lines stay out of the way (``FACEKIT_DEBUG=1`` shows them).
    """
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1 (got {nproc})")
    if "TORCHELASTIC_RUN_ID" in os.environ or Distributed.from_env().is_distributed:
        raise UsageError("--nproc starts torchrun itself: leave it out when facekit already runs under torchrun")
    check_process_count(nproc, _option_value(facekit_args, "--device") or "auto")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc > 1:
        # torchrun sets this itself and prints a banner about it; facekit's --threads sets torch's threads.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = get_args_parser()
    # Without abbreviations: argparse would read a facekit option that begins like one of
    # torchrun's (--log: --log-dir, --logs-specs) as torchrun's, or refuse it as ambiguous.
    parser.allow_abbrev = False
    args = parser.parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "facekit", *facekit_args])
    oom_kills = _oom_kills()
    try:
        with _quiet_torchrun():
            run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code is not None and code > 0:
            raise RankFailed(f"rank {rank} of {nproc} failed first (exit code {code}); its message is above", code) from None
        raise RankFailed(
            f"rank {rank} of {nproc} was {_why_killed(failure.signal_name(), oom_kills)}; the other processes were stopped",
            1,
        ) from None
    except SignalException as exc:
        if exc.sigval == signal.SIGINT:
            # Ctrl-C reached every process: rank 0 has said "Interrupted" and how to continue.
            raise RankFailed("", 130) from None
        raise RankFailed(f"stopped by {exc.sigval.name}; the processes were stopped too", 128 + int(exc.sigval)) from None


def check_process_count(nproc: int, device: str) -> None:
    """Refuse ``--nproc`` beyond one process per GPU (CUDA) or per CPU core (``--device cpu`` or no GPU)."""
    on_cuda = device != "cpu" and torch.cuda.is_available()
    if on_cuda:
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise UsageError(
                f"--nproc {nproc}: this machine has {gpus} GPU{'s' if gpus != 1 else ''} and each process takes one; "
                f"give at most {gpus} (or --device cpu)"
            )
        return
    cores = usable_cores()
    if nproc > cores:
        raise UsageError(
            f"--nproc {nproc}: this machine gives facekit {cores} CPU core{'s' if cores != 1 else ''} and no GPU"
            f"{' is used' if device == 'cpu' else ''}; give at most {cores}"
        )


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _option_value(args: Sequence[str], option: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


@contextmanager
def _quiet_torchrun() -> Iterator[None]:
    """torchrun's log lines (its OMP_NUM_THREADS banner, 'Sending process ... closing signal',
    its failure summaries) are for torchrun's own users: facekit says what happened in one line."""
    import logging

    if os.environ.get("FACEKIT_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed in this cgroup (None: unknown)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        match = re.search(r"^oom_kill (\d+)", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def _why_killed(signal_name: str, oom_kills_before: int | None) -> str:
    """What a signal that ended a rank says, blaming memory only when the OOM killer acted."""
    after = _oom_kills()
    if oom_kills_before is not None and after is not None and after > oom_kills_before:
        return f"killed by the system for lack of memory ({signal_name}, out-of-memory killer)"
    if signal_name == "SIGABRT":
        return "aborted (SIGABRT: a crash in native code; the line above it, if any, says where)"
    if signal_name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE"):
        return f"crashed ({signal_name} in native code)"
    if signal_name == "SIGKILL":
        return "killed (SIGKILL, by another process or the system" + (
            "; not by the out-of-memory killer)" if after is not None else ")"
        )
    return f"ended by {signal_name}"

"""The training and evaluation steps, eager or compiled with torch.compile.

``TrainStep`` and ``EvalStep`` run one batch each. With a compile mode they run the model's
forward pass and the loss through ``torch.compile`` (AOTAutograd compiles the matching backward
pass); the optimizer step stays eager, so learning-rate schedules that change the rate every
batch never trigger a recompile.

Shapes are static (``dynamic=False``): the graph is compiled for full batches of the loader's
batch size. A batch of any other size, in practice the last, smaller batch of an epoch, runs
the same model eagerly: one eager step per epoch costs far less than compiling a second graph
(and, under CUDA graphs, recording another one), and nothing recompiles from epoch to epoch.
Because model parameters are graph inputs, a fresh model of the same architecture (the next
fold, the kept fold's test evaluation) reuses the compiled graphs.

The seconds spent in calls that compiled a graph are counted in ``compile_seconds``, so callers
can report them apart from the steady-state images/s.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch
from torch import nn

from facekit.errors import FacekitError, UsageError


# The mode the compiled graphs in this process were made with. torch.compile keeps graphs per
# code object, whatever mode asked for them, so switching modes must drop the old ones.
_graphs_mode: str | None = None


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot work for ``device`` on this machine, or None when it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "compiling for CUDA needs the triton package (pip install triton)"
        return None
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # inductor's InvalidCxxCompiler, or whatever a broken toolchain raises
        return "compiling for the CPU needs a C++ compiler (g++ or clang++ on PATH, or set CXX)"
    return None


def resolve_compile_mode(mode: str | None, device: torch.device) -> tuple[str | None, str | None]:
    """The torch.compile mode to use on ``device`` (None: eager) and a note for the user, if any.

    ``mode`` is one of :data:`facekit.config.COMPILE_MODES` (the run's settings checked it). Asking
    for a mode that cannot run here is a usage error: facekit never records a compiled
    run that secretly trained eagerly.
    """
    if mode is None:
        return None, None
    problem = compile_problem(device)
    if problem is not None:
        raise UsageError(f"--compile: {problem}; or train without it (--no-compile when resuming)")
    if device.type == "cuda":
        return mode, None
    # On a CUDA build of torch without a GPU, every CPU kernel build logs that no CUDA runtime
    # was found; true and irrelevant here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if mode == "reduce-overhead":
        return "default", f"--compile reduce-overhead records CUDA graphs, which need a CUDA device; compiling in the default mode on {device}"
    return mode, None


def graphs_compiled() -> int:
    """How many graphs torch.compile has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


class _Forward:
    """The model's forward pass and the loss, under autocast; what gets compiled."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, device_type: str, amp_dtype: torch.dtype | None):
        self.model, self.loss_fn = model, loss_fn
        self.device_type, self.amp_dtype = device_type, amp_dtype

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(images).float()
            return self.loss_fn(logits, labels), logits


class _Step:
    """Picks the compiled or the eager forward for a batch and times the calls that compile."""

    def __init__(self, forward: _Forward, *, batch_size: int, mode: str | None):
        self.forward = forward
        self.batch_size = batch_size
        self.mode = mode
        self.compiled = None
        if mode:
            global _graphs_mode
            if _graphs_mode not in (None, mode):
                torch._dynamo.reset()
            _graphs_mode = mode
            self.compiled = torch.compile(forward, mode=mode, dynamic=False)
        self.compile_seconds = 0.0

    def _run(self, body: Callable[[Callable], Any], images: torch.Tensor) -> Any:
        if self.compiled is None or images.shape[0] != self.batch_size:
            return body(self.forward)
        before = graphs_compiled()
        start = time.perf_counter()
        try:
            result = body(self.compiled)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            inner = exc.inner_exception
            reason = f"{type(inner).__name__}: {str(inner).strip().splitlines()[0]}" if str(inner).strip() else type(inner).__name__
            raise FacekitError(f"--compile: torch.compile failed ({reason}); train without --compile") from None
        if graphs_compiled() != before:
            if images.device.type == "cuda":
                torch.cuda.synchronize(images.device)
            self.compile_seconds += time.perf_counter() - start
        return result


class TrainStep(_Step):
    """One optimisation step on a batch; returns the (detached) loss and float logits.

    Under ``mode="reduce-overhead"`` the returned tensors live in CUDA-graph memory that the
    next call overwrites: use them (accumulate, compare) before the next step.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        *,
        device_type: str,
        amp_dtype: torch.dtype | None,
        batch_size: int,
        mode: str | None = None,
    ):
        super().__init__(_Forward(model, loss_fn, device_type, amp_dtype), batch_size=batch_size, mode=mode)
        self.optimizer, self.scaler = optimizer, scaler

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def body(forward):
            loss, logits = forward(images, labels)
            self.optimizer.zero_grad(set_to_none=True)
            # Inside the timed call: AOTAutograd compiles the backward graph at its first use.
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return loss.detach(), logits.detach()

        return self._run(body, images)


class EvalStep(_Step):
    """The loss and float logits of a batch, without gradients (the caller sets ``model.eval()``)."""

    def __init__(
        self, model: nn.Module, loss_fn: nn.Module, *, device_type: str, amp_dtype: torch.dtype | None, batch_size: int, mode: str | None = None
    ):
        super().__init__(_Forward(model, loss_fn, device_type, amp_dtype), batch_size=batch_size, mode=mode)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(lambda forward: forward(images, labels), images)

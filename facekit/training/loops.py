"""One training pass and one evaluation pass over a loader: the innermost loops of a run.

They take the model, the loader and an :class:`~facekit.training.accelerator.Accelerator`, and
return figures summed over every rank of a data-parallel job, so each rank sees the same ones.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch

from facekit import distributed
from facekit.compiling import EvalStep, TrainStep
from facekit.runs import DENSE_PROBS_LIMIT, TOP_K, TestScores
from facekit.schedules import Schedule
from facekit.training.accelerator import Accelerator
from facekit.training.optim import keep_frozen_batchnorm_in_eval
from facekit.training.progress import Progress


class EpochStats(NamedTuple):
    """One training pass: mean loss, accuracy, wall seconds, images seen, and the seconds of those spent compiling."""

    loss: float
    accuracy: float
    seconds: float
    images: int
    compile_seconds: float

    @property
    def images_per_s(self) -> float:
        """Steady-state throughput: the calls that compiled a graph are left out."""
        running = self.seconds - self.compile_seconds
        return self.images / running if running > 0 else 0.0


def train_epoch(
    model, loader, loss_fn, optimizer, scaler, schedule: Schedule | None, *, accelerator: Accelerator, batch_size: int,
    progress: Progress,
) -> EpochStats:  # fmt: skip
    """One pass over ``loader``, eager or compiled as the accelerator says; ``schedule`` steps per batch."""
    model.train()
    keep_frozen_batchnorm_in_eval(model)
    step = TrainStep(model, loss_fn, optimizer, scaler, **accelerator.step_settings(batch_size))
    device = accelerator.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = accelerator.prepare_batch(images, labels)
        loss, logits = step(images, labels)
        if schedule is not None:
            schedule.step()
        # Accumulate on the device: a .item() per batch would stall the GPU every step.
        total_loss += loss * labels.shape[0]
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.shape[0]
        progress.batch_end(float("nan") if device.type == "cuda" else float(loss), labels.shape[0])
    elapsed = time.perf_counter() - start
    total, right, seen = distributed.sum_across_ranks([float(total_loss), float(correct), seen])
    divisor = max(int(seen), 1)
    return EpochStats(total / divisor, right / divisor, elapsed, int(seen), step.compile_seconds)


@torch.no_grad()
def evaluate(
    model, loader, loss_fn, *, accelerator: Accelerator, batch_size: int
) -> tuple[float, float, TestScores]:
    """Mean loss and accuracy (over all ranks), and the scores of this rank's images in loader order.

    Of each image it keeps the argmax and the top k = min(C, TOP_K) classes (found on the device,
    a batch at a time), and the whole softmax row only while the N x C probabilities of all ranks
    stay within DENSE_PROBS_LIMIT: memory proportional to N * k for many classes.
    Give it the bare model, never the DistributedDataParallel wrapper: evaluation shards differ
    in length by one, and the wrapper would wait for a forward pass that never comes.
    """
    model.eval()
    step = EvalStep(model, loss_fn, **accelerator.step_settings(batch_size))
    total_loss, correct, seen, num_classes = 0.0, 0, 0, 0
    y_pred, top_ids, top_probs, probs = [], [], [], []
    for images, labels in loader:
        images, labels = accelerator.prepare_batch(images, labels)
        loss, logits = step(images, labels)
        total_loss += float(loss) * labels.shape[0]
        correct += int((logits.argmax(1) == labels).sum())
        seen += labels.shape[0]
        num_classes = logits.shape[1]
        # This rank's rows alone past the limit: all ranks' are too, so the rows are not kept.
        if probs is not None and seen * num_classes > DENSE_PROBS_LIMIT:
            probs = None
        predicted, top, top_values = _top_classes(logits, probs, num_classes)
        y_pred.append(predicted.cpu())
        top_ids.append(top.indices.to(torch.int32).cpu())
        top_probs.append(top_values.float().cpu())
    total_loss, correct, seen = distributed.sum_across_ranks([total_loss, correct, seen])
    keep_probs = probs is not None and int(seen) * num_classes <= DENSE_PROBS_LIMIT  # the same on every rank
    seen = max(int(seen), 1)
    scores = TestScores(
        y_pred=_stacked(y_pred, np.int64, 1),
        top_ids=_stacked(top_ids, np.int32, 2),
        top_probs=_stacked(top_probs, np.float32, 2),
        probs=_stacked(probs, np.float32, 2) if keep_probs else None,
    )
    return total_loss / seen, correct / seen, scores


def _top_classes(logits: torch.Tensor, probs: list[torch.Tensor] | None, num_classes: int):
    """A batch's argmax, its top k and their probabilities; the softmax rows join ``probs`` while it is kept."""
    if probs is not None:
        batch_probs = torch.softmax(logits, 1)
        probs.append(batch_probs.cpu())
        top = torch.topk(batch_probs, min(num_classes, TOP_K), dim=1)
        return batch_probs.argmax(1), top, top.values
    # Many classes: the top k of the logits and their softmax values alone, without a second
    # batch x classes tensor per batch (freed and reallocated, such tensors fragment the CPU
    # heap: the peak grew by gigabytes over a 50k-class validation).
    top = torch.topk(logits, min(num_classes, TOP_K), dim=1)
    top_values = (top.values - torch.logsumexp(logits, 1, keepdim=True)).exp()
    return top.indices[:, 0], top, top_values


def _stacked(batches: list[torch.Tensor], dtype: type, ndim: int) -> np.ndarray:
    """The batches' rows as one array; an empty one of ``ndim`` dimensions where there were no batches."""
    return torch.cat(batches).numpy() if batches else np.zeros((0,) * ndim, dtype=dtype)

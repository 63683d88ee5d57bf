"""Learning-rate schedules (``--schedule``), stepped once per training batch.

- ``constant`` (default): the optimizer's learning rate throughout, as before schedules existed.
- ``cosine``: from ``--lr`` down to 0 along half a cosine over the whole run.
- ``onecycle``: torch's one-cycle policy with ``--lr`` as the peak: warm up from lr/25 over the
  first 30% of the steps, then anneal to lr/250000 (cosine), cycling Adam's beta1 inversely.

The total number of steps is fixed when the schedule is built (epochs x batches per epoch) and
saved with its state, so a resumed run follows the schedule it started with; after the last
planned batch the learning rate stays at that batch's.
"""

from __future__ import annotations

from typing import Any

from facekit.errors import UsageError
from facekit.plugins import unknown_name_message

SCHEDULES = ("constant", "cosine", "onecycle")


class Schedule:
    """A per-batch learning-rate schedule: call :meth:`step` after every optimizer step."""

    def __init__(self, name: str, scheduler: Any | None, total_steps: int):
        self.name = name
        self.scheduler = scheduler  # a torch LRScheduler; None for constant
        self.total_steps = total_steps

    def step(self) -> None:
        # Hold the last batch's rate past the planned steps: torch's cosine would climb again,
        # one-cycle would climb and then raise.
        if self.scheduler is not None and self.scheduler.last_epoch < self.total_steps - 1:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """The schedule's name and position, for the resume checkpoint."""
        state = self.scheduler.state_dict() if self.scheduler is not None else None
        return {"name": self.name, "total_steps": self.total_steps, "scheduler": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved schedule; resuming with a different ``--schedule`` is a usage error."""
        if state.get("name") != self.name:
            raise UsageError(
                f"--schedule {self.name}: the run was started with --schedule {state.get('name')}; resume with that"
            )
        self.total_steps = int(state["total_steps"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def check_schedule(name: str) -> None:
    """A UsageError naming the choices unless ``name`` is a schedule (before any work is done)."""
    if name not in SCHEDULES:
        raise UsageError(unknown_name_message("--schedule", name, list(SCHEDULES)))


def build_schedule(name: str, optimizer, *, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule ``name`` over ``epochs`` x ``steps_per_epoch`` optimizer steps of ``optimizer``.

    Peak or starting learning rates are the optimizer's current ones (``--lr``).
    """
    from torch.optim import lr_scheduler

    check_schedule(name)
    total = max(1, epochs) * max(1, steps_per_epoch)
    if name == "cosine":
        return Schedule(name, lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0), total)
    if name == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return Schedule(name, lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total), total)
    return Schedule(name, None, total)

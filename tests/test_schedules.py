"""Learning-rate schedules: values at known steps, holding after the end, resume state."""

import math

import pytest
import torch

from facekit.errors import UsageError
from facekit.schedules import build_schedule

LR = 1e-3


def _optimizer():
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=LR)


def _lrs(name: str, steps: int, *, epochs: int = 2, steps_per_epoch: int = 5) -> list[float]:
    """The learning rate in force for each of ``steps`` batches."""
    optimizer = _optimizer()
    schedule = build_schedule(name, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_constant_keeps_the_learning_rate():
    assert _lrs("constant", 15) == [LR] * 15


def test_cosine_goes_from_lr_towards_zero_and_then_holds():
    lrs = _lrs("cosine", 14)  # 10 scheduled steps, then 4 more
    for step in (0, 3, 5, 9):
        assert lrs[step] == pytest.approx(LR * (1 + math.cos(math.pi * step / 10)) / 2)
    assert lrs[5] == pytest.approx(LR / 2)
    assert lrs[10:] == [lrs[9]] * 4


def test_onecycle_warms_up_to_lr_then_anneals():
    lrs = _lrs("onecycle", 13, epochs=2, steps_per_epoch=5)
    assert lrs[0] == pytest.approx(LR / 25)
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == 2  # 30% of 10 steps, counted from 0
    assert lrs[9] == pytest.approx(LR / 250000)
    assert lrs[10:] == [lrs[9]] * 3  # holds instead of climbing or raising past the end


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_state_round_trip_resumes_the_same_learning_rates(name):
    uninterrupted = _lrs(name, 10, epochs=2, steps_per_epoch=5)
    optimizer = _optimizer()
    schedule = build_schedule(name, optimizer, epochs=2, steps_per_epoch=5)
    for _ in range(6):
        optimizer.step()
        schedule.step()
    saved = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
    # A resumed run asks for more epochs: the saved schedule still decides.
    optimizer = _optimizer()
    schedule = build_schedule(name, optimizer, epochs=4, steps_per_epoch=5)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    resumed = []
    for _ in range(4):
        resumed.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert resumed == pytest.approx(uninterrupted[6:], rel=1e-9)


def test_unknown_schedule_and_changed_schedule_are_usage_errors():
    with pytest.raises(UsageError, match="--schedule 'cosin' is not known; choose one of: constant, cosine, onecycle"):
        build_schedule("cosin", _optimizer(), epochs=1, steps_per_epoch=1)
    saved = build_schedule("cosine", _optimizer(), epochs=1, steps_per_epoch=3).state_dict()
    with pytest.raises(UsageError, match="started with --schedule cosine"):
        build_schedule("onecycle", _optimizer(), epochs=1, steps_per_epoch=3).load_state_dict(saved)

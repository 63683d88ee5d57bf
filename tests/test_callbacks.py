"""Early stopping and best keeping: their decisions, and their state surviving a checkpoint."""

import math

import pytest
import torch

from facekit.callbacks import BestKeeper, EarlyStopping

LOSSES = [1.0, 0.8, 0.8, 0.9, 0.7, 0.75, 0.76, 0.77]


def test_early_stopping_counts_epochs_without_a_strictly_lower_loss():
    stopper = EarlyStopping(patience=2)
    decisions = []
    for loss in LOSSES:
        improved = stopper.update(loss)
        decisions.append((improved, stopper.stale, stopper.should_stop))
    assert decisions == [
        (True, 0, False),
        (True, 0, False),
        (False, 1, False),  # an equal loss is not an improvement
        (False, 2, True),
        (True, 0, False),  # an improvement clears the count
        (False, 1, False),
        (False, 2, True),
        (False, 3, True),
    ]
    assert stopper.best_val_loss == 0.7


def test_patience_zero_never_stops():
    stopper = EarlyStopping(patience=0)
    for loss in LOSSES + [2.0] * 20:
        stopper.update(loss)
    assert stopper.stale == 23 and not stopper.should_stop  # 3 after the best, then 20


def test_best_keeper_remembers_the_epoch_of_the_lowest_loss():
    keeper = BestKeeper()
    assert keeper.best_epoch == 0 and keeper.best_val_loss == math.inf
    flags = [keeper.update(loss, epoch) for epoch, loss in enumerate(LOSSES, start=1)]
    assert flags == [True, True, False, False, True, False, False, False]
    assert (keeper.best_epoch, keeper.best_val_loss) == (5, 0.7)


@pytest.mark.parametrize("split_at", [0, 3, 5])
def test_state_round_trip_continues_exactly_like_an_uninterrupted_run(tmp_path, split_at):
    straight_stop, straight_keep = EarlyStopping(patience=2), BestKeeper()
    straight = [(straight_keep.update(v, e), straight_stop.update(v), straight_stop.should_stop) for e, v in enumerate(LOSSES, 1)]

    first_stop, first_keep = EarlyStopping(patience=2), BestKeeper()
    for epoch, loss in enumerate(LOSSES[:split_at], start=1):
        first_keep.update(loss, epoch)
        first_stop.update(loss)
    # Through a real checkpoint file, as a resume reads it (inf included before the first epoch).
    torch.save({"stop": first_stop.state_dict(), "keep": first_keep.state_dict()}, tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    stop, keep = EarlyStopping(patience=2), BestKeeper()
    stop.load_state_dict(saved["stop"])
    keep.load_state_dict(saved["keep"])
    resumed = [(keep.update(v, e), stop.update(v), stop.should_stop) for e, v in enumerate(LOSSES[split_at:], split_at + 1)]
    assert resumed == straight[split_at:]
    assert (keep.best_epoch, keep.best_val_loss, stop.stale) == (straight_keep.best_epoch, straight_keep.best_val_loss, straight_stop.stale)

"""The run folder's keeper: creating it, checkpoints as FoldState, resume points, the kept fold, predictions."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from facekit.engine import rng_state
from facekit.errors import UsageError
from facekit.runs import CHECKPOINTS, FoldState, Run, RunWriter, TestScores
from facekit.schedules import build_schedule

CHECKPOINT_KEYS = ["model", "optimizer", "epoch", "fold", "rng", "config", "classes", "history", "fold_results",
                   "best_val_loss", "best_epoch", "stale", "fold_done", "schedule"]  # fmt: skip


def fold_state(fold: int = 0, epoch: int = 2, **changes) -> FoldState:
    """A realistic state: a model and an Adam optimizer after one step, the RNG states."""
    torch.manual_seed(fold)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = build_schedule("onecycle", optimizer, epochs=2, steps_per_epoch=3)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    schedule.step()
    history = [{"fold": fold, "epoch": e, "val_loss": 1.0 / e} for e in range(1, epoch + 1)]
    values = dict(
        model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch, fold=fold, rng=rng_state(),
        config={"arch": "baseline", "epochs": 5}, classes=["ann", "bob", "cy"], history=history, fold_results=[],
        best={"best_val_loss": 0.5, "best_epoch": epoch}, early_stopping={"best_val_loss": 0.5, "stale": 0},
        schedule=schedule.state_dict(),
    )  # fmt: skip
    return FoldState(**(values | changes))


def assert_same_state(a: FoldState, b: FoldState) -> None:
    assert a.model.keys() == b.model.keys() and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert a.optimizer["param_groups"] == b.optimizer["param_groups"]
    for key, slot in a.optimizer["state"].items():
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(b.optimizer["state"][key][n])) for n, v in slot.items())
    assert torch.equal(a.rng["torch"], b.rng["torch"]) and a.rng["numpy"] == b.rng["numpy"]
    assert list(a.rng["python"][1]) == list(b.rng["python"][1])
    for field in ("epoch", "fold", "config", "classes", "history", "fold_results", "best", "early_stopping", "fold_done", "schedule"):
        assert getattr(a, field) == getattr(b, field), field


def test_fold_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    state = fold_state(fold=1, epoch=3, early_stopping={"best_val_loss": 0.5, "stale": 2})
    RunWriter(tmp_path).save_fold_state(state, best=True)
    for name in ("fold-1-last.pt", "fold-1-best.pt"):
        raw = torch.load(tmp_path / CHECKPOINTS / name, map_location="cpu", weights_only=True)
        assert list(raw) == CHECKPOINT_KEYS  # the on-disk layout older runs have, plus the schedule
        assert (raw["best_val_loss"], raw["best_epoch"], raw["stale"], raw["fold_done"]) == (0.5, 3, 2, False)
        assert_same_state(FoldState.from_dict(raw), state)


def test_a_checkpoint_from_before_schedules_loads_without_one(tmp_path):
    raw = fold_state().to_dict()
    del raw["schedule"]
    assert FoldState.from_dict(raw).schedule is None


def test_a_plain_epoch_writes_only_the_last_checkpoint(tmp_path):
    RunWriter(tmp_path).save_fold_state(fold_state(), best=False)
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["fold-0-last.pt"]


def test_latest_state_after_a_finished_fold_points_at_the_next_one(tmp_path):
    writer, run = RunWriter(tmp_path), Run(tmp_path)
    assert run.latest_state() is None
    state = fold_state(fold=0, epoch=2)
    writer.save_fold_state(state, best=True)
    assert run.latest_state().next_fold == 0  # unfinished: continue fold 0
    result = {"fold": 0, "best_epoch": 2, "val_loss": 0.5, "val_acc": 0.9}
    history = state.history + [{"fold": 0, "epoch": 3, "val_loss": 0.6}]
    writer.mark_fold_done(state, [result], history)
    latest = run.latest_state()
    assert latest.fold_done and latest.fold == 0 and latest.next_fold == 1
    assert latest.fold_results == [result] and latest.history == history
    assert_same_state(latest, FoldState(**(vars(state) | {"fold_done": True, "fold_results": [result], "history": history})))
    assert not state.fold_done, "marking a fold done leaves the caller's state alone"


def test_latest_state_is_the_highest_fold_by_number(tmp_path):
    writer = RunWriter(tmp_path)
    for fold in (2, 10, 9):  # "fold-10" sorts before "fold-2" as text
        writer.save_fold_state(fold_state(fold=fold), best=False)
    assert Run(tmp_path).latest_state().fold == 10


def test_create_refuses_a_non_empty_folder_without_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for force in (False, True):  # not a run folder: never emptied, even with --force
        with pytest.raises(UsageError, match=r"not a facekit run folder \(it holds precious.txt\)"):
            RunWriter.create(out, force=force)
    assert (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()
    RunWriter.create(out, force=False).close()
    (out / "config.json").write_text('{"arch": "baseline", "data": "faces"}')
    (out / "split.json").write_text('{"files": []}')
    with pytest.raises(UsageError, match=r"run folder .*run already exists: .*--resume .*--force"):
        RunWriter.create(out, force=False)
    writer = RunWriter.create(out, force=True)
    assert writer.path == out and [p.name for p in out.iterdir()] == [".lock"]  # only the training process's lock
    writer.close()


def test_create_accepts_a_new_or_empty_folder_and_refuses_a_file(tmp_path):
    assert RunWriter.create(tmp_path / "a" / "b", force=False).path.is_dir()
    (tmp_path / "empty").mkdir()
    RunWriter.create(tmp_path / "empty", force=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        RunWriter.create(tmp_path / "file", force=True)
    assert (tmp_path / "file").read_text() == "x"


def test_keep_best_fold_writes_folds_json_and_copies_the_kept_checkpoint(tmp_path):
    writer = RunWriter(tmp_path)
    for fold in range(3):
        writer.save_fold_state(fold_state(fold=fold), best=True)
    results = [{"fold": f, "best_epoch": 1, "val_loss": loss, "val_acc": acc} for f, loss, acc in [(0, 0.5, 0.6), (1, 0.3, 0.8), (2, 0.4, 0.7)]]
    assert writer.keep_best_fold(results) == 1
    folds = json.loads((tmp_path / "folds.json").read_text())
    assert folds["kept"] == 1 and folds["folds"] == results
    assert folds["val_loss_mean"] == pytest.approx(0.4) and folds["val_loss_std"] == pytest.approx(np.std([0.5, 0.3, 0.4]))
    assert folds["val_acc_mean"] == pytest.approx(0.7)
    checkpoints = tmp_path / CHECKPOINTS
    assert (checkpoints / "best.pt").read_bytes() == (checkpoints / "fold-1-best.pt").read_bytes()
    assert not list(checkpoints.glob(".*")), "no temporary file left behind"


def test_predictions_npz_and_csv(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float64)
    files = ["a/1.jpg", 'odd, "name"/2.jpg', "c/3.jpg"]
    classes = ["ann", "bob, jr", "cy"]
    (tmp_path / "classes.json").write_text(json.dumps(classes))  # predictions are read against the run's classes
    scores = TestScores(y_pred=np.array([0, 2]), top_ids=np.array([[0, 1], [2, 1]], dtype=np.int32),
                        top_probs=np.array([[0.7, 0.2], [0.6, 0.3]]), probs=probs)
    RunWriter(tmp_path).write_predictions(np.array([1, 2]), np.array([0, 2]), scores, classes, files)
    saved = Run(tmp_path).predictions()
    assert saved["y_pred"].tolist() == [0, 2] and saved["index"].tolist() == [1, 2] and saved["probs"].dtype == np.float32
    assert saved["top_ids"].tolist() == [[0, 1], [2, 1]] and saved["top_probs"].dtype == np.float32
    assert (tmp_path / "predictions.csv").read_text().splitlines() == [
        "file,true_id,true_name,pred_id,pred_name,confidence",
        '"odd, ""name""/2.jpg",0,ann,0,ann,0.7000',
        "c/3.jpg,2,cy,2,cy,0.6000",
    ]


def test_write_setup_records_the_config_with_versions_and_the_split(tmp_path):
    import facekit
    from facekit.api import Fold, SplitPlan

    plan = SplitPlan(test=np.array([3]), folds=[Fold(train=np.array([0, 1]), val=np.array([2]))], notes=["a rule"])
    RunWriter(tmp_path / "run").write_setup(
        config={"arch": "baseline", "input_size": 64}, classes=["ann", "bob"], root=tmp_path / "faces" / ".." / "faces",
        files=["ann/1.jpg", "ann/2.jpg", "bob/1.jpg", "bob/2.jpg"], labels=np.array([0, 0, 1, 1], dtype=np.int64),
        strategy="holdout", plan=plan, normalization={"source": "training split", "folds": [{"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}]},
    )  # fmt: skip
    run = Run.open(tmp_path / "run")
    assert list(run.config)[:2] == ["arch", "input_size"]
    assert run.config["facekit_version"] == facekit.__version__ and run.config["torch_version"] == torch.__version__
    assert run.classes == ["ann", "bob"]
    assert run.split == {
        "strategy": "holdout", "root": str((tmp_path / "faces").resolve()),
        "files": ["ann/1.jpg", "ann/2.jpg", "bob/1.jpg", "bob/2.jpg"], "labels": [0, 0, 1, 1],
        "test": [3], "folds": [{"train": [0, 1], "val": [2]}], "notes": ["a rule"],
    }  # fmt: skip
    assert run.normalization == {"source": "training split", "folds": [{"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}]}


def test_checkpoints_and_fold_pruning_never_write_through_or_remove_a_links_target(tmp_path):
    """A checkpoint name that is a link to a user's file is replaced (the link), and pruning a finished
    fold removes only facekit's own names in the run's checkpoints folder."""
    victim = tmp_path / "precious.bin"
    victim.write_bytes(b"keep me")
    run = tmp_path / "run"
    writer = RunWriter(run)
    writer.checkpoints.mkdir(parents=True)
    (writer.checkpoints / "fold-0-best.pt").symlink_to(victim)
    (writer.checkpoints / "notes.txt").write_text("mine")
    state = fold_state(fold=0)
    writer.save_fold_state(state, best=True)
    assert not (writer.checkpoints / "fold-0-best.pt").is_symlink()
    (writer.checkpoints / "fold-1-best.pt").symlink_to(victim)
    writer.save_fold_state(fold_state(fold=1), best=False)
    results = [{"fold": 0, "val_loss": 0.1, "val_acc": 1.0, "best_epoch": 2}, {"fold": 1, "val_loss": 0.5, "val_acc": 0.5, "best_epoch": 2}]
    writer.mark_fold_done(fold_state(fold=1), results, [])
    assert victim.read_bytes() == b"keep me" and (writer.checkpoints / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in writer.checkpoints.iterdir()) == ["fold-0-best.pt", "fold-1-last.pt", "notes.txt"]

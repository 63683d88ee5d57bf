"""The training engine: one model per fold of a split plan, the best kept, judged on the test split.

It knows architectures, losses and splits only through their spec contracts (facekit.specs), and
only trains: settings and limits are :mod:`facekit.config`'s, device and precision, resume rules
and the passes over a loader :mod:`facekit.training`'s, and every file of a run is written by its
keeper (:class:`facekit.runs.RunWriter`), checkpointed every epoch, so an interruption never
loses more than one epoch.

Started by torchrun it trains data-parallel (:mod:`facekit.distributed`): the model is wrapped
in ``DistributedDataParallel``, each rank reads its shard of every epoch, ``--batch-size`` is the
global batch, losses and counts are summed over the ranks (so every rank sees the same figures and
stops at the same epoch), and rank 0 alone reads and writes the run folder.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facekit import distributed
from facekit.callbacks import BestKeeper, EarlyStopping
from facekit.config import TrainConfig
from facekit.data import fingerprints
from facekit.data.augment import AugmentPipeline, augment_args
from facekit.data.stats import run_normalizations
from facekit.devices import resolve_device
from facekit.distributed import Distributed
from facekit.errors import FacekitError, UsageError
from facekit.factory import create_model
from facekit.runs import FoldState, Run, RunWriter, TestScores, check_destination, default_run_dir, load_checkpoint
from facekit.schedules import Schedule, build_schedule
from facekit.specs import LoggerContext, Normalization
from facekit.tracking import Tracking, logger_specs
from facekit.training import loops, resume as resume_rules
from facekit.training.accelerator import Accelerator
from facekit.training.data_plan import plan_data
from facekit.openset_training import check_openset_score
from facekit.training.divergence import TrainingDiverged, all_finite, divergence_message
from facekit.training.loops import EpochStats
from facekit.training.optim import build_optimizer
from facekit.training.probe import check_model
from facekit.training.progress import Progress, SilentProgress, TrainingInterrupted
from facekit.training.rng import restore_rng_state, rng_state, seed_everything
from facekit.training.state import FoldTraining, RunRecord

# Also importable from here, as before: build_optimizer, resolve_device, rng_state, EpochStats, Progress, SilentProgress.


class Trainer:
    """Trains one run; ``train()`` starts it, ``Trainer.resume(run)`` continues it."""

    def __init__(self, config: TrainConfig, progress: Progress | None = None, run_dir: Path | None = None):
        from facekit.plugins import architectures, augmentations, losses, splits

        self.dist = Distributed.from_env()
        # Rank 0 talks to the user; N copies of every progress bar would say nothing more.
        self.progress = (progress or SilentProgress()) if self.dist.is_main else SilentProgress()
        # Check every setting and name first: a typo or a bad number fails in a second, before any
        # file is written. The checks are deterministic, so every rank refuses alike.
        config = config.validated()  # every option, once (facekit.config): what follows trusts the values
        self.arch = architectures().get(config.arch)
        self.loss_spec = losses().get(config.loss)
        self.loss_spec.check_label_smoothing(config.label_smoothing)
        # The run records every option of its loss, the defaults included, typed.
        config = dataclasses.replace(config, loss_options=self.loss_spec.resolve_options(config.loss_options))
        self.split_spec = splits().get(config.split)
        self.logger_specs = logger_specs(config.log)
        self.tracking = Tracking()  # the started trackers, once the run folder exists
        check_openset_score(config, self.arch, self.loss_spec)
        if config.weights is not None and not self.arch.pretrained:
            raise UsageError(
                f"--weights {config.weights}: architecture {self.arch.name!r} takes no pretrained weights "
                "(it trains from scratch); drop --weights, or choose a pretrained architecture"
            )
        self.augment = AugmentPipeline.from_args(augment_args(config.augment, config.rotate), augmentations())
        # The run records the steps as they run; --rotate is folded into them.
        self.config = config = dataclasses.replace(config, rotate=None, augment=self.augment.to_args())
        self.input_size = self.arch.input_size if config.input_size is None else config.input_size
        self.rank_batch_size = self.dist.per_rank_batch(config.batch_size)
        self.cache = config.cache
        self._cache_files: tuple[str, ...] | None = None  # the data set's files: one disk cache for every split
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        device = self.dist.device(resolve_device(config.device))
        self.accelerator = Accelerator.choose(device, amp=config.amp, channels_last=config.channels_last, compile=config.compile)
        if self.accelerator.note:
            self.progress.message(self.accelerator.note)
        # Known once the folder exists (a default name gets a suffix when taken); the caller's Ctrl-C
        # handler reads it from TrainingInterrupted.
        self.run_dir: Path | None = Path(run_dir) if run_dir else None

    # What the run computes on, as the accelerator chose it.
    device = property(lambda self: self.accelerator.device)
    amp = property(lambda self: self.accelerator.amp)
    amp_dtype = property(lambda self: self.accelerator.amp_dtype)
    channels_last = property(lambda self: self.accelerator.channels_last)
    compile_mode = property(lambda self: self.accelerator.compile_mode)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> dict[str, Any]:
        """Index the data, plan the split, compute the normalization: all a run's setup, before its folder exists."""
        index, plan, openset_split = plan_data(self.config, self.split_spec, self.progress)
        config = self.config.to_dict() | {
            "input_size": self.input_size,
            # "device" stays what was asked ("auto"), so a resume elsewhere picks that machine's device.
            "device_used": str(self.device),
            "amp": self.amp,
            "channels_last": self.channels_last,
            "compile_used": self.compile_mode,
            "world_size": self.dist.world_size,
        }
        return dict(
            config=config, classes=index.classes, root=Path(self.config.data), files=index.files, labels=index.labels,
            strategy=self.split_spec.name, plan=plan, openset=openset_split,
            normalization=run_normalizations(self.arch, index.paths(), plan, self.input_size, self.progress),
            fingerprints=fingerprints.record(index.root, index.files, index.file_hashes, openset_split),
        )  # fmt: skip

    def check_model(self) -> None:
        """Build the model once and run one image through it, so bad weights or a too small
        ``--input-size`` fail before anything is written, with the option to change."""
        check_model(self.arch, self.config, self.input_size)

    def _loader(self, files: list[str], labels: np.ndarray, norm: Normalization, *, train: bool, seed: int):
        from facekit.data.loaders import make_loader

        return make_loader(
            files, labels, batch_size=self.rank_batch_size, input_size=self.input_size, normalization=norm,
            train=train, augment=self.augment,  # evaluation loaders never augment
            seed=seed, device=self.device, backend=self.config.loader, cache=self.cache,
            cache_files=self._cache_files, num_workers=self.config.workers,
            shard_id=self.dist.rank, num_shards=self.dist.world_size,
            # Batches arrive in the dtype and layout the first convolution runs in, so the step
            # does not convert a float32 NCHW copy of every batch.
            output_dtype=self.accelerator.batch_dtype, channels_last=self.channels_last,
        )  # fmt: skip

    # ----------------------------------------------------------------- passes
    def train_epoch(self, model, loader, loss_fn, optimizer, scaler, schedule: Schedule | None = None) -> EpochStats:
        """One pass over ``loader``, eager or compiled as the run is configured (figures over all ranks); ``schedule`` steps per batch."""
        return loops.train_epoch(
            model, loader, loss_fn, optimizer, scaler, schedule,
            accelerator=self.accelerator, batch_size=self.rank_batch_size, progress=self.progress,
        )  # fmt: skip

    def evaluate(self, model, loader, loss_fn) -> tuple[float, float, TestScores]:
        """Mean loss and accuracy (over all ranks), and the scores of this rank's images (:func:`facekit.training.loops.evaluate`)."""
        return loops.evaluate(model, loader, loss_fn, accelerator=self.accelerator, batch_size=self.rank_batch_size)

    # ----------------------------------------------------------------- running
    def train(self) -> Path:
        """Start a new run and train it to the end; every check runs before its folder is made.

        Rank 0 alone indexes the data and makes the folder (its name is free only once it exists);
        the other ranks learn the folder and its setup from it, so they need no --out.
        """
        with distributed.joined(self.dist), distributed.translate_failures(self.dist, self.config.out), ExitStack() as held:
            if self.dist.is_main:  # an --out that would lose or mix with the data fails before any work
                check_destination(self.config.out or default_run_dir(self.config), force=self.config.force,
                                  data=self.config.data, default=self.config.out is None)  # fmt: skip
            self.check_model()  # on every rank: it is deterministic, so each refuses alike
            writers: list[RunWriter] = []  # rank 0's, once make_run made the folder

            def make_run() -> tuple[Path, dict[str, Any]]:
                setup = self._setup()
                self._check_loader(setup)
                writer = held.enter_context(RunWriter.for_config(self.config))  # locked until training ends
                try:
                    writer.write_setup(**setup)
                except BaseException:
                    writer.discard()  # a run folder without its setup is no run: leave none behind
                    raise
                writers.append(writer)
                return writer.path, Run(writer.path).setup()

            run_dir, setup = distributed.from_main(self.dist, make_run)
            self.run_dir = Path(run_dir)
            self.progress.message(f"run folder: {self.run_dir}")
            with distributed.translate_failures(self.dist, self.run_dir):
                return self._run(Run.with_setup(self.run_dir, setup), None, writers[0] if writers else None)

    def _check_loader(self, setup: dict[str, Any]) -> None:
        """Open the chosen loader on one image, so a backend this machine lacks (``--loader dali``) fails now."""
        norm = Normalization.from_dict(setup["normalization"]["folds"][0])
        path = str(Path(self.config.data) / setup["files"][0])
        self._loader([path], setup["labels"][:1], norm, train=True, seed=self.config.seed).close()

    @classmethod
    def resume(cls, run_dir: Path, progress: Progress | None = None, **given: Any) -> Path:
        """Continue an interrupted run from its last checkpoint, with its saved configuration.

        ``given`` holds the settings given again (TrainConfig field names): those in
        RESUME_SETTINGS apply (the training ones are saved in config.json), a value equal to the
        saved one is accepted, and any other change is refused by name with a :class:`UsageError`
        (:mod:`facekit.training.resume`). Rank 0 alone reads the run, checks the changes and holds
        its lock; the other ranks get the setup, the state and the changes from it.
        """
        run_dir = Path(run_dir)
        place = Distributed.from_env()
        with distributed.joined(place), distributed.translate_failures(place, run_dir), ExitStack() as held:
            writers: list[RunWriter] = []

            def open_run() -> tuple[dict[str, Any], FoldState | None, dict[str, Any]]:
                run = Run.open(run_dir)
                changes = resume_rules.resume_changes(run, TrainConfig.from_dict(run.config), given)
                writers.append(held.enter_context(RunWriter.open(run_dir)))  # locked until training ends
                state = run.latest_state()
                resume_rules.check_training_changes(run, state, changes)
                resume_rules.check_data_present(run)
                fingerprints.check_unchanged(
                    run.path, run.split["root"], run.split["files"], run.fingerprints, run.split.get("openset")
                )
                return run.setup(), state, changes

            setup, state, changes = distributed.from_main(place, open_run)
            writer = writers[0] if writers else None
            # The saved config's input_size is the resolved one.
            trainer = cls(dataclasses.replace(TrainConfig.from_dict(setup["config"]), **changes), progress, run_dir=run_dir)
            trainer.check_model()
            lasting = resume_rules.lasting_changes(changes)
            if lasting:
                setup["config"] = setup["config"] | lasting
                if writer is not None:
                    writer.update_config(lasting)
            if state is None:
                trainer.progress.message(f"{run_dir}: no checkpoint yet, starting from epoch 1")
            return trainer._run(Run.with_setup(run_dir, setup), state, writer)

    def _run(self, run: Run, resume_state: FoldState | None, writer: RunWriter | None) -> Path:
        # Only the rank that writes the run folder tracks (see facekit.tracking).
        context = LoggerContext(run.path, run.config, len(run.split["folds"]), resumed=resume_state is not None)
        try:
            with Tracking.start(self.logger_specs if writer is not None else [], context) as self.tracking:
                run_dir = self._train_folds(run, resume_state, writer)
                self.tracking.log_results(Run(run_dir))
                return run_dir
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.run_dir) from None

    def _train_folds(self, run: Run, resume_state: FoldState | None, writer: RunWriter | None) -> Path:
        split = run.split
        record = RunRecord.of(run, resume_state, writer)
        self._cache_files = tuple(record.files)
        from facekit.data.loaders import describe_loaders

        self.progress.message(describe_loaders(self.config.loader, self.device))
        divergence = None
        for fold_index in range(resume_state.next_fold if resume_state else 0, len(record.folds)):
            # A finished fold's state only says where to start; an unfinished one is continued.
            resuming = resume_state is not None and fold_index == resume_state.fold and not resume_state.fold_done
            result, diverged_epoch = self._train_fold(record, fold_index, resume_state if resuming else None)
            if result is not None:
                record.fold_results.append(result)
            if diverged_epoch is not None:  # the next folds would diverge alike: stop here
                divergence = (fold_index, diverged_epoch, result)
                break

        if record.fold_results:  # the same on every rank: losses are summed over the ranks
            self._finish(run, record)
            if writer is not None and split.get("openset"):
                from facekit.openset_training import evaluate_openset

                evaluate_openset(
                    Run(self.run_dir), device=self.device, target_fpir=self.config.target_fpir,
                    score=self.config.openset_score, progress=self.progress, writer=writer,
                )  # fmt: skip
        if divergence is not None:
            raise TrainingDiverged(divergence_message(self.run_dir, self.config.lr, *divergence, folds=len(record.folds)))
        return self.run_dir

    # ------------------------------------------------------------- one fold
    def _train_fold(
        self, record: RunRecord, fold_index: int, state: FoldState | None
    ) -> tuple[dict[str, Any] | None, int | None]:
        """Train one fold (from ``state`` when resuming it): its result (None when no epoch of it
        finished well) and the epoch it diverged at, if it did."""
        fold = self._start_fold(record, fold_index)
        try:
            if state is not None:
                self._restore_fold(fold, state)
            if self.cache != "off":
                self.progress.message(f"decoded-image cache: {fold.train_loader.cache_in_use}")
            for epoch in range(fold.start_epoch, self.config.epochs + 1):
                if fold.early_stopping.should_stop or not self._train_one_epoch(record, fold, epoch):
                    break
        finally:
            fold.close()
        return self._end_fold(record, fold)

    def _start_fold(self, record: RunRecord, fold_index: int) -> FoldTraining:
        """Seed the fold, then build its model, optimizer, losses, loaders and schedule, in that order (resume relies on it)."""
        train_idx, val_idx = (np.asarray(record.folds[fold_index][part], dtype=int) for part in ("train", "val"))
        seed = self.config.seed + 1000 * fold_index
        seed_everything(seed)
        num_classes = len(record.classes)
        model = self._build_model(num_classes)
        trained = distributed.wrap_model(self.dist, model, self.device)
        model = getattr(trained, "module", model)
        optimizer = build_optimizer(model, self.arch, self.config.lr, self.config.weight_decay)
        scaler = self.accelerator.grad_scaler()
        counts = np.bincount(record.labels[train_idx], minlength=num_classes)
        loss_fn = self.loss_spec.make(
            counts.tolist(), label_smoothing=self.config.label_smoothing, options=self.config.loss_options
        ).to(self.device)
        # Validation loss is always plain cross-entropy, so runs with different losses compare fairly.
        val_loss_fn = nn.CrossEntropyLoss().to(self.device)
        if len(val_idx) == 0:
            self.progress.message(
                f"fold {fold_index} has no validation images (--val-size 0): the last epoch is kept, "
                "validation loss is not measured ('-') and early stopping (--patience) is off"
            )
        norm = record.normalizations[fold_index]
        train_loader = self._loader([record.files[i] for i in train_idx], record.labels[train_idx], norm, train=True, seed=seed)
        val_loader = None
        if len(val_idx) > 0:
            val_loader = self._loader([record.files[i] for i in val_idx], record.labels[val_idx], norm, train=False, seed=seed)
        # Built before a resumed optimizer state is loaded, as torch expects: the state then
        # overwrites the learning rates the schedule set, and the schedule continues from its own.
        schedule = build_schedule(self.config.schedule, optimizer, epochs=self.config.epochs, steps_per_epoch=len(train_loader))
        return FoldTraining(
            index=fold_index, model=model, trained=trained, optimizer=optimizer, scaler=scaler, schedule=schedule,
            loss_fn=loss_fn, val_loss_fn=val_loss_fn, train_loader=train_loader, val_loader=val_loader,
            best=BestKeeper(), early_stopping=EarlyStopping(self.config.patience),
        )  # fmt: skip

    def _restore_fold(self, fold: FoldTraining, state: FoldState) -> None:
        """Continue where ``state`` stopped: weights, optimizer, schedule, random numbers and callbacks."""
        fold.model.load_state_dict(state.model)
        fold.optimizer.load_state_dict(state.optimizer)
        if state.schedule is not None:  # None: a checkpoint from before schedules (constant)
            fold.schedule.load_state_dict(state.schedule)
        restore_rng_state(state.rng)
        fold.best.load_state_dict(state.best)
        fold.early_stopping.load_state_dict(state.early_stopping)
        fold.start_epoch = state.epoch + 1
        fold.last_state = state  # a resumed fold starts from the checkpoint it loaded
        self.progress.message(f"resuming fold {fold.index} after epoch {state.epoch}")

    def _train_one_epoch(self, record: RunRecord, fold: FoldTraining, epoch: int) -> bool:
        """Train and validate one epoch, record and checkpoint it; False when it diverged (nothing of it is saved)."""
        fold.train_loader.set_epoch(epoch)
        self.progress.epoch_start(fold.index, epoch, self.config.epochs, len(fold.train_loader))
        lr = max(group["lr"] for group in fold.optimizer.param_groups)  # the head's, where a backbone trains slower
        stats = self.train_epoch(fold.trained, fold.train_loader, fold.loss_fn, fold.optimizer, fold.scaler, fold.schedule)
        val_loss, val_acc = (math.nan, math.nan)
        if fold.validated:
            val_loss, val_acc = self.evaluate(fold.model, fold.val_loader, fold.val_loss_fn)[:2]
        # The fp16 scaler skips steps whose loss overflowed, so only its weights tell divergence then.
        losses = ([] if fold.scaler.is_enabled() else [stats.loss]) + ([val_loss] if fold.validated else [])
        if not all_finite(fold.model, losses):
            fold.diverged_epoch = epoch  # this epoch's state is never saved: the last good one stays
            return False
        row = {
            "fold": fold.index, "epoch": epoch, "train_loss": stats.loss, "val_loss": val_loss,
            "train_acc": stats.accuracy, "val_acc": val_acc, "lr": lr, "images_per_s": stats.images_per_s,
            "seconds": stats.seconds, "compile_seconds": stats.compile_seconds,
            "loader": fold.train_loader.backend, "cache": fold.train_loader.cache_in_use,
            "device": str(self.device), "compile": self.compile_mode, "world_size": self.dist.world_size,
        }  # fmt: skip
        record.history.append(row)
        if fold.validated:
            improved = fold.best.update(val_loss, epoch)
            fold.early_stopping.update(val_loss)
        else:
            improved = fold.best.keep_latest(epoch)
        self.progress.epoch_end(row | {"best": improved})
        self.tracking.log_epoch(row)
        if record.writer is not None:
            fold.last_state = FoldState(
                model=fold.model.state_dict(), optimizer=fold.optimizer.state_dict(), epoch=epoch, fold=fold.index,
                rng=rng_state(), config=self.config.to_dict(), classes=record.classes, history=record.history,
                fold_results=record.fold_results, best=fold.best.state_dict(),
                early_stopping=fold.early_stopping.state_dict(), schedule=fold.schedule.state_dict(),
            )  # fmt: skip
            record.writer.save_fold_state(fold.last_state, best=improved)
            record.writer.write_history(record.history)
        return True

    def _end_fold(self, record: RunRecord, fold: FoldTraining) -> tuple[dict[str, Any] | None, int | None]:
        """The fold's result, marked finished in its checkpoint so a resume skips it."""
        if fold.best.best_epoch == 0:  # diverged before any epoch of this fold finished: nothing to keep
            return None, fold.diverged_epoch
        last_state = fold.last_state
        if record.writer is not None and fold.diverged_epoch is not None and last_state is not None:
            # The state in memory shares its tensors with the model, which the diverged epoch changed.
            last_state = Run(self.run_dir).fold_state(fold.index)
        best_epoch = fold.best.best_epoch
        result = {"fold": fold.index, "best_epoch": best_epoch, "val_loss": fold.best.best_val_loss,
                  "val_acc": record.val_acc(fold.index, best_epoch)}  # fmt: skip
        if record.writer is not None and last_state is not None:
            record.writer.mark_fold_done(last_state, record.fold_results + [result], record.history)
        return result, fold.diverged_epoch

    def _build_model(self, num_classes: int) -> nn.Module:
        return create_model(
            self.arch.name, num_classes=num_classes, input_size=self.input_size, finetune=self.config.finetune,
            weights=self.config.weights, trust_weights=self.config.trust_weights, device=self.device,
            channels_last=self.channels_last, loss=self.loss_spec.name, loss_options=self.config.loss_options,
        )  # fmt: skip

    def _finish(self, run: Run, record: RunRecord) -> None:
        """Keep the best fold, evaluate it on the test split, write the predictions."""
        writer = record.writer

        def keep_best_fold() -> tuple[int, dict[str, Any]]:
            kept = writer.keep_best_fold(record.fold_results)
            return kept, load_checkpoint(run.checkpoint_path("best"))["model"]

        # Rank 0 keeps the best fold and sends its weights; every rank evaluates its shard of the test split.
        kept, weights = distributed.from_main(self.dist, keep_best_fold)
        model = run.model_with(weights, device=self.device, channels_last=self.channels_last)
        test_idx = np.asarray(run.split["test"], dtype=int)
        files, labels = [record.files[i] for i in test_idx], record.labels[test_idx]
        loader = self._loader(files, labels, record.normalizations[kept], train=False, seed=self.config.seed)
        try:
            test_loss, test_acc, scores = self.evaluate(model, loader, nn.CrossEntropyLoss().to(self.device))
        finally:
            loader.close()
        # Each array gathered on its own: N x k, and N x C only while small (see evaluate).
        gathered = {
            field.name: None if (part := getattr(scores, field.name)) is None else distributed.gather_shards(part)
            for field in dataclasses.fields(scores)
        }
        if loader.undecodable:  # predictions for fewer images than the test split would be damaged: none are written
            raise FacekitError(
                f"test image {loader.undecodable[0]} could not be decoded ({len(loader.undecodable)} in all), so "
                f"{run.path} has no test results: restore the file, then `facekit train --resume {run.path}` "
                "evaluates the kept model again (or train a new run)"
            )
        if writer is not None:
            writer.write_predictions(test_idx, labels, TestScores(**gathered), run.classes, run.split["files"])
        kept_val_loss = next(r["val_loss"] for r in record.fold_results if r["fold"] == kept)
        shown = "-" if math.isnan(kept_val_loss) else f"{kept_val_loss:.3f}"  # "-": not validated
        self.progress.message(f"kept fold {kept} (val loss {shown}); test accuracy {test_acc:.3f}, test loss {test_loss:.3f}")


def train(config: TrainConfig, progress: Progress | None = None) -> Path:
    """Train a new run; returns its folder."""
    return Trainer(config, progress).train()

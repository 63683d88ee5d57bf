"""The training engine: one model per fold of a split plan, the best kept, judged on the test split.

It knows architectures, losses and splits only through their spec contracts (facekit.specs).
It only trains: everything a run produces is written by its run folder's keeper
(:class:`facekit.runs.RunWriter`), checkpointed every epoch, so an interruption never loses
more than one epoch.

Started by torchrun it trains data-parallel (:mod:`facekit.distributed`): the model is wrapped
in ``DistributedDataParallel``, each rank reads its shard of every epoch, ``--batch-size`` is the
global batch, losses and counts are summed over the ranks (so every rank sees the same figures and
stops at the same epoch), and rank 0 alone reads and writes the run folder.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from facekit import distributed
from facekit.specs import ArchitectureSpec, Normalization, SplitOptions, SplitPlan
from facekit.callbacks import BestKeeper, EarlyStopping
from facekit.config import RESUME_SETTINGS, RESUME_TRAINING_SETTINGS, TrainConfig
from facekit.compiling import EvalStep, TrainStep, resolve_compile_mode
from facekit.data.augment import AugmentPipeline, augment_args
from facekit.data.decoded_cache import cache_choice
from facekit.devices import resolve_device  # noqa: F401 -- also imported from here
from facekit.distributed import Distributed
from facekit.errors import FacekitError, UsageError
from facekit.factory import create_model
from facekit.runs import (
    DENSE_PROBS_LIMIT,
    TOP_K,
    FoldState,
    Run,
    RunWriter,
    TestScores,
    check_destination,
    default_run_dir,
    load_checkpoint,
)
from facekit.schedules import Schedule, build_schedule, check_schedule
from facekit.specs import LoggerContext
from facekit.tracking import Tracking, logger_specs

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


class Progress(Protocol):
    """What the engine tells its caller; the CLI draws bars, tests and --json stay quiet."""

    def message(self, text: str) -> None: ...
    def epoch_start(self, fold: int, epoch: int, epochs: int, batches: int) -> None: ...
    def batch_end(self, loss: float, images: int) -> None: ...
    def epoch_end(self, row: dict[str, Any]) -> None: ...


class SilentProgress:
    def message(self, text: str) -> None:
        pass

    def epoch_start(self, fold: int, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch_end(self, loss: float, images: int) -> None:
        pass

    def epoch_end(self, row: dict[str, Any]) -> None:
        pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states in types that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def keep_frozen_batchnorm_in_eval(model: nn.Module) -> None:
    """A frozen layer stays frozen: batch norms with no trainable parameter keep their running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def build_optimizer(model: nn.Module, arch: ArchitectureSpec, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over the architecture's parameter groups (its ``param_groups`` hook), else every trainable parameter."""
    if arch.param_groups is not None:
        params: list[Any] = arch.param_groups(model, lr)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise FacekitError(f"architecture {arch.name!r} has no trainable parameter")
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class Trainer:
    """Trains one run; ``train()`` starts it, ``Trainer.resume(run)`` continues it."""

    def __init__(self, config: TrainConfig, progress: Progress | None = None, run_dir: Path | None = None):
        from facekit.plugins import architectures, augmentations, losses, splits

        self.dist = Distributed.from_env()
        # Rank 0 talks to the user; N copies of every progress bar would say nothing more.
        self.progress = (progress or SilentProgress()) if self.dist.is_main else SilentProgress()
        # Check every setting and name first: a typo or a bad number fails in a second, before any
        # file is written. The checks are deterministic, so every rank refuses alike.
        config.validate()
        self.arch = architectures().get(config.arch)
        self.loss_spec = losses().get(config.loss)
        self.loss_spec.check_label_smoothing(config.label_smoothing)
        self.split_spec = splits().get(config.split)
        self.logger_specs = logger_specs(config.log)
        self.tracking = Tracking()  # the started trackers, once the run folder exists
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
        self.device = self.dist.device(resolve_device(config.device))
        self.cache = cache_choice(config.cache)
        self._cache_files: tuple[str, ...] | None = None  # the data set's files: one disk cache for every split
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if config.amp is None else (config.amp and on_cuda)
        self.channels_last = on_cuda if config.channels_last is None else config.channels_last
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if self.amp else None
        self.compile_mode, compile_note = resolve_compile_mode(config.compile, self.device)
        if compile_note:
            self.progress.message(compile_note)
        # Known once the folder exists (a default name gets a suffix when taken); the caller's Ctrl-C
        # handler reads it from TrainingInterrupted.
        self.run_dir: Path | None = Path(run_dir) if run_dir else None

    # ------------------------------------------------------------------ setup
    def _index(self):
        from facekit.data.index import index_dataset

        self.progress.message(f"indexing {self.config.data}")
        index = index_dataset(self.config.data)
        for bad in index.bad + index.skipped:
            self.progress.message(f"skipping {bad.path}: {bad.reason}")
        return index

    def _plan(self, labels: np.ndarray) -> SplitPlan:
        options = SplitOptions(
            seed=self.config.seed, test_size=self.config.test_size, val_size=self.config.val_size, folds=self.config.folds
        )
        return self.split_spec.split(labels, options)

    def _normalizations(self, paths: list[str], plan: SplitPlan) -> dict[str, Any]:
        if self.arch.normalization is not None:
            norm = self.arch.normalization.to_dict()
            return {"source": f"architecture {self.arch.name}", "folds": [norm for _ in plan.folds]}
        from facekit.data.stats import cached_channel_sums, normalization_from_sums

        sums = cached_channel_sums(paths, self.input_size, self.progress)
        pixels = self.input_size * self.input_size

        folds = [normalization_from_sums(sums, fold.train, pixels).to_dict() for fold in plan.folds]
        return {"source": "training split", "folds": folds}

    def _setup(self) -> dict[str, Any]:
        """Index the data, plan the split, compute the normalization: all a run's setup, before its folder exists."""
        from facekit.openset_training import openset_setup

        index, openset_split = openset_setup(
            self._index(), fraction=self.config.unknown_identities, strangers=self.config.strangers, seed=self.config.seed
        )
        plan = self._plan(index.labels)
        if openset_split is not None and any(len(fold.val) == 0 for fold in plan.folds):
            raise UsageError("open-set evaluation calibrates its threshold on validation images: give --val-size above 0")
        for note in plan.notes:
            self.progress.message(note)
        from facekit.data.leakage import find_leaks, leak_lines

        for line in leak_lines(find_leaks(index.files, index.labels, index.classes, index.pixel_hashes, plan)):
            self.progress.message(line)
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
            config=config,
            classes=index.classes,
            root=Path(self.config.data),
            files=index.files,
            labels=index.labels,
            strategy=self.split_spec.name,
            plan=plan,
            normalization=self._normalizations(index.paths(), plan),
            openset=openset_split,
        )

    def check_model(self) -> None:
        """Build the model once and run one image through it, so bad weights or a too small
        ``--input-size`` fail before anything is written, with the option to change."""
        name, size = self.arch.name, self.input_size
        try:
            model = self._probe(size, pretrained=True)
        except FacekitError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a plugin's or torch's error, told apart below
            cause = exc
            failure = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        else:
            build_optimizer(model, self.arch, self.config.lr, self.config.weight_decay)  # is there anything to train?
            return
        if (self.arch.pretrained or self.config.weights is not None) and self._probe_works(size):
            # The same network at the same size works without its pretrained weights: they are at fault.
            if self.config.weights is not None:
                raise UsageError(
                    f"--weights {self.config.weights}: not weights for architecture {name!r} ({failure}); "
                    "give that architecture's weights file"
                ) from cause
            raise FacekitError(
                f"architecture {name!r}: its pretrained weights do not load ({failure}); "
                "if they are a cached download, delete that file to fetch it again, or pass --weights FILE"
            ) from cause
        if size < self.arch.input_size and self._probe_works(self.arch.input_size):
            smallest = self._smallest_input_size(size + 1, self.arch.input_size)
            raise UsageError(f"--input-size {size} is too small for architecture {name!r}: give at least {smallest}") from cause
        raise FacekitError(f"architecture {name!r} could not be built for {size}x{size} images ({failure})") from cause

    def _probe(self, size: int, *, pretrained: bool) -> nn.Module:
        model = create_model(
            self.arch.name,
            num_classes=2,
            input_size=size,
            finetune=self.config.finetune,
            weights=self.config.weights,
            trust_weights=self.config.trust_weights,
            pretrained=pretrained,
        )
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        return model

    def _probe_works(self, size: int) -> bool:
        try:
            self._probe(size, pretrained=False)
        except Exception:  # noqa: BLE001 -- any failure means "not at this size"
            return False
        return True

    def _smallest_input_size(self, low: int, high: int) -> int:
        """The smallest size in ``low..high`` the architecture takes (``high`` does); sizes grow monotonically."""
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if self._probe_works(middle) else (middle + 1, high)
        return high

    # ---------------------------------------------------------------- helpers
    def _build_model(self, num_classes: int) -> nn.Module:
        return create_model(
            self.arch.name,
            num_classes=num_classes,
            input_size=self.input_size,
            finetune=self.config.finetune,
            weights=self.config.weights,
            trust_weights=self.config.trust_weights,
            device=self.device,
            channels_last=self.channels_last,
        )

    def _data_parallel(self, model: nn.Module) -> nn.Module:
        """The model that trains: itself, or wrapped in DistributedDataParallel under torchrun.

        On CUDA, batch norms become SyncBatchNorm, so their batch statistics cover the global batch
        as in one process; on the CPU (gloo) each rank normalizes over its own part of the batch.
        """
        if not self.dist.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            return DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(model), device_ids=[self.device.index])
        return DistributedDataParallel(model)

    def _loader(self, files: list[str], labels: np.ndarray, norm: Normalization, *, train: bool, seed: int):
        from facekit.data.loaders import make_loader

        return make_loader(
            files,
            labels,
            batch_size=self.rank_batch_size,
            input_size=self.input_size,
            normalization=norm,
            train=train,
            augment=self.augment,  # evaluation loaders never augment
            seed=seed,
            device=self.device,
            backend=self.config.loader,
            cache=self.cache,
            cache_files=self._cache_files,
            num_workers=self.config.workers,
            shard_id=self.dist.rank,
            num_shards=self.dist.world_size,
            # Batches arrive in the dtype and layout the first convolution runs in, so the step
            # does not convert a float32 NCHW copy of every batch.
            output_dtype=self.amp_dtype or torch.float32,
            channels_last=self.channels_last,
        )

    def _prepare_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True).long()

    def _step_settings(self) -> dict[str, Any]:
        # Steps are cheap to make: torch.compile keeps its graphs per code object, so a new step
        # (next epoch, next fold) reuses them.
        return {"device_type": self.device.type, "amp_dtype": self.amp_dtype, "batch_size": self.rank_batch_size, "mode": self.compile_mode}

    def train_epoch(self, model, loader, loss_fn, optimizer, scaler, schedule: Schedule | None = None) -> EpochStats:
        """One pass over ``loader``, eager or compiled as the run is configured (figures over all ranks); ``schedule`` steps per batch."""
        model.train()
        keep_frozen_batchnorm_in_eval(model)
        step = TrainStep(model, loss_fn, optimizer, scaler, **self._step_settings())
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        start = time.perf_counter()
        for images, labels in loader:
            images, labels = self._prepare_batch(images, labels)
            loss, logits = step(images, labels)
            if schedule is not None:
                schedule.step()
            # Accumulate on the device: a .item() per batch would stall the GPU every step.
            total_loss += loss * labels.shape[0]
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.shape[0]
            self.progress.batch_end(float("nan") if self.device.type == "cuda" else float(loss), labels.shape[0])
        elapsed = time.perf_counter() - start
        total, right, seen = distributed.sum_across_ranks([float(total_loss), float(correct), seen])
        divisor = max(int(seen), 1)
        return EpochStats(total / divisor, right / divisor, elapsed, int(seen), step.compile_seconds)

    @torch.no_grad()
    def evaluate(self, model, loader, loss_fn) -> tuple[float, float, TestScores]:
        """Mean loss and accuracy (over all ranks), and the scores of this rank's images in loader order.

        Of each image it keeps the argmax and the top k = min(C, TOP_K) classes (found on the device,
        a batch at a time), and the whole softmax row only while the N x C probabilities of all ranks
        stay within DENSE_PROBS_LIMIT: memory proportional to N * k for many classes.
        Give it the bare model, never the DistributedDataParallel wrapper: evaluation shards differ
        in length by one, and the wrapper would wait for a forward pass that never comes.
        """
        model.eval()
        step = EvalStep(model, loss_fn, **self._step_settings())
        total_loss, correct, seen, num_classes = 0.0, 0, 0, 0
        y_pred, top_ids, top_probs, probs = [], [], [], []
        for images, labels in loader:
            images, labels = self._prepare_batch(images, labels)
            loss, logits = step(images, labels)
            total_loss += float(loss) * labels.shape[0]
            correct += int((logits.argmax(1) == labels).sum())
            seen += labels.shape[0]
            num_classes = logits.shape[1]
            # This rank's rows alone past the limit: all ranks' are too, so the rows are not kept.
            if probs is not None and seen * num_classes > DENSE_PROBS_LIMIT:
                probs = None
            if probs is not None:
                batch_probs = torch.softmax(logits, 1)
                probs.append(batch_probs.cpu())
                top = torch.topk(batch_probs, min(num_classes, TOP_K), dim=1)
                top_values, predicted = top.values, batch_probs.argmax(1)
            else:
                # Many classes: the top k of the logits and their softmax values alone, without a
                # second batch x classes tensor per batch (freed and reallocated, such tensors
                # fragment the CPU heap: the peak grew by gigabytes over a 50k-class validation).
                top = torch.topk(logits, min(num_classes, TOP_K), dim=1)
                top_values = (top.values - torch.logsumexp(logits, 1, keepdim=True)).exp()
                predicted = top.indices[:, 0]
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

    # ----------------------------------------------------------------- running
    def train(self) -> Path:
        """Start a new run and train it to the end; every check runs before its folder is made.

        Rank 0 alone indexes the data and makes the folder (its name is free only once it exists);
        the other ranks learn the folder and its setup from it, so they need no --out.
        """
        with distributed.joined(self.dist), distributed.translate_failures(self.dist, self.config.out), ExitStack() as held:
            if self.dist.is_main and self.config.out is not None:  # an --out that would lose data fails before any work
                check_destination(self.config.out, force=self.config.force, data=self.config.data)
            self.check_model()  # on every rank: it is deterministic, so each refuses alike
            writers: list[RunWriter] = []  # rank 0's, once make_run made the folder

            def make_run() -> tuple[Path, dict[str, Any]]:
                setup = self._setup()
                self._check_loader(setup)
                writer = held.enter_context(self._new_writer())  # locked until training ends
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

    def _new_writer(self) -> RunWriter:
        if self.config.out is not None:
            return RunWriter.create(self.config.out, self.config.force, data=self.config.data)
        return RunWriter.create_new(default_run_dir(self.config), data=self.config.data)

    @classmethod
    def resume(cls, run_dir: Path, progress: Progress | None = None, **given: Any) -> Path:
        """Continue an interrupted run from its last checkpoint, with its saved configuration.

        ``given`` holds the settings given again (TrainConfig field names): those in
        RESUME_SETTINGS apply (the training ones are saved in config.json), a value equal to the
        saved one is accepted, and any other change is refused by name with a :class:`UsageError`.
        Rank 0 alone reads the run, checks the changes and holds its lock; the other ranks get the
        setup, the state and the changes from it.
        """
        run_dir = Path(run_dir)
        place = Distributed.from_env()
        with distributed.joined(place), distributed.translate_failures(place, run_dir), ExitStack() as held:
            writers: list[RunWriter] = []

            def open_run() -> tuple[dict[str, Any], FoldState | None, dict[str, Any]]:
                run = Run.open(run_dir)
                changes = _resume_changes(run, TrainConfig.from_dict(run.config), given)
                writers.append(held.enter_context(RunWriter.open(run_dir)))  # locked until training ends
                state = run.latest_state()
                _check_training_changes(run, state, changes)
                _check_data_present(run)
                return run.setup(), state, changes

            setup, state, changes = distributed.from_main(place, open_run)
            writer = writers[0] if writers else None
            # The saved config's input_size is the resolved one.
            trainer = cls(dataclasses.replace(TrainConfig.from_dict(setup["config"]), **changes), progress, run_dir=run_dir)
            trainer.check_model()
            lasting = {name: value for name, value in changes.items() if name in RESUME_TRAINING_SETTINGS}
            if lasting:  # kept for later resumes; where it runs is this session's choice
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
        classes, split = run.classes, run.split
        files = [str(Path(split["root"]) / f) for f in split["files"]]
        self._cache_files = tuple(files)
        labels = np.asarray(split["labels"], dtype=np.int64)
        norms = [Normalization.from_dict(n) for n in run.normalization["folds"]]
        history: list[dict[str, Any]] = list(resume_state.history) if resume_state else []
        fold_results: list[dict[str, Any]] = list(resume_state.fold_results) if resume_state else []
        first_fold = resume_state.next_fold if resume_state else 0

        divergence = None
        for fold_index in range(first_fold, len(split["folds"])):
            # A finished fold's state only says where to start; an unfinished one is continued.
            resuming = resume_state is not None and fold_index == resume_state.fold and not resume_state.fold_done
            state = resume_state if resuming else None
            fold = split["folds"][fold_index]
            result, diverged_epoch = self._train_fold(
                fold_index, fold, files, labels, norms[fold_index], classes, history, fold_results, state, writer
            )
            if result is not None:
                fold_results.append(result)
            if diverged_epoch is not None:  # the next folds would diverge alike: stop here
                divergence = (fold_index, diverged_epoch, result)
                break

        if fold_results:  # the same on every rank: losses are summed over the ranks
            self._finish(run, writer, files, labels, norms, fold_results)
            if writer is not None and split.get("openset"):
                from facekit.openset_training import evaluate_openset

                evaluate_openset(
                    Run(self.run_dir), device=self.device, target_fpir=self.config.target_fpir,
                    score=self.config.openset_score, progress=self.progress, writer=writer,
                )  # fmt: skip
        if divergence is not None:
            raise TrainingDiverged(self._divergence_message(*divergence, folds=len(split["folds"])))
        return self.run_dir

    def _divergence_message(self, fold: int, epoch: int, result: dict[str, Any] | None, folds: int) -> str:
        text = (
            f"training diverged in fold {fold} at epoch {epoch}: the loss is no longer a finite number, "
            f"so --lr {self.config.lr:g} is too high; train a new run with a lower --lr (e.g. 10 times lower)."
        )
        if result is None:
            return text + " No epoch had finished before it, so the run has no results."
        text += (
            f" The run keeps fold {fold}'s best epoch before it ({result['best_epoch']}) as its result: "
            f"`facekit report {self.run_dir}`"
        )
        if fold + 1 < folds:
            rest = f"fold {fold + 1} was" if fold + 2 == folds else f"folds {fold + 1}-{folds - 1} were"
            text += f"; {rest} not trained (`facekit train --resume {self.run_dir}` would, with the same --lr)"
        return text + "."

    def _train_fold(
        self, fold_index, fold, files, labels, norm, classes, history, fold_results, state, writer
    ) -> tuple[dict[str, Any] | None, int | None]:
        """Train one fold: its result (None when no epoch of it finished well) and the epoch it diverged at, if it did."""
        train_idx = np.asarray(fold["train"], dtype=int)
        val_idx = np.asarray(fold["val"], dtype=int)
        seed = self.config.seed + 1000 * fold_index
        seed_everything(seed)
        num_classes = len(classes)
        model = self._build_model(num_classes)
        trained = self._data_parallel(model)
        model = getattr(trained, "module", model)  # the bare model: evaluation and checkpoints
        optimizer = build_optimizer(model, self.arch, self.config.lr, self.config.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and not torch.cuda.is_bf16_supported())
        counts = np.bincount(labels[train_idx], minlength=num_classes)
        loss_fn = self.loss_spec.make(counts.tolist(), label_smoothing=self.config.label_smoothing).to(self.device)
        # Validation loss is always plain cross-entropy, so runs with different losses compare fairly.
        val_loss_fn = nn.CrossEntropyLoss().to(self.device)
        best, early_stopping = BestKeeper(), EarlyStopping(self.config.patience)
        validated = len(val_idx) > 0
        if not validated:
            self.progress.message(
                f"fold {fold_index} has no validation images (--val-size 0): the last epoch is kept, "
                "validation loss is not measured ('-') and early stopping (--patience) is off"
            )

        train_loader = self._loader([files[i] for i in train_idx], labels[train_idx], norm, train=True, seed=seed)
        val_loader = None
        if validated:
            val_loader = self._loader([files[i] for i in val_idx], labels[val_idx], norm, train=False, seed=seed)
        # Built before a resumed optimizer state is loaded, as torch expects: the state then
        # overwrites the learning rates the schedule set, and the schedule continues from its own.
        schedule = build_schedule(self.config.schedule, optimizer, epochs=self.config.epochs, steps_per_epoch=len(train_loader))

        start_epoch = 1
        if state is not None:
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            if state.schedule is not None:  # None: a checkpoint from before schedules (constant)
                schedule.load_state_dict(state.schedule)
            restore_rng_state(state.rng)
            best.load_state_dict(state.best)
            early_stopping.load_state_dict(state.early_stopping)
            start_epoch = state.epoch + 1
            self.progress.message(f"resuming fold {fold_index} after epoch {state.epoch}")

        last_state = state  # the last epoch's checkpoint; a resumed fold starts from the one it loaded
        diverged_epoch = None
        try:
            if self.cache != "off":
                self.progress.message(f"decoded-image cache: {train_loader.cache_in_use}")
            for epoch in range(start_epoch, self.config.epochs + 1):
                if early_stopping.should_stop:
                    break
                train_loader.set_epoch(epoch)
                self.progress.epoch_start(fold_index, epoch, self.config.epochs, len(train_loader))
                lr = max(group["lr"] for group in optimizer.param_groups)  # the head's, where a backbone trains slower
                stats = self.train_epoch(trained, train_loader, loss_fn, optimizer, scaler, schedule)
                val_loss, val_acc = self.evaluate(model, val_loader, val_loss_fn)[:2] if validated else (math.nan, math.nan)
                # The fp16 scaler skips steps whose loss overflowed, so only its weights tell divergence then.
                losses = ([] if scaler.is_enabled() else [stats.loss]) + ([val_loss] if validated else [])
                if not all_finite(model, losses):
                    diverged_epoch = epoch  # this epoch's state is never saved: the last good one stays
                    break
                row = {
                    "fold": fold_index,
                    "epoch": epoch,
                    "train_loss": stats.loss,
                    "val_loss": val_loss,
                    "train_acc": stats.accuracy,
                    "val_acc": val_acc,
                    "lr": lr,
                    "images_per_s": stats.images_per_s,
                    "seconds": stats.seconds,
                    "compile_seconds": stats.compile_seconds,
                    "loader": train_loader.backend,
                    "cache": train_loader.cache_in_use,
                    "device": str(self.device),
                    "compile": self.compile_mode,
                    "world_size": self.dist.world_size,
                }
                history.append(row)
                if validated:
                    improved = best.update(val_loss, epoch)
                    early_stopping.update(val_loss)
                else:
                    improved = best.keep_latest(epoch)
                self.progress.epoch_end(row | {"best": improved})
                self.tracking.log_epoch(row)
                if writer is not None:
                    last_state = FoldState(
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        epoch=epoch,
                        fold=fold_index,
                        rng=rng_state(),
                        config=self.config.to_dict(),
                        classes=classes,
                        history=history,
                        fold_results=fold_results,
                        best=best.state_dict(),
                        early_stopping=early_stopping.state_dict(),
                        schedule=schedule.state_dict(),
                    )
                    writer.save_fold_state(last_state, best=improved)
                    writer.write_history(history)
        finally:
            train_loader.close()
            if val_loader is not None:
                val_loader.close()
        if best.best_epoch == 0:  # diverged before any epoch of this fold finished: nothing to keep
            return None, diverged_epoch
        if writer is not None and diverged_epoch is not None and last_state is not None:
            # The state in memory shares its tensors with the model, which the diverged epoch changed.
            last_state = Run(self.run_dir).fold_state(fold_index)
        result = {
            "fold": fold_index,
            "best_epoch": best.best_epoch,
            "val_loss": best.best_val_loss,
            "val_acc": _val_acc(history, fold_index, best.best_epoch),
        }
        if writer is not None and last_state is not None:  # mark the fold finished so a resume skips it
            writer.mark_fold_done(last_state, fold_results + [result], history)
        return result, diverged_epoch

    def _finish(self, run: Run, writer: RunWriter | None, files, labels, norms, fold_results) -> None:
        def keep_best_fold() -> tuple[int, dict[str, Any]]:
            kept = writer.keep_best_fold(fold_results)
            return kept, load_checkpoint(run.checkpoint_path("best"))["model"]

        # Rank 0 keeps the best fold and sends its weights; every rank evaluates its shard of the test split.
        kept, weights = distributed.from_main(self.dist, keep_best_fold)
        model = run.model_with(weights, device=self.device, channels_last=self.channels_last)
        test_idx = np.asarray(run.split["test"], dtype=int)
        loader = self._loader([files[i] for i in test_idx], labels[test_idx], norms[kept], train=False, seed=self.config.seed)
        try:
            test_loss, test_acc, scores = self.evaluate(model, loader, nn.CrossEntropyLoss().to(self.device))
        finally:
            loader.close()
        # Each array gathered on its own: N x k, and N x C only while small (see evaluate).
        gathered = {
            field.name: None if (part := getattr(scores, field.name)) is None else distributed.gather_shards(part)
            for field in dataclasses.fields(scores)
        }
        if writer is not None:
            writer.write_predictions(test_idx, labels[test_idx], TestScores(**gathered), run.classes, run.split["files"])
        kept_val_loss = next(r["val_loss"] for r in fold_results if r["fold"] == kept)
        shown = "-" if math.isnan(kept_val_loss) else f"{kept_val_loss:.3f}"  # "-": not validated
        self.progress.message(
            f"kept fold {kept} (val loss {shown}); test accuracy {test_acc:.3f}, test loss {test_loss:.3f}"
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``run_dir`` is the folder to continue with ``facekit train --resume``."""

    def __init__(self, run_dir: Path | None):
        super().__init__(f"training of {run_dir} interrupted")
        self.run_dir = run_dir


class TrainingDiverged(FacekitError):
    """The loss stopped being a finite number; the run keeps its last good state."""


def all_finite(model: nn.Module, losses: list[float]) -> bool:
    """False once training has diverged: a loss, a weight or a buffer is not a finite number (one sync per epoch)."""
    if not all(math.isfinite(loss) for loss in losses):
        return False
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _resume_changes(run: Run, saved: TrainConfig, given: dict[str, Any]) -> dict[str, Any]:
    """The settings a resume changes; any change that would not continue the same training is refused by name."""
    if "rotate" in given or "augment" in given:
        # --rotate DEG is short for --augment rotate:DEG: compare the steps either one means.
        given = {name: value for name, value in given.items() if name not in ("rotate", "augment")} | {
            "augment": _augment_steps(given.get("augment"), given.get("rotate"))
        }
        saved = dataclasses.replace(saved, rotate=None, augment=_augment_steps(saved.augment, saved.rotate))
    changes, refused = {}, []
    for name, value in given.items():
        if name == "data":  # the data is the run's own (split.json), wherever --data pointed then
            same, current = Path(value).resolve() == Path(run.split["root"]), run.split["root"]
        elif name == "out":
            same, current = Path(value).resolve() == run.path.resolve(), run.path
        else:
            current = getattr(saved, name)
            same = str(value) == str(current) if isinstance(current, Path) or isinstance(value, Path) else value == current
        if same:
            continue
        if name in RESUME_SETTINGS:
            changes[name] = value
        else:
            refused.append(f"{_option(name, value)} (it has {_shown(current)})")
    if refused:
        allowed = ", ".join(f"--{name}" for name in RESUME_SETTINGS)
        raise UsageError(
            f"--resume {run.path} continues the run with its own settings, so {'; '.join(refused)} cannot change: "
            f"drop it, or train a new run. A resume may change only {allowed}"
        )
    return changes


def _augment_steps(augment: list[str] | None, rotate: float | None) -> list[str]:
    """The augmentation steps, in running order, that ``--augment`` and ``--rotate`` stand for."""
    from facekit.plugins import augmentations

    return AugmentPipeline.from_args(augment_args(augment, rotate), augmentations()).to_args()


def _check_training_changes(run: Run, state: FoldState | None, changes: dict[str, Any]) -> None:
    """--epochs and --patience apply while the first fold trains; fewer epochs than done is refused."""
    shaping = [name for name in RESUME_TRAINING_SETTINGS if name in changes]
    if state is None or not shaping:
        return
    if state.fold_done or state.fold > 0:
        finished = state.fold if state.fold_done else state.fold - 1
        raise UsageError(
            f"{', '.join(_option(n, changes[n]) for n in shaping)}: fold {finished} of {run.path} has finished with "
            f"the saved setting, and every fold of a run trains alike; resume without it, or train a new run"
        )
    if "epochs" in changes and changes["epochs"] < state.epoch:
        raise UsageError(f"--epochs {changes['epochs']}: {run.path} has already trained {state.epoch} epochs; give more")


def _check_data_present(run: Run) -> None:
    """Every image the run was split over must still be there (a resume trains on the same images)."""
    root = Path(run.split["root"])
    missing = [f for f in run.split["files"] if not (root / f).is_file()]
    if missing:
        raise FacekitError(
            f"{len(missing)} of the {len(run.split['files'])} images of {run.path} are gone from {root} "
            f"(e.g. {missing[0]}): restore them to resume, or train a new run on the data as it is now"
        )


def _option(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, list):  # a repeatable option
        return " ".join(f"{flag} {item}" for item in value)
    if isinstance(value, bool):
        return flag if value else "--no-" + name.replace("_", "-")
    return f"{flag} {value}"


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(value) or "none"
    return "none" if value is None else str(value)


def _val_acc(history: list[dict[str, Any]], fold: int, epoch: int) -> float:
    for row in history:
        if row["fold"] == fold and row["epoch"] == epoch:
            return float(row["val_acc"])
    return float("nan")


def train(config: TrainConfig, progress: Progress | None = None) -> Path:
    """Train a new run; returns its folder."""
    return Trainer(config, progress).train()


def _stacked(batches: list[torch.Tensor], dtype: type, ndim: int) -> np.ndarray:
    """The batches' rows as one array; an empty one of ``ndim`` dimensions where there were no batches."""
    return torch.cat(batches).numpy() if batches else np.zeros((0,) * ndim, dtype=dtype)

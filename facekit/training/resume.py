"""The rules of ``facekit train --resume``: what a resume may change, and what must hold before it continues.

As Lightning's checkpoint connector owns restoring, this module owns the decisions around it;
the checkpoint's layout itself belongs to the run folder (:class:`facekit.runs.FoldState`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from facekit.config import RESUME_SETTINGS, RESUME_TRAINING_SETTINGS, TrainConfig
from facekit.data.augment import AugmentPipeline, augment_args
from facekit.errors import FacekitError, UsageError
from facekit.runs import FoldState, Run


def resume_changes(run: Run, saved: TrainConfig, given: dict[str, Any]) -> dict[str, Any]:
    """The settings a resume changes; any change that would not continue the same training is refused by name."""
    if "rotate" in given or "augment" in given:
        # --rotate DEG is short for --augment rotate:DEG: compare the steps either one means.
        given = {name: value for name, value in given.items() if name not in ("rotate", "augment")} | {
            "augment": _augment_steps(given.get("augment"), given.get("rotate"))
        }
        saved = dataclasses.replace(saved, rotate=None, augment=_augment_steps(saved.augment, saved.rotate))
    if "loss_options" in given:
        given, saved = _loss_options_as_meant(given, saved)
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


def lasting_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Of a resume's changes, those saved in config.json for later resumes (where it runs is this session's choice)."""
    return {name: value for name, value in changes.items() if name in RESUME_TRAINING_SETTINGS}


def check_training_changes(run: Run, state: FoldState | None, changes: dict[str, Any]) -> None:
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


def check_data_present(run: Run) -> None:
    """Every image the run was split over must still be there (a resume trains on the same images)."""
    root = Path(run.split["root"])
    missing = [f for f in run.split["files"] if not (root / f).is_file()]
    if missing:
        raise FacekitError(
            f"{len(missing)} of the {len(run.split['files'])} images of {run.path} are gone from {root} "
            f"(e.g. {missing[0]}): restore them to resume, or train a new run on the data as it is now"
        )


def _loss_options_as_meant(given: dict[str, Any], saved: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    """Only the loss options given, compared by what they mean for the run's loss (typed), not how they were written."""
    from facekit.plugins import losses
    from facekit.specs import split_loss_options

    spec = losses().get(saved.loss)
    typed = given["loss_options"]
    typed = split_loss_options(typed) if isinstance(typed, (list, tuple)) else dict(typed or {})
    current = spec.resolve_options(saved.loss_options)
    meant = spec.resolve_options(current | typed)
    given = given | {"loss_options": {name: meant[name] for name in typed}}
    return given, dataclasses.replace(saved, loss_options={name: current[name] for name in typed})


def _augment_steps(augment: list[str] | None, rotate: float | None) -> list[str]:
    """The augmentation steps, in running order, that ``--augment`` and ``--rotate`` stand for."""
    from facekit.plugins import augmentations

    return AugmentPipeline.from_args(augment_args(augment, rotate), augmentations()).to_args()


def _option(name: str, value: Any) -> str:
    if name == "loss_options":  # --loss-option NAME=VALUE, repeated
        return " ".join(f"--loss-option {key}={item}" for key, item in value.items())
    flag = "--" + name.replace("_", "-")
    if isinstance(value, list):  # a repeatable option
        return " ".join(f"{flag} {item}" for item in value)
    if isinstance(value, bool):
        return flag if value else "--no-" + name.replace("_", "-")
    return f"{flag} {value}"


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{key}={item}" for key, item in value.items()) or "none"
    if isinstance(value, list):
        return " ".join(value) or "none"
    return "none" if value is None else str(value)

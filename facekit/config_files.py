"""Training settings from a file: ``facekit train --config FILE`` and ``--print-config``.

A config file holds :class:`facekit.config.TrainConfig`'s settings as ``key: value`` lines (YAML,
or JSON: a run's own ``config.json`` is one), keyed by the settings' names (``batch_size``; the
option's spelling, ``batch-size``, works too). Options given on the command line override the
file; settings in neither keep their defaults.

Every key and value is checked before anything is done, and a problem is one line naming the
file and the key (:class:`facekit.errors.UsageError`, exit 2): an unknown key, a value of the
wrong type (``epochs: ten``), a value out of its range (``lr: -1``), an unknown name
(``arch: resnet81``).

A run's ``config.json`` also records what the run found or where it went, which a new run must
not copy: :data:`RECORDED` keys (versions, the device and compile mode used, the number of
processes, when it was made), ``out`` and ``force`` (where that run was written: a new run gets
its own folder) and ``amp`` / ``channels_last`` (recorded as that machine resolved them, so a
repeat on another machine resolves them again). Those are left out, and
:attr:`ConfigFile.ignored` says which, for the command to tell.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from facekit.config import TrainConfig
from facekit.errors import UsageError

# Keys a run adds to its config.json besides its settings: what it ran with, not what was asked.
RECORDED = ("facekit_version", "torch_version", "created", "device_used", "compile_used", "world_size")
# Settings of a run's config.json that describe that run, not the training: a repeat drops them.
NOT_REPEATED = ("out", "force", "amp", "channels_last")
# Settings whose names are looked up among the installed plugins (a typo is caught with the file named).
NAMED = {"arch": "architectures", "loss": "losses", "split": "splits", "log": "loggers"}


@dataclass
class ConfigFile:
    """The settings read from one file, checked, in the types :class:`TrainConfig` takes."""

    path: Path
    settings: dict[str, Any]
    ignored: list[str] = field(default_factory=list)  # keys of a run's config.json left out (see the module docstring)

    @property
    def note(self) -> str | None:
        """One line saying which keys were left out, or None."""
        if not self.ignored:
            return None
        return (f"{self.path}: left out {', '.join(self.ignored)} (what that run recorded or where it went; "
                "the new run finds its own)")  # fmt: skip


def settings_fields() -> dict[str, dataclasses.Field]:
    return {item.name: item for item in dataclasses.fields(TrainConfig)}


def _aliases() -> dict[str, str]:
    """Spellings a file may use for a setting: its name, its option's (``batch-size``, ``loss-option``)."""
    aliases = {}
    for name, item in settings_fields().items():
        aliases[name] = name
        aliases[name.replace("_", "-")] = name
        option = item.metadata.get("option") if item.metadata else None
        flag = getattr(option, "flag", None)
        if flag:
            aliases[flag.lstrip("-")] = name
    aliases.setdefault("loss-option", "loss_options")
    return aliases


def read_config_file(path: str | Path) -> ConfigFile:
    """Read and check ``path`` (YAML or JSON); see the module docstring."""
    path = Path(path)
    raw = _load(path)
    aliases = _aliases()
    is_run_record = any(key in raw for key in RECORDED)
    settings: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # setting -> the key the file gave it under, for messages
    ignored: list[str] = []
    for key, value in raw.items():
        name = aliases.get(str(key))
        if is_run_record and (name is None or name in NOT_REPEATED):
            ignored.append(str(key))
            continue
        if name is None:
            close = difflib.get_close_matches(str(key), list(aliases), n=1, cutoff=0.6)
            hint = f" (did you mean {aliases[close[0]]!r}?)" if close else ""
            raise UsageError(
                f"{path}: unknown key {key!r}{hint}; a config file holds training settings: "
                "`facekit train --print-config` lists them all"
            )
        if name in settings:
            raise UsageError(f"{path}: {key!r} sets {name!r} a second time; keep one of them")
        settings[name] = check_value(path, str(key), name, value)
        spelled[name] = str(key)
    _check_loss_settings(path, settings, spelled)
    return ConfigFile(path, settings, ignored)


def _check_loss_settings(path: Path, settings: dict[str, Any], spelled: dict[str, str]) -> None:
    """What the file's loss (or the default one) takes: its options and label smoothing."""
    from facekit import plugins

    loss = plugins.losses().get(settings.get("loss", settings_fields()["loss"].default))
    try:
        if "loss_options" in settings:
            loss.resolve_options(settings["loss_options"])
    except UsageError as exc:
        raise UsageError(f"{path}: {spelled['loss_options']}: {exc}") from None
    try:
        if "label_smoothing" in settings:
            loss.check_label_smoothing(settings["label_smoothing"])
    except UsageError as exc:
        raise UsageError(f"{path}: {spelled['label_smoothing']}: {exc}") from None


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UsageError(f"--config {path} {what}: give a YAML (or JSON) file of training settings")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path} cannot be read ({exc.__class__.__name__}: {exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--config {path} is not valid JSON ({exc})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UsageError(f"--config {path} is not valid YAML ({where}{problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected 'key: value' settings, found a {_kind(data)}")
    return data


def _kind(value: Any) -> str:
    return {list: "list", str: "text", bool: "true/false", int: "number", float: "number"}.get(type(value), type(value).__name__)


def check_value(path: Path, key: str, name: str, value: Any) -> Any:
    """``value`` of setting ``name`` in the type the setting takes, checked against its limits."""
    converted = _convert(path, key, typing.get_type_hints(TrainConfig)[name], value)
    try:
        _check_limits(name, converted)
        _check_name(name, converted)
    except UsageError as exc:
        raise UsageError(f"{path}: {key}: {exc}") from None
    return converted


def _convert(path: Path, key: str, kind: Any, value: Any) -> Any:
    """The YAML/JSON ``value`` as the declared ``kind``; a mismatch names the file, the key and what it takes."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        if value is None and type(None) in args:
            return None
        options = [k for k in args if k is not type(None)]
        errors = []
        for option in sorted(options, key=lambda k: k is not bool):  # cache: true/false before text
            try:
                return _convert(path, key, option, value)
            except UsageError as exc:
                errors.append(exc)
        raise errors[-1]
    origin = typing.get_origin(kind)

    def refuse(takes: str) -> UsageError:
        return UsageError(f"{path}: {key}: expected {takes}, got {value!r}")

    if origin is list:
        items = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if not isinstance(items, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
            raise refuse("a list of names (or one name)")
        return [str(v) for v in items]
    if origin is dict:
        if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
            return value  # NAME=VALUE texts, as on the command line
        if not isinstance(value, dict):
            raise refuse("NAME: VALUE pairs")
        return {str(k): v for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
            raise refuse("a whole number")
        return int(value)
    if kind is float:
        # PyYAML reads 1e-3 (no dot) as text: a number written so is still a number.
        try:
            number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float, str)) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise refuse("a number")
        return number
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise refuse("a path")
        return Path(value).expanduser()  # ~/faces, as a shell would read it
    if kind is str:
        if not isinstance(value, str):
            raise refuse("text")
        return value
    return value


def _check_limits(name: str, value: Any) -> None:
    """The setting's own checks (:meth:`TrainConfig.validate`), on this one value."""
    defaults = {"data": Path(".")}
    TrainConfig(**(defaults | {name: value})).validate()


def _check_name(name: str, value: Any) -> None:
    """Names of installed plugins (``arch``, ``loss``, ``split``, ``log``, ``augment`` steps)."""
    from facekit import plugins

    if name in NAMED and value is not None:
        registry = getattr(plugins, NAMED[name])()
        for item in value if isinstance(value, list) else [value]:
            registry.get(item)
    elif name == "augment" and value is not None:
        from facekit.data.augment import AugmentPipeline, augment_args

        AugmentPipeline.from_args(augment_args(value, None), plugins.augmentations())


def configured(path: str | Path | None, given: dict[str, Any], tell: Callable[[str], Any] = print) -> TrainConfig:
    """The settings a training runs with: ``given`` (options typed on the command line) over the
    file's (when ``path``), over the defaults. ``tell`` gets the line saying what a run's
    config.json left out, if anything was."""
    file = read_config_file(path) if path is not None else None
    if file is not None and file.note:
        tell(file.note)
    return TrainConfig(**({"data": None} | (file.settings if file else {}) | given))


def printed_config(path: str | Path | None, given: dict[str, Any], tell: Callable[[str], Any] = print) -> str:
    """``--print-config``: :func:`configured`'s settings, checked and in the spelling a run records,
    as a YAML file that ``--config`` reads back unchanged."""
    config = configured(path, given, tell)
    config = config.validated()
    header = (
        "# facekit train settings: save as FILE.yaml, train with `facekit train --config FILE.yaml`\n"
        "# (options given with it override these). data: null means --data is still to be given.\n"
    )
    return config_yaml(config.to_dict(), header=header)


def config_yaml(config: dict[str, Any], *, header: str = "") -> str:
    """Settings as a YAML config file, in declaration order, that ``--config`` reads back as they are."""
    import yaml

    values = {}
    for name in settings_fields():
        value = config.get(name)
        values[name] = str(value) if isinstance(value, Path) else value
    text = yaml.safe_dump(values, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return header + text

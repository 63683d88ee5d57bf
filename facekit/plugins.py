"""Loading plugins from the ``facekit`` entry-point group, and the registries they fill.

facekit's own architectures, losses, splits and reporters are entry points of the ``facekit``
distribution, so they load through exactly the path a third-party package uses.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import signal
import threading
import warnings
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

import pluggy

from facekit import hookspecs
from facekit.errors import FacekitError, UsageError

ENTRY_POINT_GROUP = "facekit"
BUILTIN_DISTRIBUTION = "facekit"
LOAD_ENV = "FACEKIT_LOAD_PLUGINS"
STRICT_ENV = "FACEKIT_STRICT_PLUGINS"

# hook name -> the registry kind it fills
REGISTRY_HOOKS = {
    "architectures": "register_architectures",
    "losses": "register_losses",
    "splits": "register_splits",
    "reporters": "register_reporters",
    "augmentations": "register_augmentations",
    "loggers": "register_loggers",
}

T = TypeVar("T")


class PluginWarning(UserWarning):
    """A plugin failed to load or registered a name that was already taken."""


class PluginError(FacekitError):
    """A plugin problem under strict loading; it names the plugin and its package already."""


# What each registry's specs must offer (the spec classes' required callables): a plugin that
# registers something else (a class instead of an instance, a dict, a string) is refused at load
# time, naming the plugin, instead of failing later in the middle of a run.
SPEC_CONTRACTS = {
    "architectures": ("ArchitectureSpec", ("build",)),
    "losses": ("LossSpec", ("build",)),
    "splits": ("SplitSpec", ("split",)),
    "reporters": ("ReporterSpec", ("render",)),
    "augmentations": ("AugmentationSpec", ("parse", "sample", "apply_torch")),
    "loggers": ("LoggerSpec", ("start",)),
}


@dataclass
class PluginInfo:
    """One loaded plugin module and the distribution that provides it."""

    name: str  # entry point name
    module: Any
    package: str
    version: str
    registers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.package == BUILTIN_DISTRIBUTION

    @property
    def label(self) -> str:
        """How messages name this plugin: its entry point and package."""
        return f"plugin {self.name!r} from package {self.package}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": sorted(h for h in REGISTRY_HOOKS.values() if hasattr(self.module, h))
            + (["register_commands"] if hasattr(self.module, "register_commands") else []),
            "registers": {kind: names for kind, names in self.registers.items() if names},
        }


class Registry(Generic[T]):
    """Named specs of one kind, with lookups that fail helpfully."""

    def __init__(self, kind: str, option: str):
        self.kind = kind
        self.option = option  # the CLI option that takes these names, for error messages
        self._items: dict[str, T] = {}
        self.owner: dict[str, str] = {}  # name -> package
        self.owner_label: dict[str, str] = {}  # name -> "plugin 'entry point' from package P"

    def add(self, name: str, item: T, owner: str, label: str | None = None) -> None:
        self._items[name] = item
        self.owner[name] = owner
        self.owner_label[name] = label or f"package {owner}"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[T]:
        return [self._items[name] for name in self.names()]

    def get(self, name: str) -> T:
        """The spec called ``name``; an unknown name is a usage error listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(unknown_name_message(self.option, name, self.names())) from None


def unknown_name_message(option: str, name: str, known: list[str]) -> str:
    message = f"{option} {name!r} is not known; choose one of: {', '.join(known) or '(none installed)'}"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        message += f". Did you mean {close[0]!r}?"
    return message


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class PluginSet:
    """A plugin manager with every ``facekit`` entry point loaded and the registries filled."""

    def __init__(self, strict: bool | None = None, extra_plugins: list[tuple[str, Any]] = ()):
        self.strict = strict_from_env() if strict is None else strict
        self.pm = pluggy.PluginManager("facekit")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.problems: list[str] = []
        with _user_interrupts() as interrupted:
            self._interrupted = interrupted
            for entry_point in self._selected_entry_points():
                self._load_entry_point(entry_point)
            for name, module in extra_plugins:  # tests and facekit.testing register throwaway plugins
                self._add(PluginInfo(name=name, module=module, package=name, version="0"))
            self.registries: dict[str, Registry] = {
                "architectures": Registry("architecture", "--arch"),
                "losses": Registry("loss", "--loss"),
                "splits": Registry("split", "--split"),
                "reporters": Registry("reporter", "--reporter"),
                "augmentations": Registry("augmentation", "--augment"),
                "loggers": Registry("logger", "--log"),
            }
            for kind, hook in REGISTRY_HOOKS.items():
                self._fill(kind, hook)

    def _selected_entry_points(self) -> list[EntryPoint]:
        # Built-ins first, whatever the other distributions are called: the first registration of
        # a name wins, so a third-party package can never replace a built-in.
        found = sorted(
            entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (not _is_builtin(ep), _distribution(ep), ep.name)
        )
        wanted = os.environ.get(LOAD_ENV)
        if wanted is None:
            return found
        names = {n.strip() for n in wanted.split(",") if n.strip()}
        # Built-ins always load: FACEKIT_LOAD_PLUGINS chooses among third-party packages.
        return [
            ep
            for ep in found
            if _is_builtin(ep) or _distribution(ep) in names or ep.name in names
        ]

    def _problem(self, message: str) -> None:
        from facekit.weights import scrub_torch_advice

        message = " ".join(scrub_torch_advice(message).split())  # one line, whatever the plugin's exception text holds
        if self.strict:
            raise PluginError(message + f" (strict plugin loading: unset {STRICT_ENV} / drop --strict to skip it)")
        self.problems.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def _broken(self, exc: BaseException, message: str) -> None:
        """Report a plugin that raised ``exc``; only the user's own Ctrl-C goes on as an interrupt.

        SystemExit, KeyboardInterrupt and the like raised by a plugin's code are a broken plugin,
        not a request to end facekit; so is facekit's own FacekitError raised by a plugin, which
        would otherwise reach the user without saying which plugin is at fault. Only the
        PluginError of strict loading, which names the plugin already, goes on unchanged.
        """
        if isinstance(exc, PluginError) or (isinstance(exc, KeyboardInterrupt) and self._interrupted()):
            raise exc
        self._problem(f"{message}: {exc.__class__.__name__}: {exc}" if str(exc) else f"{message}: {exc.__class__.__name__}")

    def _load_entry_point(self, entry_point: EntryPoint) -> None:
        package = _distribution(entry_point)
        try:
            module = entry_point.load()
        except BaseException as exc:  # any import-time failure of somebody else's code, sys.exit() included
            self._broken(exc, f"plugin {entry_point.name!r} from package {package} failed to load")
            return
        version = entry_point.dist.version if entry_point.dist else "?"
        self._add(PluginInfo(name=entry_point.name, module=module, package=package, version=version))

    def _add(self, info: PluginInfo) -> None:
        try:
            self.pm.register(info.module, name=f"{info.package}:{info.name}")
        except (ValueError, pluggy.PluginValidationError) as exc:  # registered twice, or a hook that does not fit its spec
            self._problem(f"plugin {info.name!r} from package {info.package} was not registered: {exc}")
            return
        self.plugins.append(info)
        # pluggy accepts hooks it has no spec for; a misspelled hook would then never run, unnoticed.
        unknown = sorted(caller.name for caller in self.pm.get_hookcallers(info.module) or [] if caller.spec is None)
        if unknown:
            self._problem(
                f"plugin {info.name!r} from package {info.package} implements {', '.join(unknown)}, which facekit "
                f"does not call; known hooks: {', '.join(hook_names())}"
            )

    def _fill(self, kind: str, hook: str) -> None:
        registry = self.registries[kind]
        # Call the hooks in load order (built-ins first), not pluggy's order, which a plugin could
        # change with tryfirst=True: the oldest registration of a name wins.
        for info, impl in self._impls(hook):
            names = info.registers.setdefault(kind, [])

            def register(spec: Any, info: PluginInfo = info, names: list[str] = names) -> None:
                name = getattr(spec, "name", None)
                spec_class, needs = SPEC_CONTRACTS[kind]
                missing = [attr for attr in needs if not callable(getattr(spec, attr, None))]
                # By class name (the spec classes or a subclass of one): the registries sit below
                # the facade that defines them, and this holds wherever the specs module lives.
                is_spec = spec_class in {cls.__name__ for cls in type(spec).__mro__}
                if isinstance(spec, type) or missing or not is_spec:
                    what = f"the class {spec.__name__}" if isinstance(spec, type) else _a(type(spec).__name__)
                    self._problem(
                        f"{info.label} registered {what} as {_a(registry.kind)}, not {_a(spec_class)}"
                        + (f" (its {', '.join(missing)} is not callable)" if missing and is_spec else "")
                        + f"; call register({spec_class}(...)) (see docs/plugins.md). Ignoring it"
                    )
                elif not isinstance(name, str) or not name:
                    self._problem(f"plugin {info.name!r} from package {info.package} registered a {registry.kind} with no name")
                elif name in registry:
                    self._problem(
                        f"plugin {info.name!r} from package {info.package} registers {registry.kind} {name!r}, "
                        f"already registered by package {registry.owner[name]}; ignoring the second one"
                    )
                else:
                    registry.add(name, spec, info.package, info.label)
                    names.append(name)

            try:
                impl.function(register=register)
            except BaseException as exc:
                self._broken(exc, f"plugin {info.name!r} from package {info.package} failed in {hook}")

    def _impls(self, hook: str) -> list[tuple[PluginInfo, Any]]:
        """``(plugin, hook implementation)`` pairs for ``hook``, in plugin load order."""
        impls = {id(impl.plugin): impl for impl in getattr(self.pm.hook, hook).get_hookimpls()}
        return [(info, impls[id(info.module)]) for info in self.plugins if id(info.module) in impls]

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add its CLI commands to the Typer app ``cli``.

        Like a built-in architecture, a command already on ``cli`` (facekit's own, whatever they
        are when this runs, or an earlier plugin's) cannot be replaced: a plugin's command of a
        taken name is dropped with a warning naming the plugin (an error with --strict), and so
        is a change to the commands or the root options it found.
        """
        with _user_interrupts() as interrupted:
            self._interrupted = interrupted
            for info, impl in self._impls("register_commands"):
                before = _CommandsSnapshot(cli)
                try:
                    impl.function(cli=cli)
                except BaseException as exc:
                    before.restore(cli)
                    self._broken(exc, f"{info.label} failed to add its commands")
                    continue
                self._keep_new_commands(info, cli, before)

    def _keep_new_commands(self, info: PluginInfo, cli: Any, before: "_CommandsSnapshot") -> None:
        """Keep what ``info`` added to ``cli`` under free names; put back anything it replaced."""
        tampered = before.tampered(cli)
        added_commands = [c for c in cli.registered_commands if not any(c is b for b, _ in before.commands)]
        added_groups = [g for g in cli.registered_groups if not any(g is b for b, _ in before.groups)]
        before.restore(cli)
        if tampered:
            self._problem(f"{info.label} changed facekit's own {tampered} in register_commands; ignoring its commands")
            return
        try:
            taken = _command_names(cli.registered_commands, cli.registered_groups)
            kept_commands, kept_groups = [], []
            for entry in added_commands:
                clash = _command_names([entry], []) & taken
                if clash:
                    self._command_clash(info, clash)
                else:
                    kept_commands.append(entry)
                    taken |= _command_names([entry], [])
            for entry in added_groups:
                clash = _command_names([], [entry]) & taken
                if clash:
                    self._command_clash(info, clash)
                else:
                    kept_groups.append(entry)
                    taken |= _command_names([], [entry])
        except PluginError:
            raise
        except Exception as exc:  # a command Typer cannot build (a bad annotation, ...)
            self._broken(exc, f"{info.label} added a command that cannot be built")
            return
        cli.registered_commands.extend(kept_commands)
        cli.registered_groups.extend(kept_groups)

    def _command_clash(self, info: PluginInfo, names: set[str]) -> None:
        listed = ", ".join(repr(name) for name in sorted(names))
        self._problem(f"{info.label} registers command {listed}, which facekit or an earlier plugin already has; ignoring it")


class _CommandsSnapshot:
    """The commands, groups (with theirs) and root callback of a Typer app, to tell what a plugin changed."""

    def __init__(self, cli: Any, nested: bool = False):
        self.nested = nested  # a built-in group: adding to it is changing it too
        self.commands = [(entry, dict(vars(entry))) for entry in cli.registered_commands]
        self.groups = [(entry, dict(vars(entry))) for entry in cli.registered_groups]
        self.subgroups = [
            _CommandsSnapshot(entry.typer_instance, nested=True) for entry, _ in self.groups if entry.typer_instance is not None
        ]
        self.callback = cli.registered_callback
        self.callback_state = dict(vars(self.callback)) if self.callback is not None else None

    def tampered(self, cli: Any) -> str:
        """What of the snapshot ``cli`` no longer has as it was ('' when nothing)."""
        if cli.registered_callback is not self.callback or (
            self.callback is not None and dict(vars(self.callback)) != self.callback_state
        ):
            return "root options"
        for saved, current in ((self.commands, cli.registered_commands), (self.groups, cli.registered_groups)):
            if self.nested and len(current) != len(saved):
                return "commands"
            if any(not any(entry is c for c in current) or dict(vars(entry)) != state for entry, state in saved):
                return "commands"
        for snapshot, (entry, _) in zip(self.subgroups, [g for g in self.groups if g[0].typer_instance is not None]):
            if snapshot.tampered(entry.typer_instance):
                return "commands"
        return ""

    def restore(self, cli: Any) -> None:
        for entry, state in self.commands + self.groups:
            vars(entry).clear()
            vars(entry).update(state)
        cli.registered_commands[:] = [entry for entry, _ in self.commands]
        cli.registered_groups[:] = [entry for entry, _ in self.groups]
        for snapshot, (entry, _) in zip(self.subgroups, [g for g in self.groups if g[0].typer_instance is not None]):
            snapshot.restore(entry.typer_instance)
        cli.registered_callback = self.callback
        if self.callback is not None:
            vars(self.callback).clear()
            vars(self.callback).update(self.callback_state)


def _command_names(commands: list[Any], groups: list[Any]) -> set[str]:
    """The command names Typer gives these registered commands and groups (a nameless group's
    commands are merged into its parent, so they count by their own names)."""
    import typer
    from typer.main import get_group

    probe = typer.Typer()
    probe.registered_commands = list(commands)
    probe.registered_groups = list(groups)
    return set(get_group(probe).commands)


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _distribution(entry_point: EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist else "?"


def _is_builtin(entry_point: EntryPoint) -> bool:
    """facekit's own entry points: the ``facekit`` distribution, pointing into the facekit package."""
    return _distribution(entry_point) == BUILTIN_DISTRIBUTION and entry_point.module.split(".")[0] == "facekit"


@contextlib.contextmanager
def _user_interrupts() -> Iterator[Callable[[], bool]]:
    """Tell a real Ctrl-C apart from a KeyboardInterrupt that plugin code raised itself.

    Yields a function that is true once SIGINT arrived while the block ran; outside the main
    thread (no signal handlers there) every KeyboardInterrupt counts as the user's.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: True
        return
    received = []

    def on_sigint(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(received)
    finally:
        if previous is not None:  # None: a handler installed outside Python, which we cannot restore
            signal.signal(signal.SIGINT, previous)


def plugin_behind(exc: BaseException) -> PluginInfo | None:
    """The third-party plugin whose code raised ``exc`` (the innermost one in its traceback, or in
    the tracebacks of the exceptions it was raised from), or None.

    So a failure inside a plugin's architecture, loss, split, reporter or command names the
    plugin, whatever it raised, and whatever facekit code it called on the way.
    """
    if _current is None:
        return None
    by_module = {}
    for info in _current.plugins:
        if info.builtin:
            continue
        module = getattr(info.module, "__name__", "") or ""
        top = module.split(".")[0]
        by_module[module if top == "facekit" else top] = info  # a plugin inside facekit's namespace: its own module only
    if not by_module:
        return None
    found = None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback = exc.__traceback__
        while traceback is not None:
            name = traceback.tb_frame.f_globals.get("__name__", "") or ""
            for prefix, info in by_module.items():
                if name == prefix or name.startswith(prefix + "."):
                    found = info
            traceback = traceback.tb_next
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


_current: PluginSet | None = None


def get_plugins() -> PluginSet:
    """The process-wide plugin set, loaded on first use."""
    global _current
    if _current is None:
        _current = PluginSet()
    return _current


def reset_plugins(plugin_set: PluginSet | None = None) -> PluginSet | None:
    """Replace the process-wide plugin set (tests, ``--strict``); None reloads on next use."""
    global _current
    previous, _current = _current, plugin_set
    return previous


def architectures() -> Registry:
    return get_plugins().registries["architectures"]


def losses() -> Registry:
    return get_plugins().registries["losses"]


def splits() -> Registry:
    return get_plugins().registries["splits"]


def reporters() -> Registry:
    return get_plugins().registries["reporters"]


def augmentations() -> Registry:
    return get_plugins().registries["augmentations"]


def loggers() -> Registry:
    return get_plugins().registries["loggers"]


def hook_names() -> list[str]:
    """Every hook a plugin can implement (used by the documentation meta-test)."""
    return sorted(name for name in dir(hookspecs) if name.startswith("register_"))

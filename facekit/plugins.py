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
}

T = TypeVar("T")


class PluginWarning(UserWarning):
    """A plugin failed to load or registered a name that was already taken."""


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
        self.owner: dict[str, str] = {}

    def add(self, name: str, item: T, owner: str) -> None:
        self._items[name] = item
        self.owner[name] = owner

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
        message = " ".join(message.split())  # one line, whatever the plugin's exception text holds
        if self.strict:
            raise FacekitError(message + f" (strict plugin loading: unset {STRICT_ENV} / drop --strict to skip it)")
        self.problems.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def _broken(self, exc: BaseException, message: str) -> None:
        """Report a plugin that raised ``exc``; only the user's own Ctrl-C goes on as an interrupt.

        SystemExit, KeyboardInterrupt and the like raised by a plugin's code are a broken plugin,
        not a request to end facekit.
        """
        if isinstance(exc, FacekitError) or (isinstance(exc, KeyboardInterrupt) and self._interrupted()):
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
                if not isinstance(name, str) or not name:
                    self._problem(f"plugin {info.name!r} from package {info.package} registered a {registry.kind} with no name")
                elif name in registry:
                    self._problem(
                        f"plugin {info.name!r} from package {info.package} registers {registry.kind} {name!r}, "
                        f"already registered by package {registry.owner[name]}; ignoring the second one"
                    )
                else:
                    registry.add(name, spec, info.package)
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
        """Let every plugin add its CLI commands to the Typer app ``cli``."""
        with _user_interrupts() as interrupted:
            self._interrupted = interrupted
            for info, impl in self._impls("register_commands"):
                try:
                    impl.function(cli=cli)
                except BaseException as exc:
                    self._broken(exc, f"plugin {info.name!r} from package {info.package} failed to add its commands")


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


def hook_names() -> list[str]:
    """Every hook a plugin can implement (used by the documentation meta-test)."""
    return sorted(name for name in dir(hookspecs) if name.startswith("register_"))

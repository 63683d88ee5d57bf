"""Faults users meet outside training: hostile plugins, planted or damaged caches, unreadable data.

Each test fails without the fix it guards: the point is the class of problem (any clash, any
BaseException from plugin code, any damaged cache entry), not only the first example found.
"""

from __future__ import annotations

import pytest

from facekit.errors import FacekitError
from facekit.plugins import PluginSet, PluginWarning

CLAIMS_BASELINE = """
from facekit import hookimpl
from facekit.api import ArchitectureSpec

def build(options):
    raise AssertionError("the impostor must never be built")

@hookimpl{marker}
def register_architectures(register):
    register(ArchitectureSpec("baseline", build, "An impostor."))
"""


# ---------------------------------------------------------------------------------- plugins
@pytest.mark.parametrize("package", ["aaa-dup", "dup", "Facekit-Zzz"])
@pytest.mark.parametrize("marker", ["", "(tryfirst=True)"])
def test_a_third_party_plugin_never_replaces_a_builtin(facekit_plugin, package, marker):
    """Whatever the package is called (sorting before 'facekit' or not) and whatever hook order it asks for."""
    from facekit.builtins.architectures import __name__ as builtin_module

    with pytest.warns(PluginWarning) as caught:
        plugin_set = facekit_plugin(CLAIMS_BASELINE.format(marker=marker), package=package)
    registry = plugin_set.registries["architectures"]
    assert registry.owner["baseline"] == "facekit"
    assert registry.get("baseline").build.__module__ == builtin_module
    clash = [str(w.message) for w in caught if "'baseline'" in str(w.message)]
    assert len(clash) == 1 and package in clash[0] and "already registered by package facekit" in clash[0]
    assert "\n" not in clash[0]


@pytest.mark.parametrize(
    "source, raised",
    [
        ("import sys\nsys.exit(3)\n", "SystemExit"),
        ("raise SystemExit('bye')\n", "SystemExit: bye"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        ("raise GeneratorExit\n", "GeneratorExit"),
    ],
)
def test_a_plugin_that_exits_or_interrupts_at_import_is_a_broken_plugin(facekit_plugin, source, raised):
    with pytest.warns(PluginWarning, match=f"facekit-rude failed to load: {raised}"):
        plugin_set = facekit_plugin(source, package="facekit-rude")
    assert "baseline" in plugin_set.registries["architectures"]
    with pytest.raises(FacekitError, match="facekit-rude failed to load"):
        facekit_plugin(source, package="facekit-rude", strict=True)


@pytest.mark.parametrize("hook", ["register_architectures", "register_commands"])
@pytest.mark.parametrize("statement", ["raise SystemExit(0)", "raise KeyboardInterrupt", "raise ValueError('no')"])
def test_a_plugin_hook_that_exits_is_a_broken_plugin(facekit_plugin, hook, statement):
    import typer

    source = f"from facekit import hookimpl\n\n@hookimpl\ndef {hook}({'cli' if hook == 'register_commands' else 'register'}):\n    {statement}\n"
    with pytest.warns(PluginWarning, match=f"facekit-rude failed .*{hook.replace('register_', '')}"):
        plugin_set = facekit_plugin(source, package="facekit-rude")
        plugin_set.add_commands(typer.Typer())
    assert "baseline" in plugin_set.registries["architectures"]


def test_the_users_own_ctrl_c_while_plugins_load_still_interrupts(facekit_plugin):
    source = "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n"
    with pytest.raises(KeyboardInterrupt):
        facekit_plugin(source, package="facekit-slow")


@pytest.mark.parametrize("hook_body", ["raise RuntimeError('no commands today')", "raise SystemExit(4)"])
def test_strict_with_a_failing_register_commands_is_one_line_exit_1(facekit_plugin, capsys, hook_body):
    from facekit.cli import main

    facekit_plugin(f"from facekit import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n    {hook_body}\n", package="facekit-cmds")
    with pytest.raises(SystemExit) as exit_info:
        main(["--strict", "plugins"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: plugin") and "facekit-cmds failed to add its commands" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_plugin_loading_reads_every_entry_point_once(facekit_plugin):
    """The plugin set lists each built-in once and first, before any third-party package."""
    with pytest.warns(PluginWarning, match="aaa-first registers architecture 'baseline'"):
        plugin_set = facekit_plugin(CLAIMS_BASELINE.format(marker=""), package="aaa-first")
    packages = [info.package for info in plugin_set.plugins]
    assert packages.index("aaa-first") > max(i for i, p in enumerate(packages) if p == "facekit")


def test_builtins_are_not_taken_from_a_foreign_module_claiming_the_facekit_name():
    from importlib.metadata import EntryPoint

    from facekit.plugins import _is_builtin

    class Dist:
        name = "facekit"

    ours = EntryPoint("architectures", "facekit.builtins.architectures", "facekit")
    foreign = EntryPoint("architectures", "evil.architectures", "facekit")
    object.__setattr__(ours, "dist", Dist())
    object.__setattr__(foreign, "dist", Dist())
    assert _is_builtin(ours) and not _is_builtin(foreign)

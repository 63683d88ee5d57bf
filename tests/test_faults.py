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


# ------------------------------------------------------------------------ native kernel
PLANTED_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void)
{
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("planted code ran", f); fclose(f); }
}
void facekit_rotate_normalize(void) {}
"""


@pytest.fixture
def native_cache(tmp_path, monkeypatch):
    """A fresh kernel cache folder; the loaded kernel is forgotten before and after."""
    import shutil

    from facekit.data.loaders import _native

    if shutil.which("cc") is None:
        pytest.skip("no C compiler here: the kernel is never built or loaded")
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FACEKIT_NATIVE", raising=False)
    _native.kernel.cache_clear()
    yield _native
    _native.kernel.cache_clear()


def _plant(tmp_path, target):
    """Compile a library whose constructor writes a marker file, and put it at ``target``."""
    import subprocess

    marker = tmp_path / "planted-code-ran"
    source = tmp_path / "planted.c"
    source.write_text(PLANTED_C)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["cc", f'-DMARKER="{marker}"', "-fPIC", "-shared", "-o", str(target), str(source)], check=True)
    target.chmod(0o644)
    return marker


def _hash(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_sidecar(target, sidecar):
    pass


def _wrong_hash(target, sidecar):
    sidecar.write_text("0" * 64 + "\n")


def _group_writable_library(target, sidecar):
    sidecar.write_text(_hash(target) + "\n")
    target.chmod(0o664)


def _world_writable_sidecar(target, sidecar):
    sidecar.write_text(_hash(target) + "\n")
    sidecar.chmod(0o666)


def _foreign_owner(target, sidecar):
    import os

    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    sidecar.write_text(_hash(target) + "\n")
    os.chown(target, 4242, 4242)


def _symlinked_library(target, sidecar):
    moved = target.with_name("elsewhere.so")
    target.rename(moved)
    target.symlink_to(moved)
    sidecar.write_text(_hash(moved) + "\n")


@pytest.mark.parametrize(
    "tamper", [_no_sidecar, _wrong_hash, _group_writable_library, _world_writable_sidecar, _foreign_owner, _symlinked_library]
)
def test_a_planted_kernel_is_never_loaded_but_rebuilt(native_cache, tmp_path, tamper):
    extra = tuple(native_cache._cpu_flags())
    target = native_cache.library_path(extra)
    sidecar = target.with_name(target.name + ".sha256")
    marker = _plant(tmp_path, target)
    tamper(target, sidecar)
    planted = target.resolve().read_bytes()

    assert native_cache.kernel() is not None
    assert not marker.exists(), "the planted library was loaded"
    assert not target.is_symlink() and target.read_bytes() != planted
    assert sidecar.read_text().strip() == _hash(target)
    assert target.stat().st_mode & 0o022 == 0 and sidecar.stat().st_mode & 0o022 == 0


def test_a_verified_kernel_is_reused_not_rebuilt(native_cache, monkeypatch):
    assert native_cache.kernel() is not None
    native_cache.kernel.cache_clear()
    monkeypatch.setattr(native_cache, "_build", lambda *a: pytest.fail("a verified library was rebuilt"))
    assert native_cache.kernel() is not None


def test_a_kernel_folder_others_own_falls_back_to_torch_with_a_warning(native_cache, tmp_path):
    import os

    if os.getuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    target = native_cache.library_path(tuple(native_cache._cpu_flags()))
    marker = _plant(tmp_path, target)
    target.with_name(target.name + ".sha256").write_text(_hash(target) + "\n")
    os.chown(target.parent, 4242, 4242)
    with pytest.warns(RuntimeWarning, match="not a private folder of this user.*torch path"):
        assert native_cache.kernel() is None
    assert not marker.exists()


def test_our_own_kernel_folder_made_under_a_loose_umask_is_tightened(native_cache):
    folder = native_cache._cache_dir()
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    assert native_cache.kernel() is not None
    assert folder.stat().st_mode & 0o777 == 0o755

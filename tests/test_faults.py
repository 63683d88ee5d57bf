"""Faults users meet outside training: hostile plugins, planted or damaged caches, unreadable data.

Each test fails without the fix it guards: the point is the class of problem (any clash, any
BaseException from plugin code, any damaged cache entry), not only the first example found.
"""

from __future__ import annotations

import pytest

from facekit.errors import FacekitError
from facekit.plugins import PluginWarning

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


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["register_architectures", "register_commands"])
@pytest.mark.parametrize("statement", ["raise SystemExit(0)", "raise KeyboardInterrupt", "raise ValueError('no')"])
def test_a_plugin_hook_that_exits_is_a_broken_plugin(facekit_plugin, hook, statement):
    import typer

    source = f"from facekit import hookimpl\n\n@hookimpl\ndef {hook}({'cli' if hook == 'register_commands' else 'register'}):\n    {statement}\n"
    with pytest.warns(PluginWarning, match=f"facekit-rude failed .*{hook.replace('register_', '')}"):
        plugin_set = facekit_plugin(source, package="facekit-rude")
        plugin_set.add_commands(typer.Typer())
    assert "baseline" in plugin_set.registries["architectures"]


@pytest.mark.parametrize(
    "source",
    [
        "from facekit import hookimpl\n\n@hookimpl\ndef register_architectures(registry):\n    pass\n",
        "from facekit import hookimpl\n\n@hookimpl(hookwrapper=True)\ndef register_losses(register):\n    return 1\n",
        "from facekit import hookimpl\n\n@hookimpl\ndef register_architecture(register):\n    pass\n",
    ],
    ids=["wrong argument name", "hookwrapper that is no generator", "misspelled hook"],
)
def test_a_plugin_whose_hooks_do_not_fit_is_a_broken_plugin(facekit_plugin, source):
    with pytest.warns(PluginWarning, match="facekit-misfit"):
        plugin_set = facekit_plugin(source, package="facekit-misfit")
    assert "baseline" in plugin_set.registries["architectures"]
    with pytest.raises(FacekitError, match="facekit-misfit"):
        facekit_plugin(source, package="facekit-misfit", strict=True)


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
    """A fresh kernel cache folder, and a kernel() of its own: the process-wide one stays as it was."""
    import functools
    import shutil

    from facekit.data.loaders import _native

    if shutil.which("cc") is None:
        pytest.skip("no C compiler here: the kernel is never built or loaded")
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FACEKIT_NATIVE", raising=False)
    monkeypatch.setattr(_native, "kernel", functools.lru_cache(maxsize=1)(_native.kernel.__wrapped__))
    return _native


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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- index cache
def _index_cache_file(cache):
    (entry,) = (cache / "index").glob("*.json")
    return entry


def _edit_payload(edit, rehash):
    """Change the cached index with ``edit``; with ``rehash`` the tamperer also fixes the checksum."""
    import hashlib
    import json

    def tamper(entry):
        data = json.loads(entry.read_text())
        edit(data["index"])
        if rehash:
            data["sha256"] = hashlib.sha256(json.dumps(data["index"], sort_keys=True).encode()).hexdigest()
        entry.write_text(json.dumps(data))

    return tamper


def _swap_labels(index):
    index["labels"][0], index["labels"][-1] = index["labels"][-1], index["labels"][0]


def _outside_root(index):
    index["files"][0] = "../../etc/passwd"


def _absolute(index):
    index["files"][0] = "/etc/passwd"


INDEX_TAMPERING = {
    "labels changed": lambda index: index["labels"].__setitem__(0, 1),
    "labels swapped": _swap_labels,
    "labels shorter than files": lambda index: index["labels"].pop(),
    "files shorter than labels": lambda index: index["files"].pop(),
    "label out of range": lambda index: index["labels"].__setitem__(0, 99),
    "negative label": lambda index: index["labels"].__setitem__(0, -1),
    "path outside the root": _outside_root,
    "absolute path": _absolute,
    "a file dropped": lambda index: (index["files"].pop(), index["labels"].pop()),
    "a class renamed": lambda index: index["classes"].__setitem__(0, "mallory"),
    "another root": lambda index: index.__setitem__("root", "/somewhere/else"),
    "bad file forgotten": lambda index: index["bad"].clear(),
    "labels not numbers": lambda index: index["labels"].__setitem__(0, "x"),
}


def _garbage(text):
    return lambda entry: entry.write_text(text)


@pytest.mark.parametrize(
    "tamper",
    [_edit_payload(edit, rehash) for edit in INDEX_TAMPERING.values() for rehash in (False, True)]
    + [_garbage(""), _garbage("{not json"), _garbage("[]"), _garbage('{"sha256": 1}'), _garbage('{"index": {}, "sha256": "0"}')],
    ids=[f"{name}{' (rehashed)' if rehash else ''}" for name in INDEX_TAMPERING for rehash in (False, True)]
    + ["empty", "not json", "a list", "no index", "empty index"],
)
def test_a_tampered_or_damaged_index_cache_is_rebuilt(tmp_path, monkeypatch, tamper):
    from facekit.data.index import index_dataset
    from facekit.data.synth import make_synthetic_dataset

    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = make_synthetic_dataset(tmp_path / "ds", identities=3, per_identity=3, size=16)
    (root / "person_02" / "broken.png").write_bytes(b"")
    fresh = index_dataset(root)
    entry = _index_cache_file(tmp_path / "cache")
    tamper(entry)

    again = index_dataset(root)
    assert again.to_dict() == fresh.to_dict()
    assert index_dataset(root, cache=False).to_dict() == fresh.to_dict()
    assert _index_cache_file(tmp_path / "cache").read_text() != "", "the damaged entry is rewritten"


def test_index_cache_writes_leave_no_temporaries_and_clean_stale_ones(tmp_path, monkeypatch):
    import errno
    import os
    import time

    import facekit.files
    from facekit.data.index import index_dataset
    from facekit.data.synth import make_synthetic_dataset

    cache = tmp_path / "cache"
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(cache))
    root = make_synthetic_dataset(tmp_path / "ds", identities=2, per_identity=2, size=16)
    (cache / "index").mkdir(parents=True)
    stale = cache / "index" / ".0123.json.abcd1234.tmp"
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = cache / "index" / ".4567.json.efgh5678.tmp"  # a live writer's: too young to remove
    fresh.write_bytes(b"")

    real_replace = os.replace

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(facekit.files.os, "replace", disk_full)
    index_dataset(root)  # a full disk costs the cache, not the index
    monkeypatch.setattr(facekit.files.os, "replace", real_replace)
    assert sorted(p.name for p in (cache / "index").iterdir()) == [fresh.name]
    index_dataset(root)
    assert len(list((cache / "index").glob("*.json"))) == 1


def test_one_identity_is_refused_naming_the_folder(tmp_path, monkeypatch):
    from facekit.data.index import index_dataset
    from facekit.data.synth import make_synthetic_dataset
    from facekit.errors import UsageError

    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    single = make_synthetic_dataset(tmp_path / "single", identities=1, per_identity=4, size=16)
    with pytest.raises(UsageError, match=rf"{single}: only one identity \(person_00\).*at least 2"):
        index_dataset(single)
    # Two folders, but one holds only bad files: still a single class.
    make_synthetic_dataset(tmp_path / "mostly", identities=1, per_identity=4, size=16)
    (tmp_path / "mostly" / "zz_broken").mkdir()
    (tmp_path / "mostly" / "zz_broken" / "x.png").write_bytes(b"")
    with pytest.raises(UsageError, match="only one identity"):
        index_dataset(tmp_path / "mostly")


def test_cli_train_and_check_refuse_one_identity(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from facekit.cli import app
    from facekit.data.synth import make_synthetic_dataset

    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    single = make_synthetic_dataset(tmp_path / "single", identities=1, per_identity=4, size=16)
    result = CliRunner().invoke(app, ["train", "--data", str(single), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "only one identity (person_00)" in result.output
    assert "Traceback" not in result.output
    check = CliRunner().invoke(app, ["data", "check", str(single)])
    assert check.exit_code == 1 and "at least 2" in check.output


def _deny(monkeypatch, *denied):
    """Make listing the folders ``denied`` fail as it does for a folder without read permission."""
    import os

    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) in {os.fspath(d) for d in denied}:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_identity_folder_is_named_with_permission_denied(tmp_path, monkeypatch):
    from facekit.data.check import check_dataset
    from facekit.data.index import index_dataset
    from facekit.data.synth import make_synthetic_dataset

    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = make_synthetic_dataset(tmp_path / "ds", identities=3, per_identity=3, size=16)
    (root / "person_00" / "nested").mkdir()
    _deny(monkeypatch, root / "person_01", root / "person_00" / "nested")
    index = index_dataset(root)
    reasons = {bad.path: bad.reason for bad in index.bad}
    assert reasons == {"person_01/": "folder unreadable: permission denied", "person_00/nested/": "folder unreadable: permission denied"}
    assert index.empty_classes == ["person_01"] and index.classes == ["person_00", "person_02"]
    assert index_dataset(root).to_dict() == index.to_dict(), "the cached index keeps the unreadable folders"
    report = check_dataset(root)
    assert {b.path for b in report.bad} == set(reasons)
    monkeypatch.undo()
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    assert index_dataset(root).bad == [], "readable again: the cache is not reused"


def test_an_unreadable_data_root_is_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    from facekit.data.index import index_dataset
    from facekit.errors import UsageError

    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(UsageError, match=f"{root}: permission denied"):
        index_dataset(root)


# --------------------------------------------------------------------------- stats cache
class _Quiet:
    def message(self, text):
        pass


def _stats_setup(tmp_path, monkeypatch):
    from facekit.data.synth import make_synthetic_dataset

    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = make_synthetic_dataset(tmp_path / "ds", identities=2, per_identity=3, size=16)
    return sorted(str(p) for p in root.rglob("*.png"))


def _resave(cache, sums, rehash):
    """Overwrite the cached sums; with ``rehash`` the tamperer also fixes the recorded checksum."""
    import hashlib
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, sums)
    cache.write_bytes(buffer.getvalue())
    if rehash:
        cache.with_name(cache.name + ".sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest())


def _scaled(sums):
    return sums * 10


def _shorter(sums):
    return sums[:-1]


def _with_nan(sums):
    sums = sums.copy()
    sums[0, 0, 0] = float("nan")
    return sums


def _negative(sums):
    return -sums


def _squares_too_small(sums):
    sums = sums.copy()
    sums[..., 1] = 0.0
    return sums


def _float32(sums):
    return sums.astype("float32")


def _transposed(sums):
    return sums.transpose(0, 2, 1).copy()


STATS_TAMPERING = [_scaled, _shorter, _with_nan, _negative, _squares_too_small, _float32, _transposed]


@pytest.mark.parametrize("rehash", [False, True], ids=["checksum stale", "checksum fixed"])
@pytest.mark.parametrize("tamper", STATS_TAMPERING, ids=[t.__name__.strip("_") for t in STATS_TAMPERING])
def test_a_tampered_stats_cache_is_recomputed(tmp_path, monkeypatch, tamper, rehash):
    import numpy as np

    from facekit.data.stats import cached_channel_sums, normalization_from_sums

    paths = _stats_setup(tmp_path, monkeypatch)
    fresh = cached_channel_sums(paths, 16, _Quiet())
    (cache,) = (tmp_path / "cache" / "stats").glob("*.npy")
    _resave(cache, tamper(fresh), rehash)

    again = cached_channel_sums(paths, 16, _Quiet())
    np.testing.assert_array_equal(again, fresh)
    norm = normalization_from_sums(again, range(len(paths)), 16 * 16)
    assert min(norm.std) > 0.01, "a tampered cache must never reach normalization.json"
    np.testing.assert_array_equal(cached_channel_sums(paths, 16, _Quiet()), fresh)


@pytest.mark.parametrize("damage", ["garbage", "empty", "no checksum", "pickled object"])
def test_a_damaged_stats_cache_is_recomputed(tmp_path, monkeypatch, damage):

    import numpy as np

    from facekit.data.stats import cached_channel_sums

    paths = _stats_setup(tmp_path, monkeypatch)
    fresh = cached_channel_sums(paths, 16, _Quiet())
    (cache,) = (tmp_path / "cache" / "stats").glob("*.npy")
    if damage == "garbage":
        cache.write_bytes(b"\x93NUMPY garbage")
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "no checksum":
        cache.with_name(cache.name + ".sha256").unlink()
    else:
        import hashlib
        import io

        buffer = io.BytesIO()
        np.save(buffer, np.array([{"planted": 1}], dtype=object), allow_pickle=True)
        cache.write_bytes(buffer.getvalue())
        cache.with_name(cache.name + ".sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest())
    np.testing.assert_array_equal(cached_channel_sums(paths, 16, _Quiet()), fresh)


def _cache_dir_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "not-a-folder"))


def _disk_full(tmp_path, monkeypatch):
    import errno

    import facekit.files

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(facekit.files.os, "replace", full)


def _read_only(tmp_path, monkeypatch):
    import facekit.files

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(facekit.files.tempfile, "mkstemp", denied)


@pytest.mark.parametrize("unwritable", [_cache_dir_is_a_file, _disk_full, _read_only])
def test_an_unwritable_stats_cache_warns_and_goes_on(tmp_path, monkeypatch, unwritable):
    import numpy as np

    from facekit.data.stats import cached_channel_sums, channel_sums

    paths = _stats_setup(tmp_path, monkeypatch)
    unwritable(tmp_path, monkeypatch)
    with pytest.warns(RuntimeWarning, match=r"cannot write the statistics cache .*going on without it") as caught:
        sums = cached_channel_sums(paths, 16, _Quiet())
    assert all("\n" not in str(w.message) for w in caught)
    np.testing.assert_array_equal(sums, channel_sums(paths, 16))
    stats = tmp_path / "cache" / "stats"
    assert not stats.is_dir() or list(stats.iterdir()) == [], "no temporary or partial file is left"


def test_training_goes_on_when_the_cache_folder_cannot_be_written(tmp_path, monkeypatch, synthetic_dataset):
    from typer.testing import CliRunner

    from facekit.cli import app

    _cache_dir_is_a_file(tmp_path, monkeypatch)
    fast = ["--input-size", "48", "--epochs", "1", "--batch-size", "8", "--loader", "torch", "--workers", "0",
            "--rotate", "0", "--threads", "1"]  # fmt: skip
    with pytest.warns(RuntimeWarning, match="statistics cache"):
        result = CliRunner().invoke(app, ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), *fast])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and (tmp_path / "run" / "normalization.json").is_file()


# ----------------------------------------------------------------------------------- docs
def _markdown_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted(root.glob("plugins/*/README.md"))]:
        yield pytest.param(path, id=str(path.relative_to(root)))


@pytest.mark.parametrize("path", list(_markdown_files()))
def test_docs_name_no_path_outside_the_repository(path):
    """Users have neither the authors' folders nor the folder beside the repository."""
    import re

    text = path.read_text()
    found = re.findall(r"(?<![\w~.$])/(?:work|root|home|Users)/[^\s)`'\"]*|\.\./shared[^\s)`'\"]*", text)
    assert not found, f"{path.name} names paths users do not have: {found}"


def test_the_readme_tour_says_how_to_reach_the_facekit_command():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    tour = readme[readme.index("## A short tour") :]
    assert "source .venv/bin/activate" in tour[: tour.index("```")] and ".venv/bin/facekit" in tour
    assert "docs/method.md" in readme and (Path(__file__).resolve().parents[1] / "docs" / "method.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["import sys\nsys.exit(0)\n", "raise KeyboardInterrupt\n"])
def test_the_real_command_survives_a_plugin_that_exits_at_import(tmp_path, source):
    """In a fresh process, as a user runs it: one warning line, and the command still does its work."""
    import json
    import os
    import subprocess
    import sys

    from facekit.testing import make_fake_distribution

    site = make_fake_distribution(tmp_path / "site", "facekit-rude", {"rude_plugin": source}, {"rude": "rude_plugin"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "facekit", "plugins", "--all", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "baseline" in json.dumps(json.loads(result.stdout))
    warning = [line for line in result.stderr.splitlines() if "facekit-rude" in line]
    assert len(warning) == 1 and warning[0].startswith("Warning: plugin 'rude' from package facekit-rude failed to load")
    assert "Traceback" not in result.stderr

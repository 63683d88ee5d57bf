"""Test helpers for facekit and its plugin authors; also a pytest plugin (entry point ``pytest11``).

Fixtures:

- ``synthetic_dataset``: a small one-folder-per-identity data set made on the fly.
- ``facekit_plugin``: install a throwaway plugin (a module's source) under the ``facekit``
  entry-point group for one test, exactly as ``pip install`` would expose it.

Importing this module stays cheap (no torch): pytest loads it in every session.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import pytest


def make_fake_distribution(
    site: Path, package: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "1.0"
) -> Path:
    """Write modules and a ``*.dist-info`` with ``facekit`` entry points into ``site`` (a sys.path folder)."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{package.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[facekit]\n{lines}\n")
    return site


@pytest.fixture
def facekit_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """``facekit_plugin(source, package="facekit-throwaway")`` installs a plugin module and reloads plugins.

    Returns the fresh :class:`facekit.plugins.PluginSet`; everything is undone after the test.
    """
    from facekit.plugins import PluginSet, reset_plugins

    site = tmp_path / "site-packages"
    monkeypatch.syspath_prepend(str(site))
    installed: list[str] = []

    def install(source: str, package: str = "facekit-throwaway", module: str | None = None, strict: bool = False):
        module = module or package.replace("-", "_") + "_plugin"
        make_fake_distribution(site, package, {module: source}, {module: module})
        installed.append(module)
        sys.modules.pop(module, None)
        plugin_set = PluginSet(strict=strict)
        reset_plugins(plugin_set)
        return plugin_set

    previous = reset_plugins(None)
    yield install
    for module in installed:
        sys.modules.pop(module, None)
    reset_plugins(previous)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four identities, eight 48x48 images each: enough for a model to learn in a few steps."""
    from facekit.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("faces") / "data", identities=4, per_identity=8, size=48, seed=0)

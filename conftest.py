"""Every test runs in its own temporary folder, so nothing a command writes by default
(``runs/<time>-<arch>-<loss>``, report files) lands in the folder pytest was started from; and
facekit's caches (data index, image statistics, decoded images, native kernels) go to a folder
of the test session, never into the user's ``~/.cache/facekit``."""

import os
import shutil
import tempfile

import pytest

_SESSION_CACHE = None


def pytest_configure(config):
    global _SESSION_CACHE
    # Set before any test module is imported, so subprocesses the tests start inherit it too.
    _SESSION_CACHE = tempfile.mkdtemp(prefix="facekit-test-cache-")
    os.environ["FACEKIT_CACHE_DIR"] = _SESSION_CACHE


def pytest_unconfigure(config):
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

"""Every test runs in its own temporary folder, so nothing a command writes by default
(``runs/<time>-<arch>-<loss>``, report files) lands in the folder pytest was started from."""

import pytest


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

"""Every hook must be documented in docs/plugins.md and exercised by a test."""

import inspect
from pathlib import Path

import pytest

from facekit import hookspecs
from facekit.plugins import hook_names

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("hook", hook_names())
def test_hook_has_a_one_sentence_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert doc.strip(), f"hook {hook} has no docstring"
    assert doc.count(". ") == 0 and doc.endswith("."), f"hook {hook}: one sentence, please"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_documented(hook):
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert f"### {hook}" in docs, f"docs/plugins.md has no section for {hook}"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_tested(hook):
    me = Path(__file__).resolve()
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.resolve() != me]
    assert any(f"def {hook}(" in p.read_text() for p in tests), f"no test implements hook {hook}"

"""Every hook must be documented in docs/plugins.md, with its real signature, and exercised by a test.

Like datasette's tests/test_docs.py: the argument tables in the documentation are compared with
the hookspecs' signatures, and the field tables with the spec dataclasses, so neither drifts.
"""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import facekit.api
from facekit import hookspecs
from facekit.plugins import hook_names

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "plugins.md").read_text()
SPECS = ["ArchitectureSpec", "ArchOptions", "Normalization", "LossSpec", "LossOption", "SplitSpec", "SplitOptions", "SplitPlan", "Fold",
         "ReporterSpec", "ReportContext", "AugmentationSpec", "LoggerSpec", "LoggerContext", "RunResults"]  # fmt: skip


def section(heading: str) -> str:
    """The text under the markdown heading ``heading`` up to the next heading of any level."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#|\Z)", DOCS, re.M | re.S)
    assert match, f"docs/plugins.md has no section {heading!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """Cells of a markdown table's body rows, with code quotes and escaped pipes undone."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append([c[1:-1] if c.startswith("`") and c.endswith("`") else c for c in cells])
    return rows[1:]  # the header row


def unquoted(annotation: str) -> str:
    return annotation.replace("'", "").replace('"', "")


@pytest.mark.parametrize("hook", hook_names())
def test_hook_has_a_one_sentence_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert doc.strip(), f"hook {hook} has no docstring"
    assert doc.count(". ") == 0 and doc.endswith("."), f"hook {hook}: one sentence, please"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_documented_with_its_signature(hook):
    text = section(f"### {hook}")
    signature = inspect.signature(getattr(hookspecs, hook))
    documented = [(row[0], row[1]) for row in table_rows(text)]
    actual = [(name, unquoted(p.annotation)) for name, p in signature.parameters.items()]
    assert documented == actual, f"docs/plugins.md documents {hook}({documented}), the hookspec is {hook}({actual})"
    shown = f"def {hook}({', '.join(f'{n}: {t}' for n, t in actual)}) -> {signature.return_annotation}: ..."
    assert shown in text, f"docs/plugins.md should show the signature `{shown}`"
    assert f"Returns: `{signature.return_annotation}`." in text, f"docs/plugins.md: say what {hook} returns"


@pytest.mark.parametrize("spec", SPECS)
def test_spec_fields_are_documented(spec):
    fields = dataclasses.fields(getattr(facekit.api, spec))
    documented = [tuple(row[:3]) for row in table_rows(section(f"#### `{spec}`"))]

    def default(field: dataclasses.Field) -> str:
        if field.default is not dataclasses.MISSING:
            return repr(field.default)
        return repr(field.default_factory()) if field.default_factory is not dataclasses.MISSING else "required"

    actual = [(f.name, unquoted(f.type), default(f)) for f in fields]
    assert documented == actual, f"docs/plugins.md's {spec} table (name, type, default) differs from the dataclass"


def test_the_docs_name_every_public_api_name():
    missing = [name for name in facekit.api.__all__ if f"`{name}" not in DOCS]
    assert not missing, f"docs/plugins.md does not mention facekit.api's {', '.join(missing)}"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_tested(hook):
    me = Path(__file__).resolve()
    # Test modules and the helpers they share (tests/_testutil.py holds throwaway plugins too).
    tests = [p for p in (ROOT / "tests").rglob("*.py") if p.resolve() != me]
    assert any(f"def {hook}(" in p.read_text() for p in tests), f"no test implements hook {hook}"

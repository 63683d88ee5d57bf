"""facekit.api is the one public surface for plugin authors: complete, cheap, and the only one used."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import facekit.api
from facekit.errors import FacekitError

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"facekit.api"}  # and facekit.testing in a plugin's tests
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py"))


def facekit_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every ``import facekit...`` / ``from facekit... import`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, module) for line, module in found if module == "facekit" or module.startswith("facekit.")]


def test_plugins_are_found():
    assert any(p.parts[-2] == "facekit_example" for p in PLUGIN_FILES), "plugins/ moved?"


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_facekit_api(path):
    allowed = ALLOWED | ({"facekit.testing"} if "tests" in path.relative_to(ROOT).parts else set())
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}" for line, module in facekit_imports(path)
                 if module not in allowed]  # fmt: skip
    assert not offending, "plugins import only facekit.api (and facekit.testing in tests): " + "; ".join(offending)


def test_the_import_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom facekit.errors import UsageError\nimport facekit.api\nfrom facekit import hookimpl\n")
    assert facekit_imports(bad) == [(2, "facekit.errors"), (3, "facekit.api"), (4, "facekit")]


def test_every_name_in_all_is_there():
    for name in facekit.api.__all__:
        assert getattr(facekit.api, name) is not None, name
    from facekit.report import ReportContext
    from facekit.runs import Run

    assert facekit.api.ReportContext is ReportContext and facekit.api.Run is Run
    assert facekit.api.UsageError is facekit.errors.UsageError
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        facekit.api.nope  # noqa: B018


@pytest.mark.parametrize("module", ["facekit.api", "facekit.testing"])
def test_importing_the_plugin_author_modules_does_not_import_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'facekit.report', 'facekit.cli') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_verify_sha256_accepts_the_published_file_and_refuses_others(tmp_path):
    path = tmp_path / "net-0123.pth"
    path.write_bytes(b"weights")
    digest = facekit.api.file_sha256(path)
    assert facekit.api.verify_sha256(path, digest, trust=False) == path
    assert facekit.api.verify_sha256(path, digest[:8], trust=False) == path  # torch.hub's prefix
    with pytest.raises(FacekitError) as error:
        facekit.api.verify_sha256(path, "0" * 64, trust=False, published="net-0000.pth")
    message = str(error.value)
    assert message.startswith(f"--weights {path}: sha256 {digest[:16]}... does not match the published net-0000.pth")
    assert message.endswith("pass --trust-weights to use a file of your own")
    assert facekit.api.verify_sha256(path, "0" * 64, trust=True) == path
    with pytest.raises(FacekitError, match=r"^model .*missing.pth: no such file; check the path$"):
        facekit.api.verify_sha256(tmp_path / "missing.pth", digest, trust=True, option="model")


def test_file_sha256_sees_a_rewritten_file(tmp_path):
    import hashlib
    import os

    path = tmp_path / "w.bin"
    path.write_bytes(b"one")
    assert facekit.api.file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))  # a rewrite within the same clock tick must not hit the cache
    assert facekit.api.file_sha256(path) == hashlib.sha256(b"two").hexdigest()


LIBRARY_FILES = sorted(
    p for p in (ROOT / "facekit").rglob("*.py")
    if p.relative_to(ROOT / "facekit").parts[0] not in {"builtins", "cli", "__main__.py"}
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_imports_a_concrete_plugin_or_the_cli(path):
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}" for line, module in facekit_imports(path)
                 if module.split(".")[:2] in (["facekit", "builtins"], ["facekit", "cli"])]  # fmt: skip
    assert not offending, "library code reaches plugins through facekit.plugins' registries: " + "; ".join(offending)

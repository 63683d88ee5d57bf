"""What the repository says to its users stays about the product: no paths of one machine, no
references to internal tickets or files the repository does not have; and tests leave the user's
own caches alone."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Built from parts, so this file does not match itself.
FORBIDDEN = {
    "a ticket reference": re.compile(r"\b(the " + r"issue\b|issue " + r"\d+|issue" + r" #\d+)", re.IGNORECASE),
    "a file the repository lacks": re.compile(r"\bSPEC" + r"\.md\b"),
    "a path of one machine": re.compile(r"(?<![\w.])/(work|home|root|Users)/\w"),
}


def _texts():
    for pattern in ("README.md", "docs/*.md", "tests/*.py", "facekit/**/*.py", "benchmarks/*.py", "plugins/*/*.md",
                    "plugins/*/tests/*.py", "plugins/*/*/*.py", "scripts/*"):  # fmt: skip
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path.name != Path(__file__).name:
                yield path


def test_docs_code_and_tests_speak_about_the_product():
    found = []
    for path in _texts():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_tests_never_use_the_users_cache():
    from facekit.data.index import cache_dir as cache_root

    home_cache = Path.home() / ".cache" / "facekit"
    assert Path(os.environ["FACEKIT_CACHE_DIR"]).resolve() != home_cache.resolve()
    assert home_cache.resolve() not in [cache_root().resolve(), *cache_root().resolve().parents]

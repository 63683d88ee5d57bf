"""facekit imports its optional and heavy dependencies only where they are used: a machine
without them (an offline GPU machine has torch and the core packages only) still runs the CLI,
training and the benchmarks, and `facekit --help` stays quick."""

import os
import subprocess
import sys

import pytest

# Optional features' packages, and DALI (a large native library only the DALI loader needs).
LAZY = ("onnx", "onnxruntime", "tensorboard", "tensorboardX", "mlflow", "nvidia.dali")

PROBE = """
import sys
{imports}
from facekit.plugins import get_plugins
get_plugins()  # every installed plugin's module, the built-ins' included
lazy = {lazy!r}
print(",".join(sorted(name for name in lazy if name in sys.modules)))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "imports",
    [
        "import facekit.cli",
        "import facekit.engine",
        "import facekit.api, facekit.runs, facekit.report, facekit.predict",
        # The commands themselves are built (and their help rendered) without them too.
        "from facekit.cli import app\nfrom typer.testing import CliRunner\nCliRunner().invoke(app, ['train', '--help'])",
    ],
)
def test_importing_facekit_does_not_import_optional_packages(imports):
    probe = PROBE.format(imports=imports, lazy=LAZY)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    imported = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert imported == "", f"{imports!r} imported {imported}: import them inside the function that uses them"

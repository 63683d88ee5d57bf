import importlib.util
import sys
from pathlib import Path

# Let the tests run from a plain checkout too (facekit installed, this plugin not yet).
if importlib.util.find_spec("facekit_efficientnet") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

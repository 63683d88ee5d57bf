#!/usr/bin/env bash
# Creates .venv and installs facekit with its training and export tools, its plugins and the test
# tools, pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[train,export,dev,tracking]" \
    -e ./plugins/facekit-example \
    -e "./plugins/facekit-efficientnet[test]" \
    -e ./plugins/facekit-dlib

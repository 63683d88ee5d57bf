#!/usr/bin/env bash
# Packs what `python -m benchmarks.gpu` needs on the offline GPU machine (torch, typer, pluggy,
# rich, scikit-learn, matplotlib, numpy and PyYAML only): the team's GPU packing script packs
# DALI, its run-time wheels and the data sets; this adds the wheels of pytest (for the command's
# `tests` part) to the same wheel cache first, so that they travel and install with DALI's.
# Usage, from the project root:  bash scripts/gpu_prepare.sh PACK_SCRIPT [DATASET ...]
# where PACK_SCRIPT is the team's prepare.sh (default data set: lfw_min8).
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
pack=${1:?give the path of the GPU packing script (prepare.sh)}; shift
cache=${GPU_PREP_CACHE:-$HOME/.cache/facekit-gpu-prep}
mkdir -p "$cache/deps"
# pytest's own needs the GPU machine lacks (packaging, pluggy and Pygments are there: rich and torch need them).
pins=$(grep -E '^(pytest|iniconfig)==' constraints.txt)
python3 -m pip download -q --no-deps --only-binary=:all: -d "$cache/deps" $pins
bash "$pack" "$@"

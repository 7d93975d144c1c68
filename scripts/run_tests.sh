#!/usr/bin/env bash
# Set up a fresh machine and run the test suite: torch's CPU build first (a plain torch
# requirement would pull a multi-GB CUDA build), then the package with its dev and gpu extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev,gpu]"
python -m pytest "$@"

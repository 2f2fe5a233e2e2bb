#!/usr/bin/env bash
# Create .venv and install sam3-triton with the given extras (default: serve,export).
# torch 2.14.1 + torchvision 0.29.1 is the pair whose torchvision roi_align loads (DESIGN notes).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve,export}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[${extras}]"
echo "installed sam3-triton[${extras}] into $(pwd)/.venv"

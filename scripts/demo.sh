#!/usr/bin/env bash
# README command 1: set up (if needed) and run the demo on a real small model (all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
. .venv/bin/activate
python -m quantlinear doctor
python examples/demo_minilm.py "$@"

#!/usr/bin/env bash
# Set up and run the demo sweep (tiny random-weight models, generated videos; NOT paper numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTHON=${PYTHON:-python3}
"$PYTHON" scripts/demo.py "$@"

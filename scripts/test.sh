#!/usr/bin/env bash
# Set up and run the whole test suite (offline, CPU). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pytest -q -p no:cacheprovider tests "$@"

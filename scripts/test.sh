#!/usr/bin/env bash
# Set up (the project, and lmms-eval for its plugin's tests), then run the whole test suite
# (offline, CPU). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
echo "[test] installing the optional lmms-eval (requirements-lmms.txt) for the plugin's tests"
"$PYTHON" -m pip install -q -r requirements-lmms.txt
# lmms-eval and VLMEvalKit disagree on this pin; VLMEvalKit's holds.
"$PYTHON" -m pip install -q "antlr4-python3-runtime==4.11.1"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
"$PYTHON" -m pytest -q -p no:cacheprovider tests "$@"

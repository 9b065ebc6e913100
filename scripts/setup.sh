#!/usr/bin/env bash
# Install Tango and its requirements into the current Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "[setup] PyTorch not found: installing a CPU build (install a CUDA build yourself for GPUs)."
  "$PYTHON" -m pip install -q "torch==2.13.0" || "$PYTHON" -m pip install -q "torch>=2.4"
fi
"$PYTHON" -m pip install -q -r requirements.txt
"$PYTHON" -m pip install -q --no-deps -e .
echo "[setup] done: $("$PYTHON" -c 'import torch, transformers, tango_core; print("torch", torch.__version__, "| transformers", transformers.__version__, "| tango_core", tango_core.__version__)')"

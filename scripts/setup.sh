#!/usr/bin/env bash
# Install Tango, its evaluation harness and their requirements into the current Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  # VLMEvalKit needs torchvision; a matching pair avoids pip replacing torch behind our back.
  echo "[setup] PyTorch not found: installing torch 2.14.1 + torchvision 0.29.1 (install your own CUDA build first to choose)."
  "$PYTHON" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
echo "[setup] installing requirements (VLMEvalKit takes a few minutes the first time)"
"$PYTHON" -m pip install -q -r requirements.txt
"$PYTHON" -m pip install -q --no-deps -e .
echo "[setup] done: $("$PYTHON" -c 'import torch, transformers, tango_core, tango_eval, importlib.metadata as m; print("torch", torch.__version__, "| transformers", transformers.__version__, "| ms-vlmeval", m.version("ms-vlmeval"), "| tango_core", tango_core.__version__)')"

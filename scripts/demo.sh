#!/usr/bin/env bash
# Set up, then the main job on its embedded default: the LLaVA-OneVision sweep (vanilla, r = 0.1,
# 0.15, 0.2) over generated Video-MME / MVBench / MLVU / LongVideoBench data, on a tiny model with
# RANDOM weights, offline, on CPU. It shows the evaluation path end to end, NOT paper numbers.
# Extra arguments go to run_eval_ov.sh (e.g. --work-dir DIR, --ratios 0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash run_eval_ov.sh --demo "$@"

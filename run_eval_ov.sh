#!/usr/bin/env bash
# Tango on LLaVA-OneVision-7B: retention ratios 0.1 0.15 0.2 over Video-MME, MVBench, MLVU, LongVideoBench,
# then the paper-style summary. --demo: a tiny random-weight model on generated benchmarks (CPU).
#   bash run_eval_ov.sh [--ratios 0.1 0.15 0.2] [--with-vanilla] [--data ...] [--work-dir DIR]
#                        [--model-path DIR] [--data-root DIR] [--demo] [run.py flags ...]
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
export PYTHONPATH="$here/VLMEvalKit:$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m tango_eval.sweep --model llava_onevision "$@"

#!/usr/bin/env python
"""Evaluate Tango on video benchmarks through VLMEvalKit.

    python VLMEvalKit/run.py --config VLMEvalKit/configs/llava_onevision.json --retain-ratio 0.1 --work-dir outputs/ov
    torchrun --nproc-per-node 8 VLMEvalKit/run.py --model qwen2_5_vl --data Video-MME MVBench --method vanilla

VLMEvalKit's flags (--data, --model, --config, --work-dir, --mode, --reuse, --verbose, ...) plus
Tango's (--method, --retain-ratio, --pre-retain-ratio, --pruned-layer, --llm-retain-ratio,
--segment-type, --similarity-threshold, --context-ratio, --num-neighbors); `--help` lists them.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
for _path in (_here, os.path.dirname(_here)):  # tango_eval and tango_core without an install
    if _path not in sys.path:
        sys.path.insert(0, _path)

from tango_eval.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

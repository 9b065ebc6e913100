"""GPU checks that need no timing: fidelity cases on CUDA, CPU/CUDA agreement, distance accuracy.

Usage: python benchmarks/check_gpu.py   (prints a report; exit status 1 if a fidelity case fails)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tango_core import TangoConfig, tango_prune  # noqa: E402
from tango_core.dpc import pairwise_distances  # noqa: E402
from tango_core.testing.synthetic import structured_clip  # noqa: E402

DATA = ROOT / "tests" / "data" / "fidelity"


def main() -> None:
    device = torch.device("cuda")
    failures = 0
    for case in json.loads((DATA / "cases.json").read_text()):
        arrays = np.load(DATA / f"case{case['idx']:02d}.npz")
        config = TangoConfig(case["r"], segmenter=case["seg"], similarity_threshold=case["tau"],
                             context_ratio=case["ctx"], sink_positions=tuple(case["sink"]))
        inputs = (torch.from_numpy(arrays["feats"]).to(device), torch.from_numpy(arrays["sal"]).to(device),
                  (case["H"], case["W"]), torch.from_numpy(arrays["ts"]).to(device))
        # Calls 1-3 with graphs: eager on padded tables, capture, replay; then without graphs.
        for label, run_config in (("graphs call 1", config), ("graphs call 2", config), ("graphs call 3", config),
                                  ("eager", config.with_execution(cuda_graphs=False)),
                                  ("eager, PyTorch ops only", config.with_execution(cuda_graphs=False, fused_kernels=False))):
            result = tango_prune(*inputs, run_config)
            keep = result.keep_index.cpu().numpy()
            same = keep.shape == arrays["keep"].shape and bool((keep == arrays["keep"]).all())
            error = float(np.abs(result.kept_features.cpu().numpy() - arrays["kept_feats"]).max()) if same else float("nan")
            failures += not same
            print(f"fidelity case{case['idx']:02d} on CUDA, {label}: keep {'identical' if same else 'DIFFERENT'}, "
                  f"max feature error {error:.2e}")

    for regime in ("static", "mixed", "dynamic"):
        clip = structured_clip(32, (14, 14), 3584, regime, num_scenes=3, seed=1)
        cpu = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.1))
        gpu = tango_prune(clip.features.to(device), clip.saliency.to(device), clip.grid, clip.timestamps.to(device),
                          TangoConfig(0.1))
        a, b = set(cpu.keep_index.tolist()), set(gpu.keep_index.cpu().tolist())
        print(f"CPU vs CUDA, {regime:7} clip D=3584: {len(a)} vs {len(b)} kept, {len(a ^ b)} differ")
        cuda_inputs = (clip.features.to(device), clip.saliency.to(device), clip.grid, clip.timestamps.to(device))
        for _ in range(2):  # the second call captures, the third replays
            tango_prune(*cuda_inputs, TangoConfig(0.1))
        graphed = tango_prune(*cuda_inputs, TangoConfig(0.1))
        eager = tango_prune(*cuda_inputs, TangoConfig(0.1).with_execution(cuda_graphs=False))
        same = torch.equal(graphed.keep_index, eager.keep_index)
        error = (graphed.kept_features.float() - eager.kept_features.float()).abs().max().item() if same else float("nan")
        print(f"CUDA graphs vs eager, {regime:7} clip: keep {'identical' if same else 'DIFFERENT'}, max feature error {error:.2e}")
        failures += not same
        plain = tango_prune(*cuda_inputs, TangoConfig(0.1).with_execution(cuda_graphs=False, fused_kernels=False))
        same = torch.equal(plain.keep_index, eager.keep_index)
        error = (plain.kept_features.float() - eager.kept_features.float()).abs().max().item() if same else float("nan")
        print(f"fused kernels vs PyTorch ops, {regime:7} clip: keep {'identical' if same else 'DIFFERENT'}, "
              f"max feature error {error:.2e}")
        failures += not same

    gen = torch.Generator(device=device).manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(8, 400, 3584, device=device, generator=gen), dim=-1)
    truth = torch.cdist(points.double(), points.double())
    split = pairwise_distances(points)
    plain = torch.cdist(points, points)
    off_diagonal = ~torch.eye(400, dtype=torch.bool, device=device)
    print(f"distance error vs float64 (off-diagonal): split-fp16 {(split - truth).abs()[:, off_diagonal].max():.2e}, "
          f"fp32 cdist {(plain - truth).abs()[:, off_diagonal].max():.2e}")

    # LLaVA-OneVision pooling: channels-last bilinear (ours) vs the contiguous NCHW path (transformers').
    projected = torch.randn(32, 27, 27, 3584, device=device, dtype=torch.float16)
    ours = torch.nn.functional.interpolate(projected.permute(0, 3, 1, 2), size=(14, 14), mode="bilinear")
    theirs = torch.nn.functional.interpolate(projected.permute(0, 3, 1, 2).contiguous(), size=(14, 14), mode="bilinear")
    print(f"bilinear pooling channels-last vs NCHW identical: {torch.equal(ours, theirs)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

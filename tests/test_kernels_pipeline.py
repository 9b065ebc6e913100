"""The whole pipeline through the fused kernels reproduces the reference's cases.

On a GPU the fused kernels are the default CUDA path (checked there by ``benchmarks/check_gpu.py``
and ``tests/test_fidelity.py``); here, without one, the same path runs through Triton's
interpreter by asking for the kernels on CPU tensors, so CI catches wiring mistakes between the
stages and the kernels.
"""


import pytest

pytest.importorskip("triton")

import numpy as np
import torch

from tango_core import ExecutionOptions, ops, tango_prune

from fidelity_cases import CASES, case_arrays, case_config

CASES_BY_IDX = {case["idx"]: case for case in CASES}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def kernels_everywhere(monkeypatch):
    """Run the fused kernels whatever the device (on the CPU: in Triton's interpreter)."""
    monkeypatch.setattr(ops, "kernels_run_on", lambda device: True)


@pytest.mark.parametrize("idx", [10, 8])  # one frame; 16 frames with static and dynamic segments
def test_fused_pipeline_reproduces_the_reference_case(kernels_everywhere, idx):
    case = CASES_BY_IDX[idx]
    arrays = case_arrays(case)
    config = case_config(case, execution=ExecutionOptions(cuda_graphs=False))
    inputs = [torch.from_numpy(arrays[key]).to(DEVICE) for key in ("feats", "sal", "ts")]
    assert ops.select_ops(config.execution, DEVICE).name == "triton"
    assert ops.select_ops(config.with_execution(fused_kernels=False).execution, DEVICE).name != "triton"
    fused = tango_prune(inputs[0], inputs[1], (case["H"], case["W"]), inputs[2], config)
    np.testing.assert_array_equal(fused.keep_index.cpu().numpy(), arrays["keep"])
    np.testing.assert_allclose(fused.kept_features.cpu().numpy(), arrays["kept_feats"], rtol=1e-5, atol=1e-6)
    plain = tango_prune(inputs[0], inputs[1], (case["H"], case["W"]), inputs[2], config.with_execution(fused_kernels=False))
    assert torch.equal(plain.keep_index, fused.keep_index)
    torch.testing.assert_close(plain.kept_features, fused.kept_features, rtol=1e-5, atol=1e-6)

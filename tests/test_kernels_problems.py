"""The fused problem-table expansion against its PyTorch form (tango_core.dpc.problem_tables)."""

import pytest

pytest.importorskip("triton")

import numpy as np
import torch

from host_references import problem_tables

from tango_core.dpc import problem_tables as pytorch_problem_tables
from tango_core.kernels.problems import problem_tables as fused_problem_tables

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("with_offsets", [False, True])
def test_fused_problem_tables_equal_the_pytorch_form(with_offsets):
    rng = np.random.default_rng(3)
    sizes = np.array([1, 2, 7, 8, 9, 40, 700, 0, 0])  # two padding rows
    centres = np.minimum(rng.integers(1, 20, len(sizes)), sizes)
    offsets = np.cumsum(sizes) - sizes
    offsets[7:] = 0  # the layout pads counts with zeros
    width, most = 701, 20
    columns = (sizes, centres, offsets) if with_offsets else (sizes, centres, rng.integers(0, 9, len(sizes)), sizes)
    table = torch.from_numpy(np.stack(columns, axis=1).astype(np.int64))
    counts = table if with_offsets else table[:, :2]  # a strided view, as the salient counts are
    expected, expected_members = pytorch_problem_tables(counts, width, most, num_neighbors=7)
    got, members = fused_problem_tables(counts.to(DEVICE), width, most, 7)
    for field in ("valid", "invalid", "centre_valid", "centre_invalid", "keep_all", "neg_inv_neighbours"):
        assert torch.equal(getattr(got, field).cpu(), getattr(expected, field)), field
    # Tables built on the host from the sizes agree on the real rows.
    host = problem_tables(sizes[:7], centres[:7], 7)
    assert torch.equal(got.neg_inv_neighbours[:7].cpu(), host.neg_inv_neighbours)
    assert torch.equal(got.keep_all[:7].cpu(), host.keep_all)
    if with_offsets:
        assert torch.equal(members.cpu(), expected_members)
        assert int(members.min()) >= 0 and members[7:].eq(0).all()
        assert members[5, 39].item() == offsets[5] + 39 and members[5, 600].item() == offsets[5] + 39
    else:
        assert members is None and expected_members is None

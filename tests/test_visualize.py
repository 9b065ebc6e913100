"""The visualisation helpers draw what was kept."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tango_core import TangoConfig, tango_prune  # noqa: E402
from tango_core.testing.synthetic import structured_clip  # noqa: E402
from tango_core.visualize import kept_token_mask, plot_kept_tokens, segment_of_frames  # noqa: E402


def test_mask_and_segments():
    mask = kept_token_mask(torch.tensor([0, 5, 9]), 2, (2, 3))
    assert mask.shape == (2, 2, 3)
    assert mask.sum() == 3 and mask[0, 0, 0] and mask[0, 1, 2] and mask[1, 1, 0]
    assert segment_of_frames([2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]


def test_plot_kept_tokens(tmp_path):
    clip = structured_clip(6, (7, 7), 16, "mixed", num_scenes=2, seed=0)
    result = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.2))
    frames = np.random.default_rng(0).integers(0, 255, (6, 50, 70, 3), dtype=np.uint8)
    figure = plot_kept_tokens(frames, result.keep_index, clip.grid, result.segments, max_frames=4, columns=2)
    shown = [axis for axis in figure.axes if axis.images]
    assert len(shown) == 4
    kept_cells = sum(len(axis.patches) for axis in shown)
    assert 0 < kept_cells <= result.keep_index.numel()
    figure.savefig(tmp_path / "kept.png")
    assert (tmp_path / "kept.png").stat().st_size > 0

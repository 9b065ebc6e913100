"""Pictures of what Tango keeps: frames with their kept token cells, grouped by segment.

Needs matplotlib (``pip install matplotlib``); nothing here is imported by the pipeline.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch


def kept_token_mask(keep_index: torch.Tensor, num_frames: int, grid: Tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool: True where a token is kept. keep_index: (K,) flat indices into N * H * W."""
    height, width = grid
    mask = np.zeros(num_frames * height * width, dtype=bool)
    mask[keep_index.detach().cpu().numpy()] = True
    return mask.reshape(num_frames, height, width)


def segment_of_frames(segments: Sequence[int]) -> np.ndarray:
    """(N,) segment number of every frame, from segment lengths."""
    return np.repeat(np.arange(len(segments)), np.asarray(segments, dtype=np.int64))


def plot_kept_tokens(
    frames: np.ndarray,
    keep_index: torch.Tensor,
    grid: Tuple[int, int],
    segments: Optional[Sequence[int]] = None,
    max_frames: int = 16,
    columns: int = 8,
    title: Optional[str] = None,
):
    """A matplotlib figure of up to ``max_frames`` frames (evenly chosen) with pruned cells dimmed.

    frames: (N, H, W, 3) uint8, the frames Tango saw (any resolution; the token grid is stretched
    over them). Kept cells are outlined; a token kept for a static position of a segment sits on the
    segment's first frame, so later frames of a mostly static segment look nearly empty, which is
    the point. Segments are colour-coded in the frame titles.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    num_frames = frames.shape[0]
    mask = kept_token_mask(keep_index, num_frames, grid)
    segment_ids = segment_of_frames(segments) if segments is not None else np.zeros(num_frames, np.int64)
    shown = np.unique(np.linspace(0, num_frames - 1, min(max_frames, num_frames)).astype(np.int64))
    rows = int(np.ceil(len(shown) / columns))
    cols = min(columns, len(shown))
    figure, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + 0.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    height, width = grid
    cell_h, cell_w = frames.shape[1] / height, frames.shape[2] / width
    pixel_rows = np.minimum((np.arange(frames.shape[1]) / cell_h).astype(np.int64), height - 1)
    pixel_cols = np.minimum((np.arange(frames.shape[2]) / cell_w).astype(np.int64), width - 1)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, frame in zip(axes.ravel(), shown):
        # Dim the pixels of pruned cells: each pixel belongs to the token cell it falls in.
        cells = mask[frame][pixel_rows[:, None], pixel_cols[None, :]]
        image = frames[frame].astype(np.float32)
        image[~cells] *= 0.25
        axis.imshow(image.astype(np.uint8))
        for row, col in zip(*np.nonzero(mask[frame])):
            axis.add_patch(Rectangle((col * cell_w, row * cell_h), cell_w, cell_h, fill=False, lw=0.6, ec="yellow"))
        segment = int(segment_ids[frame])
        axis.set_title(
            f"frame {frame} | seg {segment} | {int(mask[frame].sum())} kept",
            fontsize=7,
            color=colours(segment % 10),
        )
    kept = int(mask.sum())
    figure.suptitle(title or f"Tango keeps {kept} of {mask.size} tokens ({100 * kept / mask.size:.1f}%)", fontsize=9)
    figure.tight_layout()
    return figure

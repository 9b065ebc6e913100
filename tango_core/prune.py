"""The Tango pre-LLM pipeline (spec section 4): ``tango_prune``.

Device work happens in three batched phases with a single device-to-host transfer after the
first (similarities, validity flags); every later size is fixed by the host-side plan.

1. statistics: consecutive-frame similarities, static run lengths, input checks;
2. salient selection of every unit at once (one padded DPC-KNN batch);
3. context merging of every pool, batched by pool size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .budget import BudgetPlan, build_plan
from .config import TangoConfig, resolve_rope_sections
from .dpc import merge_into_anchors, select_diverse_salient
from .rope import st_rope
from .segmentation import (
    consecutive_frame_similarity,
    consecutive_token_similarity,
    fastvid_segments,
    holitom_segments,
    holitom_window_values,
    run_lengths,
)


@dataclass
class TangoResult:
    """keep_index: (K,) int64 sorted flat indices into the N*L tokens.
    kept_features: (K, D) features the LLM receives, in the input dtype.
    segments: frame count of each temporal segment, in order.
    """

    keep_index: torch.Tensor
    kept_features: torch.Tensor
    segments: List[int]


def _validate(
    features: torch.Tensor,
    saliency: torch.Tensor,
    grid: Sequence[int],
    timestamps: Optional[torch.Tensor],
    global_features: Optional[torch.Tensor],
    config: TangoConfig,
) -> Tuple[int, int]:
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        raise ValueError(
            f"features must be a tensor of shape (N, L, D) (frames, tokens per frame, channels), got "
            f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}."
        )
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point (fp32, fp16 or bf16), got {features.dtype}.")
    num_frames, num_tokens, _ = features.shape
    if num_frames == 0 or num_tokens == 0:
        raise ValueError(
            f"empty video: features have shape {tuple(features.shape)}; Tango needs at least one frame "
            "with at least one token. Check that the video decoded to frames."
        )
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f"grid must be (H, W) with positive sizes, got {tuple(grid)!r}.")
    height, width = int(grid[0]), int(grid[1])
    if height * width != num_tokens:
        raise ValueError(
            f"grid {height}x{width} = {height * width} tokens does not match features' L = {num_tokens} "
            "tokens per frame; pass grid=(H, W) with H * W == L."
        )
    if not isinstance(saliency, torch.Tensor) or tuple(saliency.shape) != (num_frames, num_tokens):
        raise ValueError(
            f"saliency must have shape (N, L) = {(num_frames, num_tokens)} to match features, got "
            f"{tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency).__name__}."
        )
    if timestamps is not None and tuple(timestamps.shape) != (num_frames,):
        raise ValueError(
            f"timestamps must have shape (N,) = ({num_frames},), one time in seconds per frame, got "
            f"{tuple(timestamps.shape)}."
        )
    if global_features is not None and (global_features.dim() != 2 or global_features.shape[0] != num_frames):
        raise ValueError(
            f"global_features must have shape (N, D') with N = {num_frames}, got {tuple(global_features.shape)}."
        )
    for name, tensor in (("saliency", saliency), ("timestamps", timestamps), ("global_features", global_features)):
        if tensor is not None and tensor.device != features.device:
            raise ValueError(f"{name} is on {tensor.device} but features are on {features.device}; move them together.")
    bad_sinks = [p for p in config.sink_positions if not 0 <= p < num_tokens]
    if bad_sinks:
        raise ValueError(
            f"sink_positions {bad_sinks} are outside the {height}x{width} grid (valid: 0 .. {num_tokens - 1}); "
            "use the preset of the model whose grid this is, or none."
        )
    resolve_rope_sections(features.shape[-1], config.rope_sections)
    return height, width


def _raise_on_bad_values(flags: np.ndarray) -> None:
    features_finite, saliency_finite, saliency_nonnegative, times_finite = (bool(f) for f in flags)
    if not features_finite:
        raise ValueError("features contain NaN or infinite values; check the vision encoder's output and its dtype.")
    if not saliency_finite:
        raise ValueError("saliency contains NaN or infinite values; check the attention weights fed to Tango.")
    if not saliency_nonnegative:
        raise ValueError("saliency must be non-negative (attention weights); got negative values.")
    if not times_finite:
        raise ValueError("timestamps contain NaN or infinite values; pass frame times in seconds.")


def _segment_and_check(
    features: torch.Tensor,
    saliency: torch.Tensor,
    timestamps: torch.Tensor,
    global_features: Optional[torch.Tensor],
    config: TangoConfig,
) -> Tuple[List[int], np.ndarray]:
    """Segment lengths and (N-1, L) static run lengths, after one device-to-host transfer."""
    num_frames, num_tokens, _ = features.shape
    threshold = config.resolved_similarity_threshold()
    flags = torch.stack(
        [
            torch.isfinite(features).all(),
            torch.isfinite(saliency).all(),
            (saliency >= 0).all(),
            torch.isfinite(timestamps).all(),
        ]
    ).double()
    packed = [flags]
    if num_frames > 1:
        token_similarity = consecutive_token_similarity(features)
        packed.append(run_lengths(token_similarity > config.static_threshold).flatten().double())
        if config.segmenter == "holitom":
            values = holitom_window_values(run_lengths(token_similarity > threshold))
            packed.append(values.flatten().double())
        else:
            summary = global_features if global_features is not None else features.float().mean(dim=1)
            frame_similarity = consecutive_frame_similarity(summary)
            packed += [frame_similarity.double(), (frame_similarity < threshold).double()]
    host = torch.cat(packed).cpu().numpy()
    _raise_on_bad_values(host[:4])
    if num_frames == 1:
        return [1], np.zeros((0, num_tokens), dtype=np.int64)
    cursor = 4 + (num_frames - 1) * num_tokens
    static_runs = host[4:cursor].astype(np.int64).reshape(num_frames - 1, num_tokens)
    if config.segmenter == "holitom":
        values = host[cursor:].astype(np.int64).reshape(num_frames, num_frames)
        return holitom_segments(values), static_runs
    similarity = host[cursor : cursor + num_frames - 1].astype(np.float32)
    below = host[cursor + num_frames - 1 :] > 0.5
    return fastvid_segments(similarity, below, config.fastvid_cuts), static_runs


def _static_positions(static_runs: np.ndarray, segment_lengths: List[int], num_tokens: int) -> np.ndarray:
    """(G, L) bool: position static across every consecutive pair of the segment (n >= 2)."""
    starts = np.concatenate(([0], np.cumsum(segment_lengths)[:-1])).astype(np.int64)
    lengths = np.asarray(segment_lengths, dtype=np.int64)
    padded = np.concatenate((static_runs, np.zeros((1, num_tokens), dtype=np.int64)))
    return (lengths[:, None] >= 2) & (padded[starts] >= (lengths - 1)[:, None])


class _IndexUpload:
    """Collects host index arrays and moves them to the device in one copy."""

    def __init__(self) -> None:
        self._arrays: List[np.ndarray] = []

    def add(self, array: np.ndarray) -> int:
        self._arrays.append(np.ascontiguousarray(array, dtype=np.int64))
        return len(self._arrays) - 1

    def upload(self, device: torch.device) -> List[torch.Tensor]:
        flat = np.concatenate([a.ravel() for a in self._arrays]) if self._arrays else np.zeros(0, np.int64)
        on_device = torch.from_numpy(flat).to(device, non_blocking=False)
        out, offset = [], 0
        for array in self._arrays:
            out.append(on_device[offset : offset + array.size].view(array.shape))
            offset += array.size
        return out


def _size_buckets(sizes: np.ndarray, slack: float = 2.0, small: int = 1 << 22) -> List[np.ndarray]:
    """Group problems (by index into ``sizes``) into padded batches.

    Problems are taken in ascending size; the next one joins the current group while the group's
    padded distance matrices (count * max_size**2) stay within ``slack`` times their true size,
    or below ``small`` elements. Few groups mean few kernel launches; bounded padding keeps memory
    and work close to the unpadded problems.
    """
    if len(sizes) == 0:
        return []
    order = np.argsort(sizes, kind="stable")
    groups: List[List[int]] = [[int(order[0])]]
    true_cost = float(sizes[order[0]]) ** 2
    for index in order[1:]:
        size = float(sizes[index])
        padded = (len(groups[-1]) + 1) * size * size  # ascending: this one is the new maximum
        if padded <= slack * (true_cost + size * size) or padded <= small:
            groups[-1].append(int(index))
            true_cost += size * size
        else:
            groups.append([int(index)])
            true_cost = size * size
    return [np.asarray(sorted(group), dtype=np.int64) for group in groups]


def tango_prune(
    features: torch.Tensor,
    saliency: torch.Tensor,
    grid: Tuple[int, int],
    timestamps: Optional[torch.Tensor] = None,
    config: Optional[TangoConfig] = None,
    global_features: Optional[torch.Tensor] = None,
) -> TangoResult:
    """Prune the visual tokens of one video with Tango.

    features: (N, L, D) projected visual tokens, L = H * W, any float dtype.
    saliency: (N, L) non-negative attention weights. grid: (H, W) row-major token grid.
    timestamps: (N,) frame times in seconds (None: 0, 1, 2, ...).
    global_features: (N, D') per-frame summaries for the ``fastvid`` segmenter (None: token mean).
    Returns the kept flat indices (sorted), their features and the segment lengths.
    Inputs are not modified. ``retention_ratio == 1.0`` returns every token unchanged.
    """
    config = config if config is not None else TangoConfig()
    _validate(features, saliency, grid, timestamps, global_features, config)
    num_frames, num_tokens, dim = features.shape
    device = features.device
    times = (
        torch.arange(num_frames, device=device, dtype=torch.float32)
        if timestamps is None
        else timestamps.to(dtype=torch.float32)
    )
    saliency = saliency.float()
    if config.sink_positions:
        sinks = torch.tensor(config.sink_positions, device=device, dtype=torch.int64)
        saliency = saliency.index_fill(1, sinks, 0.0)

    segment_lengths, static_runs = _segment_and_check(features, saliency, times, global_features, config)
    if config.retention_ratio >= 1.0:
        return TangoResult(
            keep_index=torch.arange(num_frames * num_tokens, device=device),
            kept_features=features.reshape(num_frames * num_tokens, dim),
            segments=segment_lengths,
        )

    static = _static_positions(static_runs, segment_lengths, num_tokens)
    plan = build_plan(static, segment_lengths, config)
    keep_index, kept = _execute(plan, features, saliency, times, grid, config)
    return TangoResult(keep_index=keep_index, kept_features=kept.to(features.dtype), segments=segment_lengths)


def _execute(
    plan: BudgetPlan,
    features: torch.Tensor,
    saliency: torch.Tensor,
    times: torch.Tensor,
    grid: Tuple[int, int],
    config: TangoConfig,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the device phases of a plan. Returns sorted flat indices (K,) and float32 features (K, D)."""
    num_frames, num_tokens, dim = features.shape
    device = features.device
    num_virtual = len(plan.virtual_segment)

    # Extended frames: the N real frames, then one virtual (static pseudo-) frame per segment with
    # static positions. out_frame: where its tokens land; rope_frame: whose ST-RoPE it clusters with.
    segment_of_virtual_start = plan.segment_start[plan.virtual_segment]
    out_frame = np.concatenate((np.arange(num_frames), segment_of_virtual_start))
    membership = np.zeros((num_virtual, num_frames), dtype=np.int64)
    for row, segment in enumerate(plan.virtual_segment):
        start = plan.segment_start[segment]
        membership[row, start : start + plan.segment_length[segment]] = 1

    # Host index tables for every phase, uploaded together.
    upload = _IndexUpload()
    i_out_frame = upload.add(out_frame)
    i_membership = upload.add(membership)
    i_unit_positions = upload.add(plan.unit_positions)
    i_unit_frame = upload.add(plan.unit_frame)
    salient_units = np.flatnonzero(plan.unit_salient > 0)
    max_candidates = int(plan.unit_candidates[salient_units].max()) if len(salient_units) else 0
    max_salient = int(plan.unit_salient[salient_units].max()) if len(salient_units) else 0
    i_salient_units = upload.add(salient_units)
    i_candidates = upload.add(plan.unit_candidates[salient_units])
    i_salient = upload.add(plan.unit_salient[salient_units])
    salient_valid = np.arange(max_salient)[None, :] < plan.unit_salient[salient_units][:, None]
    i_salient_slots = upload.add(np.flatnonzero(salient_valid))

    pool_offset = np.concatenate(([0], np.cumsum(plan.pool_size)[:-1])).astype(np.int64)
    total_pool = int(plan.pool_size.sum())
    kept_whole = np.flatnonzero((plan.pool_budget >= plan.pool_size) & (plan.pool_size > 0))
    i_whole = upload.add(
        np.concatenate([np.arange(pool_offset[j], pool_offset[j] + plan.pool_size[j]) for j in kept_whole])
        if len(kept_whole)
        else np.zeros(0, np.int64)
    )
    merged_pools = np.flatnonzero((plan.pool_budget > 0) & (plan.pool_budget < plan.pool_size))
    buckets = []
    for bucket in _size_buckets(plan.pool_size[merged_pools]):
        pools = merged_pools[bucket]
        width = int(plan.pool_size[pools].max())
        anchors = int(plan.pool_budget[pools].max())
        slots = pool_offset[pools][:, None] + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < plan.pool_size[pools][:, None]
        anchor_valid = np.arange(anchors)[None, :] < plan.pool_budget[pools][:, None]
        buckets.append(
            (
                anchors,
                upload.add(np.minimum(slots, max(total_pool - 1, 0))),
                upload.add(valid),
                upload.add(plan.pool_budget[pools]),
                upload.add(np.flatnonzero(anchor_valid)),
            )
        )
    tables = upload.upload(device)
    out_frame_t = tables[i_out_frame]

    # Virtual frames: segment means of features and saliency over the segment's frames (fp32).
    flat_features = features.reshape(num_frames * num_tokens, dim).float()
    if num_virtual:
        weights = tables[i_membership].float()
        counts = weights.sum(dim=1, keepdim=True)
        mean_features = (weights @ flat_features.view(num_frames, num_tokens * dim)) / counts
        ext_features = torch.cat((flat_features, mean_features.view(num_virtual * num_tokens, dim)))
        ext_saliency = torch.cat((saliency, (weights @ saliency) / counts))
    else:
        ext_features, ext_saliency = flat_features, saliency
    sections = resolve_rope_sections(dim, config.rope_sections)
    rope = st_rope(features, grid, times, sections, config.base_time, config.base_space)
    rope = rope.view(num_frames * num_tokens, dim)

    def rope_rows(ext_ids: torch.Tensor) -> torch.Tensor:
        frame = out_frame_t[ext_ids // num_tokens]  # a virtual frame clusters as its segment's first
        return frame * num_tokens + ext_ids % num_tokens

    unit_positions = tables[i_unit_positions].bool()
    unit_frame = tables[i_unit_frame]
    out_ids: List[torch.Tensor] = []
    out_features: List[torch.Tensor] = []

    # Phase 2: salient selection of every unit with k' > 0.
    selected = torch.zeros(len(plan.unit_frame), num_tokens + 1, dtype=torch.bool, device=device)
    if len(salient_units):
        units = tables[i_salient_units]
        unit_saliency = ext_saliency.view(-1, num_tokens)[unit_frame[units]]
        unit_saliency = unit_saliency.masked_fill(~unit_positions[units], float("-inf"))
        ranked = torch.sort(unit_saliency, dim=-1, descending=True, stable=True).indices[:, :max_candidates]
        candidate_valid = torch.arange(max_candidates, device=device) < tables[i_candidates].unsqueeze(-1)
        candidate_ids = unit_frame[units].unsqueeze(-1) * num_tokens + ranked
        picks = select_diverse_salient(
            rope[rope_rows(candidate_ids)], candidate_valid, tables[i_salient], max_salient, config.num_neighbors
        )
        picked_positions = ranked.gather(1, picks)
        slot_valid = torch.arange(max_salient, device=device) < tables[i_salient].unsqueeze(-1)
        selected[units] = selected[units].scatter(1, torch.where(slot_valid, picked_positions, num_tokens), True)
        salient_ids = (unit_frame[units].unsqueeze(-1) * num_tokens + picked_positions).flatten()
        salient_ids = salient_ids[tables[i_salient_slots]]
        out_ids.append(salient_ids)
        out_features.append(ext_features[salient_ids])

    # Phase 3: context pools, laid end to end in unit order (pools of a segment are contiguous).
    if total_pool:
        in_pool = (unit_positions & ~selected[:, :num_tokens]).flatten()
        pool_entries = torch.nonzero_static(in_pool, size=total_pool).squeeze(-1)
        pool_ids = unit_frame[pool_entries // num_tokens] * num_tokens + pool_entries % num_tokens
        whole = pool_ids[tables[i_whole]]
        out_ids.append(whole)
        out_features.append(ext_features[whole])
        for anchors, i_slots, i_valid, i_budget, i_anchor_slots in buckets:
            members = pool_ids[tables[i_slots]]  # (P, M)
            slots, merged = merge_into_anchors(
                rope[rope_rows(members)],
                ext_features[members],
                tables[i_valid].bool(),
                tables[i_budget],
                anchors,
                config.num_neighbors,
                config.beta,
                config.own_anchor_merge,
            )
            out_ids.append(members.gather(1, slots).flatten()[tables[i_anchor_slots]])
            out_features.append(merged.reshape(-1, dim)[tables[i_anchor_slots]])

    ext_ids = torch.cat(out_ids)
    flat_index = out_frame_t[ext_ids // num_tokens] * num_tokens + ext_ids % num_tokens
    keep_index, order = torch.sort(flat_index)
    return keep_index, torch.cat(out_features)[order]

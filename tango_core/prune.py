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
import torch.nn.functional as F
from torch.profiler import record_function

from .budget import BudgetPlan, build_plan
from .config import TangoConfig, resolve_rope_sections
from .dpc import ProblemTables, merge_into_anchors, problem_arrays, select_diverse_salient
from .rope import rotate_unit_features
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


def _raise_on_bad_values(summary: np.ndarray) -> None:
    """summary: sums of the unit features, saliency and timestamps, and the smallest saliency."""
    unit_sum, saliency_sum, saliency_min, times_sum = summary
    features_finite, saliency_finite, times_finite = np.isfinite([unit_sum, saliency_sum, times_sum])
    saliency_nonnegative = saliency_min >= 0
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
    unit: torch.Tensor,
    saliency: torch.Tensor,
    timestamps: torch.Tensor,
    global_features: Optional[torch.Tensor],
    config: TangoConfig,
) -> Tuple[List[int], np.ndarray]:
    """Segment lengths and (N-1, L) static run lengths, after one device-to-host transfer."""
    num_frames, num_tokens, _ = features.shape
    threshold = config.resolved_similarity_threshold()
    # NaN and inf propagate into these sums (unit vectors cannot overflow them): one reduction each.
    packed = [torch.stack((unit.sum(), saliency.sum(), saliency.amin(), timestamps.sum()))]
    if num_frames > 1:
        token_similarity = consecutive_token_similarity(unit)
        packed.append((token_similarity > config.static_threshold).flatten())
        if config.segmenter == "holitom":
            packed.append((token_similarity > threshold).flatten())
        else:
            summary = global_features if global_features is not None else features.float().mean(dim=1)
            frame_similarity = consecutive_frame_similarity(summary)
            packed += [frame_similarity, frame_similarity < threshold]
    host = torch.cat(packed).cpu().numpy()  # bool parts are promoted to float32
    _raise_on_bad_values(host[:4])
    if num_frames == 1:
        return [1], np.zeros((0, num_tokens), dtype=np.int64)
    pairs = (num_frames - 1) * num_tokens
    static_runs = run_lengths(host[4 : 4 + pairs].reshape(num_frames - 1, num_tokens) > 0.5)
    rest = host[4 + pairs :]
    if config.segmenter == "holitom":
        values = holitom_window_values(run_lengths(rest.reshape(num_frames - 1, num_tokens) > 0.5))
        return holitom_segments(values), static_runs
    return fastvid_segments(rest[: num_frames - 1], rest[num_frames - 1 :] > 0.5, config.fastvid_cuts), static_runs


def _static_positions(static_runs: np.ndarray, segment_lengths: List[int], num_tokens: int) -> np.ndarray:
    """(G, L) bool: position static across every consecutive pair of the segment (n >= 2)."""
    starts = np.concatenate(([0], np.cumsum(segment_lengths)[:-1])).astype(np.int64)
    lengths = np.asarray(segment_lengths, dtype=np.int64)
    padded = np.concatenate((static_runs, np.zeros((1, num_tokens), dtype=np.int64)))
    return (lengths[:, None] >= 2) & (padded[starts] >= (lengths - 1)[:, None])


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy a host array to ``device`` without waiting for queued device work (pinned staging)."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class _Upload:
    """Collects host arrays of any dtype and moves them to the device in one copy.

    Arrays are packed into one byte buffer at 8-byte alignment and come back as typed views.
    """

    def __init__(self) -> None:
        self._arrays: List[np.ndarray] = []

    def add(self, array: np.ndarray) -> int:
        self._arrays.append(np.ascontiguousarray(array))
        return len(self._arrays) - 1

    def add_tables(self, arrays: dict) -> dict:
        return {name: self.add(array) for name, array in arrays.items()}

    def upload(self, device: torch.device) -> List[torch.Tensor]:
        offsets, total = [], 0
        for array in self._arrays:
            offsets.append(total)
            total += -(-array.nbytes // 8) * 8
        buffer = np.zeros(max(total, 8), dtype=np.uint8)
        for array, offset in zip(self._arrays, offsets):
            buffer[offset : offset + array.nbytes] = array.reshape(-1).view(np.uint8)
        on_device = _to_device(buffer, device)
        out = []
        for array, offset in zip(self._arrays, offsets):
            dtype = torch.bool if array.dtype == np.bool_ else torch.from_numpy(array[:0]).dtype
            typed = on_device[offset : offset + array.nbytes].view(dtype)
            out.append(typed if array.ndim == 1 else typed.view(array.shape))
        return out


def _tables(uploaded: List[torch.Tensor], handles: dict) -> ProblemTables:
    return ProblemTables(**{name: uploaded[index] for name, index in handles.items()})


def _size_buckets(sizes: np.ndarray, slack: float, small: int) -> List[np.ndarray]:
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
    # Inference mode skips autograd's per-operation bookkeeping: the pipeline is launch-bound, so
    # this is a large share of its host time. Outputs are cloned out of it as ordinary tensors.
    with torch.inference_mode():
        result = _prune(features, saliency, grid, timestamps, config, global_features)
    if torch.is_inference_mode_enabled():
        return result
    return TangoResult(result.keep_index.clone(), result.kept_features.clone(), result.segments)


def _prune(
    features: torch.Tensor,
    saliency: torch.Tensor,
    grid: Tuple[int, int],
    timestamps: Optional[torch.Tensor],
    config: TangoConfig,
    global_features: Optional[torch.Tensor],
) -> TangoResult:
    """:func:`tango_prune` after validation of shapes."""
    num_frames, num_tokens, dim = features.shape
    device = features.device
    times = (
        torch.arange(num_frames, device=device, dtype=torch.float32)
        if timestamps is None
        else timestamps.to(dtype=torch.float32)
    )
    saliency = saliency.float()
    if config.sink_positions:
        sinks = _to_device(np.asarray(config.sink_positions, dtype=np.int64), device)
        saliency = saliency.index_fill(1, sinks, 0.0)

    with record_function("tango.segment"):
        features32 = features.float().contiguous()
        unit = F.normalize(features32, dim=-1)
        segment_lengths, static_runs = _segment_and_check(features32, unit, saliency, times, global_features, config)
    if config.retention_ratio >= 1.0:
        return TangoResult(
            keep_index=torch.arange(num_frames * num_tokens, device=device),
            kept_features=features.reshape(num_frames * num_tokens, dim),
            segments=segment_lengths,
        )

    # Queued before the host plans, so that the device computes it meanwhile.
    sections = resolve_rope_sections(dim, config.rope_sections)
    rope = rotate_unit_features(unit, grid, times, sections, config.base_time, config.base_space)
    with record_function("tango.plan"):
        static = _static_positions(static_runs, segment_lengths, num_tokens)
        plan = build_plan(static, segment_lengths, config)
    keep_index, kept = _execute(plan, features32, rope.view(-1, dim), saliency, config)
    return TangoResult(keep_index=keep_index, kept_features=kept.to(features.dtype), segments=segment_lengths)


def _execute(
    plan: BudgetPlan,
    features: torch.Tensor,
    rope: torch.Tensor,
    saliency: torch.Tensor,
    config: TangoConfig,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the device phases of a plan. Returns sorted flat indices (K,) and float32 features (K, D).

    features: (N, L, D) float32; rope: (N * L, D) their ST-RoPE clustering features.
    """
    num_frames, num_tokens, dim = features.shape
    device = features.device
    num_virtual = len(plan.virtual_segment)
    k = config.num_neighbors

    # Extended frames: the N real frames, then one virtual (static pseudo-) frame per segment with
    # static positions. Its tokens land on, and cluster with the ST-RoPE of, the segment's first frame.
    out_frame = np.concatenate((np.arange(num_frames), plan.segment_start[plan.virtual_segment]))
    averaging = np.zeros((num_virtual, num_frames), dtype=np.float32)
    for row, segment in enumerate(plan.virtual_segment):
        start, length = plan.segment_start[segment], plan.segment_length[segment]
        averaging[row, start : start + length] = 1.0 / length

    upload = _Upload()
    h_averaging = upload.add(averaging)
    # Token id of extended frame e, position l: e * L + l; its output (and ST-RoPE) row:
    # out_frame[e] * L + l = id + out_shift[e].
    h_out_shift = upload.add((out_frame - np.arange(len(out_frame))) * num_tokens)

    # Phase 2 tables: units with k' > 0, in one padded batch (candidate sets are small, so padding
    # costs less than the launches of more batches).
    salient_units = np.flatnonzero(plan.unit_salient > 0)
    if len(salient_units):
        picks, candidates = plan.unit_salient[salient_units], plan.unit_candidates[salient_units]
        h_salient_tables = upload.add_tables(problem_arrays(candidates, picks, k))
        h_salient_units = upload.add(salient_units)
        h_salient_rows = upload.add(plan.unit_frame[salient_units, None] * num_tokens)
        h_salient_rope = upload.add(out_frame[plan.unit_frame[salient_units], None] * num_tokens)
        h_salient_excluded = upload.add(~plan.unit_positions[salient_units])
        h_salient_slots = upload.add(np.flatnonzero(np.arange(picks.max())[None, :] < picks[:, None]))

    # Phase 3 tables: pools laid end to end in unit order (the units of a pool are contiguous).
    pool_offset = np.concatenate(([0], np.cumsum(plan.pool_size)[:-1])).astype(np.int64)
    total_pool = int(plan.pool_size.sum())
    h_unit_positions = upload.add(plan.unit_positions)
    h_pool_shift = upload.add(((plan.unit_frame - np.arange(len(plan.unit_frame))) * num_tokens)[:, None])
    whole = np.flatnonzero((plan.pool_budget >= plan.pool_size) & (plan.pool_size > 0))
    h_whole = upload.add(
        np.concatenate([np.arange(pool_offset[j], pool_offset[j] + plan.pool_size[j]) for j in whole])
        if len(whole)
        else np.zeros(0, np.int64)
    )
    merged_pools = np.flatnonzero((plan.pool_budget > 0) & (plan.pool_budget < plan.pool_size))
    groups = []
    for group in _size_buckets(plan.pool_size[merged_pools], slack=4.0, small=1 << 22):
        pools = merged_pools[group]
        sizes, anchors = plan.pool_size[pools], plan.pool_budget[pools]
        members = pool_offset[pools][:, None] + np.minimum(np.arange(sizes.max())[None, :], sizes[:, None] - 1)
        slots = np.flatnonzero(np.arange(anchors.max())[None, :] < anchors[:, None])
        groups.append((upload.add_tables(problem_arrays(sizes, anchors, k)), upload.add(members), upload.add(slots)))
    uploaded = upload.upload(device)
    out_shift = uploaded[h_out_shift]

    # Virtual frames: segment means of features and saliency (float32).
    averaging_t = uploaded[h_averaging]
    ext_saliency = torch.cat((saliency, averaging_t @ saliency))
    mean_features = (averaging_t @ features.view(num_frames, num_tokens * dim)).view(-1, dim)
    # Materialised tables cost bandwidth the GPU has to spare; gathers from them are one launch each.
    ext_features = torch.cat((features.view(num_frames * num_tokens, dim), mean_features))
    out_ids: List[torch.Tensor] = []
    out_features: List[torch.Tensor] = []
    unit_positions = uploaded[h_unit_positions]

    with record_function("tango.salient"):
        # Phase 2: salient selection of every unit with k' > 0.
        selected = torch.zeros(unit_positions.shape[0], num_tokens + 1, dtype=torch.bool, device=device)
        if len(salient_units):
            tables = _tables(uploaded, h_salient_tables)
            unit_rows = uploaded[h_salient_rows]  # (U', 1) first token id of each unit's frame
            ranked_saliency = ext_saliency.index_select(0, unit_rows.view(-1) // num_tokens)
            ranked_saliency.masked_fill_(uploaded[h_salient_excluded], float("-inf"))
            ranked = torch.sort(ranked_saliency, dim=-1, descending=True, stable=True).indices
            ranked = ranked[:, : tables.valid.shape[1]]  # candidates, most salient first
            candidate_rope = rope.index_select(0, (ranked + uploaded[h_salient_rope]).view(-1)).view(*ranked.shape, dim)
            positions = ranked.gather(1, select_diverse_salient(candidate_rope, tables, k))  # (U', A)
            chosen = positions.masked_fill(tables.centre_invalid, num_tokens)  # invalid: spare column
            picked = selected.new_zeros(chosen.shape[0], num_tokens + 1).scatter_(1, chosen, True)
            selected.index_copy_(0, uploaded[h_salient_units], picked)
            salient_ids = (positions + unit_rows).view(-1).index_select(0, uploaded[h_salient_slots])
            out_ids.append(salient_ids)
            out_features.append(ext_features.index_select(0, salient_ids))
        in_pool = unit_positions & ~selected[:, :num_tokens]

    with record_function("tango.merge"):
        # Phase 3: context pools: kept whole, or merged into anchors in a few padded batches.
        if total_pool:
            entries = torch.nonzero_static(in_pool.view(-1), size=total_pool).view(-1)
            pool_ids = entries + uploaded[h_pool_shift].view(-1).index_select(0, entries // num_tokens)
            whole_ids = pool_ids.index_select(0, uploaded[h_whole])
            out_ids.append(whole_ids)
            out_features.append(ext_features.index_select(0, whole_ids))
            for handles, h_members, h_slots in groups:
                tables = _tables(uploaded, handles)
                member_slots = uploaded[h_members]
                flat_members = pool_ids.index_select(0, member_slots.view(-1))  # extended token ids
                members = flat_members.view(member_slots.shape)
                rope_rows = flat_members + out_shift.index_select(0, flat_members // num_tokens)
                slots, merged = merge_into_anchors(
                    rope.index_select(0, rope_rows).view(*members.shape, dim),
                    ext_features.index_select(0, flat_members).view(*members.shape, dim),
                    tables,
                    k,
                    config.beta,
                    config.own_anchor_merge,
                )
                valid_slots = uploaded[h_slots]
                out_ids.append(members.gather(1, slots).view(-1).index_select(0, valid_slots))
                out_features.append(merged.view(-1, dim).index_select(0, valid_slots))

    ext_ids = torch.cat(out_ids)
    keep_index, order = torch.sort(ext_ids + out_shift.index_select(0, ext_ids // num_tokens))
    return keep_index, torch.cat(out_features).index_select(0, order)

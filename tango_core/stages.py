"""The stages of the Tango pre-LLM pipeline (spec section 4), as functions of tensors.

The sequence that runs them is :func:`tango_core.pipeline.run_pipeline`. Device stages take the
operations of one backend (:class:`~tango_core.ops.Ops`) and have shapes fixed by their inputs
alone, so they can be captured as CUDA graphs:

1. :func:`statistics_stage`: the features in float32 (into an :func:`extended_table`), their
   norms, saliency with sinks zeroed, the consecutive-frame comparisons that segmentation needs,
   and sums that reveal bad values;
2. :func:`rope_stage`: ST-RoPE clustering features;
3. :func:`layout_stage`: salient selection and context merging of a whole plan, from the padded
   tables of a :class:`~tango_core.layout.DeviceLayout`.

Between 1 and 3 the host reads the statistics once (the pipeline's only synchronisation) and
plans: :func:`plan_from_statistics`.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch.profiler import record_function

from .budget import BudgetPlan, build_plan
from .clustering import merge_into_anchors, select_diverse_salient
from .config import TangoConfig
from .layout import bucket_size
from .ops import Ops
from .segmentation import consecutive_frame_similarity, fastvid_segments, holitom_segments_from_counts
from .types import Points, SplitPoints

NUM_VALUE_CHECKS = 4


class Statistics(NamedTuple):
    """Outputs of :func:`statistics_stage`. values: float32 vector for the host
    (:func:`plan_from_statistics` reads its copy); norms (N, L) float32 norms of the features;
    saliency (N, L) float32 with sinks zeroed; times (N,) float32."""

    values: torch.Tensor
    norms: torch.Tensor
    saliency: torch.Tensor
    times: torch.Tensor


def extended_rows(num_frames: int, num_tokens: int) -> int:
    """Rows of the extended feature table: N frames, room for the (padded) virtual frames of at
    most N // 2 multi-frame segments, and one sentinel row."""
    return (num_frames + bucket_size(num_frames // 2)) * num_tokens + 1


def extended_table(num_frames: int, num_tokens: int, dim: int, device: torch.device) -> torch.Tensor:
    """An uninitialised (R, D) float32 table (:func:`extended_rows`): :func:`statistics_stage` writes
    the features into its first N * L rows, :func:`layout_stage` the virtual frames and sentinel."""
    return torch.empty(extended_rows(num_frames, num_tokens), dim, dtype=torch.float32, device=device)


def prepared_signals(
    saliency: torch.Tensor, times: torch.Tensor, sinks: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, L) float32 saliency with the sink positions ``sinks`` (S,) zeroed, and (N,) float32 times."""
    saliency32 = saliency.float()
    if sinks is not None:
        saliency32 = saliency32.index_fill(1, sinks, 0.0)
    return saliency32, times.float()


def value_summary(norms: torch.Tensor, saliency32: torch.Tensor, times32: torch.Tensor) -> torch.Tensor:
    """(NUM_VALUE_CHECKS,) float32 sums that :func:`raise_on_bad_values` reads."""
    # NaN and inf in an input make its sum (for the features: of the norms) non-finite.
    return torch.stack((norms.sum(), saliency32.sum(), saliency32.amin(), times32.sum()))


def check_values(features: torch.Tensor, saliency: torch.Tensor, times: torch.Tensor, sinks: Optional[torch.Tensor]) -> None:
    """The statistics stage's value checks on their own (for a backend without that stage)."""
    saliency32, times32 = prepared_signals(saliency, times, sinks)
    norms = torch.linalg.vector_norm(features.float(), dim=-1)
    raise_on_bad_values(value_summary(norms, saliency32, times32).cpu().numpy())


def statistics_stage(
    features: torch.Tensor,
    extended: torch.Tensor,
    saliency: torch.Tensor,
    times: torch.Tensor,
    global_features: Optional[torch.Tensor],
    sinks: Optional[torch.Tensor],
    config: TangoConfig,
    ops: Ops,
) -> Statistics:
    """features (N, L, D), any float dtype; extended: an :func:`extended_table` (its first N * L
    rows receive the features in float32); saliency (N, L); times (N,); global_features (N, D')
    or None; sinks (S,) int64 positions or None.
    """
    num_frames, num_tokens = saliency.shape
    features32 = extended[: num_frames * num_tokens].view(num_frames, num_tokens, -1)
    norms, token_similarity = ops.token_statistics(features, extended)
    saliency32, times32 = prepared_signals(saliency, times, sinks)
    packed = [value_summary(norms, saliency32, times32)]
    if num_frames > 1:
        threshold = config.resolved_similarity_threshold()
        holitom = config.segmenter == "holitom"
        static_runs, at_least = ops.run_statistics(token_similarity, config.static_threshold, threshold if holitom else None)
        packed.append(static_runs.flatten())
        if holitom:
            packed.append(at_least.flatten())
        else:
            summary = global_features if global_features is not None else features32.mean(dim=1)
            frame_similarity = consecutive_frame_similarity(summary)
            packed += [frame_similarity, frame_similarity < threshold]
    # Counts and run lengths (<= N * L) are exact in float32; bool parts become 0 / 1.
    return Statistics(torch.cat(packed).float(), norms, saliency32, times32)


def raise_on_bad_values(statistics: np.ndarray) -> None:
    """statistics: the host copy of :func:`statistics_stage`'s first output."""
    norm_sum, saliency_sum, saliency_min, times_sum = statistics[:NUM_VALUE_CHECKS]
    features_finite, saliency_finite, times_finite = np.isfinite([norm_sum, saliency_sum, times_sum])
    if not features_finite:
        raise ValueError("features contain NaN or infinite values; check the vision encoder's output and its dtype.")
    if not saliency_finite:
        raise ValueError("saliency contains NaN or infinite values; check the attention weights fed to Tango.")
    if not saliency_min >= 0:
        raise ValueError("saliency must be non-negative (attention weights); got negative values.")
    if not times_finite:
        raise ValueError("timestamps contain NaN or infinite values; pass frame times in seconds.")


def segments_from_statistics(
    statistics: np.ndarray, num_frames: int, num_tokens: int, config: TangoConfig
) -> Tuple[List[int], np.ndarray]:
    """Segment lengths and (N-1, L) static run lengths from the host copy of the statistics."""
    if num_frames == 1:
        return [1], np.zeros((0, num_tokens), dtype=np.int64)
    pairs = (num_frames - 1) * num_tokens
    parts = statistics[NUM_VALUE_CHECKS:]
    static_runs = parts[:pairs].reshape(num_frames - 1, num_tokens)  # float32 run lengths, exact
    rest = parts[pairs:]
    if config.segmenter == "holitom":
        at_least = rest.reshape(num_frames - 1, num_frames - 1).astype(np.int64)
        return holitom_segments_from_counts(at_least), static_runs
    cuts = config.fastvid_cuts
    return fastvid_segments(rest[: num_frames - 1], rest[num_frames - 1 :] > 0.5, cuts), static_runs


def static_positions(static_runs: np.ndarray, segment_lengths: List[int], num_tokens: int) -> np.ndarray:
    """(G, L) bool: position static across every consecutive pair of the segment (n >= 2).

    static_runs: (N - 1, L) run lengths of static pairs (any numeric dtype holding integers)."""
    static = np.zeros((len(segment_lengths), num_tokens), dtype=bool)
    start = 0
    multi, starts, needed = [], [], []
    for segment, length in enumerate(segment_lengths):
        if length >= 2:
            multi.append(segment)
            starts.append(start)
            needed.append(length - 1)
        start += length
    if multi:
        static[multi] = static_runs[starts] >= np.asarray(needed, dtype=static_runs.dtype)[:, None]
    return static


def plan_from_segments(
    static_runs: np.ndarray, segment_lengths: List[int], num_tokens: int, config: TangoConfig
) -> BudgetPlan:
    """The budget plan (spec 4.2-4.3) of a segmented clip."""
    return build_plan(static_positions(static_runs, segment_lengths, num_tokens), segment_lengths, config)


def plan_from_statistics(
    statistics: np.ndarray, num_frames: int, num_tokens: int, config: TangoConfig
) -> Tuple[List[int], Optional[BudgetPlan]]:
    """Everything the host does between the two device phases: check the values, segment, plan.

    Returns the segment lengths and the budget plan (None when ``retention_ratio == 1.0``: no
    pruning, nothing to plan).
    """
    raise_on_bad_values(statistics)
    segments, static_runs = segments_from_statistics(statistics, num_frames, num_tokens, config)
    if config.retention_ratio >= 1.0:
        return segments, None
    return segments, plan_from_segments(static_runs, segments, num_tokens, config)


def rope_stage(
    extended: torch.Tensor,
    statistics: Statistics,
    grid: Tuple[int, int],
    sections: Tuple[int, int, int],
    config: TangoConfig,
    ops: Ops,
) -> Points:
    """ST-RoPE of the unit features, as a (N * L, D) table of points (float32, or
    :class:`~tango_core.types.SplitPoints` for tensor-core distances, as ``ops`` chooses).

    extended: the :func:`extended_table` after :func:`statistics_stage`, and its ``statistics``.
    """
    return ops.rope_points(extended, statistics.norms, statistics.times, grid, sections, config.base_time, config.base_space)


def _gather_points(table: Points, rows: torch.Tensor, shape: Tuple[int, int]) -> Points:
    """Rows (flat) of a point table, viewed as ``shape`` problems."""
    if isinstance(table, SplitPoints):
        return table.index_select(rows).view(*shape)
    return table.index_select(0, rows).view(*shape, table.shape[-1])


def layout_stage(
    tables: Dict[str, torch.Tensor],
    dims: Dict[str, int],
    extended: torch.Tensor,
    saliency: torch.Tensor,
    rope: Points,
    config: TangoConfig,
    ops: Ops,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Salient selection and context merging of one plan (spec 4.4-4.6).

    tables: the device copies of a :class:`~tango_core.layout.DeviceLayout`'s arrays; dims: its
    dims. extended: the (R, D) float32 :func:`extended_table` after the statistics (written here: virtual
    frames and the sentinel row); saliency (N, L) float32; rope: the (N * L, D) point table.
    Returns ``(keep, kept)``: (T,) int64 output token ids, ascending, and (T, D) float32 features,
    T >= K; the first ``layout.num_kept`` entries are the result, the rest are padding.
    """
    num_tokens = saliency.shape[1]
    out_shift = tables["out_shift"]  # (E + 1,)
    sentinel = (out_shift.shape[0] - 1) * num_tokens
    with record_function("tango.virtual_frames"):
        ext_saliency = _virtual_frames(tables["averaging"], extended, saliency, sentinel)
    out_ids: List[torch.Tensor] = []
    out_features: List[torch.Tensor] = []
    unit_positions = tables["unit_positions"]  # (U + 1, L)
    selected = torch.zeros(unit_positions.shape[0], num_tokens + 1, dtype=torch.bool, device=extended.device)
    if "salient.indices" in tables:
        with record_function("tango.salient"):
            salient_ids = _select_salient(tables, dims, ext_saliency, rope, selected, sentinel, config, ops)
            out_ids.append(salient_ids)
            out_features.append(extended.index_select(0, salient_ids))
    if dims["pool_slots"]:
        with record_function("tango.merge"):
            in_pool = unit_positions & ~selected[:, :num_tokens]
            spare = (unit_positions.shape[0] - 1) * num_tokens  # the spare unit row: sentinel ids
            entries = torch.nonzero_static(in_pool.view(-1), size=dims["pool_slots"], fill_value=spare).view(-1)
            pool_ids = entries + tables["pool_shift"].index_select(0, entries // num_tokens)
            if "whole" in tables:
                out_ids.append(pool_ids.index_select(0, tables["whole"]))
                out_features.append(extended.index_select(0, out_ids[-1]))
            for group in range(dims["merge_groups"]):
                ids, merged = _merge_pools(tables, dims, f"merge{group}", pool_ids, extended, rope, sentinel, config, ops)
                out_ids.append(ids)
                out_features.append(merged)
    with record_function("tango.assemble"):
        ext_ids = torch.cat(out_ids)
        out_ids_flat = ext_ids + out_shift.index_select(0, ext_ids // num_tokens)
        keep, order = ops.sort_ids(out_ids_flat)
        return keep, torch.cat(out_features).index_select(0, order)


def _virtual_frames(averaging: torch.Tensor, extended: torch.Tensor, saliency: torch.Tensor, sentinel: int) -> torch.Tensor:
    """Write the segment means (V, N) ``averaging`` of the features after the real frames of
    ``extended`` and zero its sentinel row. Returns the (N + V, L) saliency of all frames."""
    num_frames, num_tokens = saliency.shape
    real_rows = num_frames * num_tokens
    if averaging.shape[0]:
        virtual = extended[real_rows:sentinel].view(averaging.shape[0], -1)
        torch.mm(averaging, extended[:real_rows].view(num_frames, -1), out=virtual)
    extended[sentinel : sentinel + 1].zero_()
    return torch.cat((saliency, averaging @ saliency))


def _select_salient(
    tables: Dict[str, torch.Tensor],
    dims: Dict[str, int],
    ext_saliency: torch.Tensor,
    rope: Points,
    selected: torch.Tensor,
    sentinel: int,
    config: TangoConfig,
    ops: Ops,
) -> torch.Tensor:
    """Diverse salient picks of every unit with k' > 0 (spec 4.4), marked in ``selected``
    (U + 1, L + 1). Returns (S * A,) extended token ids, the sentinel in unused slots."""
    num_tokens = ext_saliency.shape[1]
    indices = tables["salient.indices"]  # (S, 6): unit, frame, first token id, first ST-RoPE row, counts
    problems, _ = ops.problem_tables(indices[:, 4:6], dims["salient.width"], dims["salient.most"], config.num_neighbors)
    ranked_saliency = ext_saliency.index_select(0, indices[:, 1])
    excluded = tables["unit_positions"].index_select(0, indices[:, 0]).logical_not_()  # padding: spare unit
    ranked_saliency.masked_fill_(excluded, float("-inf"))
    ranked = ops.top_ranked(ranked_saliency, problems.valid.shape[1])  # candidates, most salient first
    candidates = _gather_points(rope, (ranked + indices[:, 3:4]).view(-1), ranked.shape)
    positions = ranked.gather(1, select_diverse_salient(candidates, problems, config.num_neighbors, ops))  # (S, A)
    chosen = positions.masked_fill(problems.centre_invalid, num_tokens)  # invalid: spare column
    picked = selected.new_zeros(chosen.shape[0], num_tokens + 1).scatter_(1, chosen, True)
    selected.index_copy_(0, indices[:, 0], picked)
    salient_ids = (positions + indices[:, 2:3]).masked_fill_(problems.centre_invalid, sentinel)
    return salient_ids.view(-1)


def _merge_pools(
    tables: Dict[str, torch.Tensor],
    dims: Dict[str, int],
    prefix: str,
    pool_ids: torch.Tensor,
    extended: torch.Tensor,
    rope: Points,
    sentinel: int,
    config: TangoConfig,
    ops: Ops,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Anchor merging (spec 4.5) of one padded group of pools. Returns (P * A,) extended token
    ids (the sentinel in unused slots) and their (P * A, D) merged float32 features."""
    num_tokens = tables["unit_positions"].shape[1]
    problems, member_slots = ops.problem_tables(
        tables[f"{prefix}.counts"], dims[f"{prefix}.width"], dims[f"{prefix}.most"], config.num_neighbors
    )
    flat_members = pool_ids.index_select(0, member_slots.view(-1))  # extended token ids
    out_shift = tables["out_shift"]
    rope_rows = flat_members + out_shift.index_select(0, flat_members // num_tokens)
    slots, merged = merge_into_anchors(
        _gather_points(rope, rope_rows, member_slots.shape),
        extended,
        flat_members.view(member_slots.shape),
        problems,
        config.num_neighbors,
        config.beta,
        config.own_anchor_merge,
        ops,
    )
    anchor_ids = flat_members.view(member_slots.shape).gather(1, slots)
    return anchor_ids.masked_fill_(problems.centre_invalid, sentinel).view(-1), merged.view(-1, extended.shape[-1])

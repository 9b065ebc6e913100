"""Tango's pre-LLM pruning written to be read, the independent oracle of ``tango_prune``: spec
sections 3, 4 and 8 in plain float32 PyTorch. The clip is segmented and its budgets planned as
*pools* (units on which salient selection runs, then context merging of what they leave), and
each pool is compressed on its own. ``exact_budget`` re-plans those counts the way
``tango_core.budget`` does (same keep set), without using it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import TangoConfig, resolve_rope_sections


@dataclass
class ReferenceResult:
    """What :func:`reference_prune` returns (the fields of ``tango_prune``'s result)."""

    keep_index: torch.Tensor  # (K,) int64 sorted flat indices into N*L
    kept_features: torch.Tensor  # (K, D) in the input dtype
    segments: List[int]  # frames per temporal segment


@dataclass
class Unit:
    """Tokens of one (pseudo-)frame: flat (T,) output indices, feats (T, D) float32, sal (T,),
    rope (T, D); ``candidates`` m and ``picks`` k' of its salient selection (spec 4.4)."""

    flat: torch.Tensor
    feats: torch.Tensor
    sal: torch.Tensor
    rope: torch.Tensor
    candidates: int = 0
    picks: int = 0


@dataclass
class Pool:
    """Units whose unpicked tokens are merged together into ``anchors`` context tokens (4.2, 4.3)."""

    units: List[Unit]
    anchors: int


def zero_sinks(saliency: torch.Tensor, sinks: Tuple[int, ...]) -> torch.Tensor:
    """Spec 4.0: (N, L) float32 saliency with the sink positions zeroed."""
    saliency = saliency.clone()
    saliency[:, list(sinks)] = 0.0
    return saliency


def st_rope(feats: torch.Tensor, grid: Tuple[int, int], times: torch.Tensor, config: TangoConfig) -> torch.Tensor:
    """Spec 3: (N, L, D) float32 features, (N,) times -> (N, L, D) ST-RoPE clustering features."""
    num_frames, num_tokens, dim = feats.shape
    position = torch.arange(num_tokens, device=feats.device).expand(num_frames, -1)
    positions = (times.view(-1, 1).expand(-1, num_tokens), (position // grid[1]).float(), (position % grid[1]).float())
    bases = (config.base_time, config.base_space, config.base_space)
    groups = F.normalize(feats, dim=-1).split(resolve_rope_sections(dim, config.rope_sections), dim=-1)
    out = []
    for x, p, base in zip(groups, positions, bases):
        size = x.shape[-1]
        if size == 0:
            continue
        inv_freq = 1.0 / (base ** (torch.arange(0, size, 2, device=feats.device).float() / size))
        angles = (p.unsqueeze(-1) * inv_freq).repeat(1, 1, 2)  # [f, f]
        x1, x2 = x[..., : size // 2], x[..., size // 2 :]
        # x * cos + rotate_half(x) * sin, the sum rounded once (as tango_core.rope's addcmul does)
        out.append(torch.addcmul(x * angles.cos(), torch.cat((-x2, x1), dim=-1), angles.sin()))
    return torch.cat(out, dim=-1)


def consecutive_cosine(x: torch.Tensor) -> torch.Tensor:
    """Spec 4.1: cos(x[n], x[n+1]) along the last axis in float32, (N, ..., D) -> (N-1, ...)."""
    unit = F.normalize(x.float(), dim=-1)
    return (unit[:-1] * unit[1:]).sum(-1)


def holitom_segments(token_sim: torch.Tensor, tau: float) -> List[int]:
    """Spec 4.1 holitom: (N-1, L) token similarities -> segment lengths, by the dynamic programme."""
    above = token_sim > tau
    num_frames = above.shape[0] + 1
    best = [0] * (num_frames + 1)  # best[i + 1] = best(i), best[0] = best(-1) = 0
    start = list(range(num_frames))
    for i in range(1, num_frames):
        best[i + 1] = best[i]  # frame i alone
        still = torch.ones_like(above[0])
        for s in range(i - 1, max(-1, i - 1024), -1):  # windows s..i of 2, 3, ... frames (at most 1024)
            still &= above[s]
            total = best[s] + (i - s) * int(still.sum())
            if total > best[i + 1]:  # strictly greater: ties keep the shorter window
                best[i + 1], start[i] = total, s
    lengths, end = [], num_frames - 1
    while end >= 0:
        lengths.append(end - start[end] + 1)
        end = start[end] - 1
    return lengths[::-1]


def fastvid_segments(frame_sim: torch.Tensor, tau: float, num_cuts: int) -> List[int]:
    """Spec 4.1 fastvid: (N-1,) frame similarities -> segment lengths."""
    cut = frame_sim < tau
    forced = min(num_cuts - 1, frame_sim.shape[0])
    cut[torch.sort(frame_sim, stable=True).indices[:forced]] = True  # least similar, ties: lower n
    edges = [0] + (torch.nonzero(cut).view(-1) + 1).tolist() + [frame_sim.shape[0] + 1]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def salient_split(budget: int, size: int, config: TangoConfig) -> Tuple[int, int, int]:
    """Spec 4.2 / 4.3: salient count k, candidates m and picks k' of a (pseudo-)frame of ``size`` tokens."""
    k = int(budget * (1 - config.context_ratio))
    m = min(int(config.alpha * k), size) if k > 0 else 0
    return k, m, min(k, m)


def frame_compression(unit: Unit, ratio: float, config: TangoConfig) -> Pool:
    """Spec 4.3: the pool of one (pseudo-)frame of L' tokens compressed at ratio q."""
    size = unit.flat.shape[0]
    budget = max(1, math.ceil(size * ratio))
    k, unit.candidates, unit.picks = salient_split(budget, size, config)
    return Pool([unit], budget - k)


def split_segment(frames: List[Unit], static: torch.Tensor, ratio: float, config: TangoConfig) -> List[Pool]:
    """Spec 4.2: pools of one segment (n frames of L tokens; static: (L,) bool positions)."""
    n, num_tokens = len(frames), static.shape[0]
    if n == 1:
        return [frame_compression(frames[0], ratio, config)]
    num_static = int(static.sum())
    num_dynamic = num_tokens - num_static
    raised = min(ratio / ((n * num_tokens - (n - 1) * num_static) / (n * num_tokens)), 1.0)  # the reference's order
    pools = []
    if num_static > 0:  # one pseudo-frame at the first frame: mean features and saliency, first frame's ST-RoPE
        first = frames[0]
        pseudo = Unit(first.flat[static], torch.stack([f.feats[static] for f in frames]).mean(0),
                      torch.stack([f.sal[static] for f in frames]).mean(0), first.rope[static])
        pools.append(frame_compression(pseudo, raised, config))
    if num_dynamic > 0:
        budget = math.ceil(num_dynamic * raised)
        k, m, picks = salient_split(budget, num_dynamic, config)
        units = [Unit(f.flat[~static], f.feats[~static], f.sal[~static], f.rope[~static], m, picks) for f in frames]
        pools.append(Pool(units, (budget - k) * n))
    return pools


def unstatic_for_exact_budget(statics: List[torch.Tensor], lengths: List[int], target: int) -> None:
    """Spec 8 opt-in (as tango_core.budget does): if the static collapse leaves fewer than ``target``
    distinct tokens, drop the static positions of the segments that gain most (ties: earlier
    segment) until there are enough. statics: (L,) bool per segment, edited in place."""
    counts = [int(s.sum()) for s in statics]
    capacity = sum(c + n * (s.shape[0] - c) for s, c, n in zip(statics, counts, lengths))  # distinct tokens
    gains = [c * (n - 1) for c, n in zip(counts, lengths)]
    for g in sorted(range(len(gains)), key=lambda g: -gains[g]):
        if capacity >= target:
            break
        capacity += gains[g]
        statics[g] = torch.zeros_like(statics[g])


def share(amount: int, weights: List[int]) -> List[int]:
    """Spec 8 opt-in: split ``amount`` <= sum(weights) in proportion to ``weights``, never above one;
    leftovers to the largest remainders (ties: lower index)."""
    total = sum(weights)
    if amount <= 0 or total == 0:
        return [0] * len(weights)
    exact = [w * amount / total for w in weights]
    shares = [min(math.floor(e), w) for e, w in zip(exact, weights)]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    for i in [i for i in order if shares[i] < weights[i]][: amount - sum(shares)]:
        shares[i] += 1
    return shares


def spend_exactly(pools: List[Pool], target: int) -> None:
    """Spec 8 opt-in (as tango_core.budget does): give missing tokens to the context pools in proportion
    to their room, or take surplus tokens from the context anchors, then from the salient picks."""
    units = [u for pool in pools for u in pool.units]
    sizes = [sum(u.flat.shape[0] - u.picks for u in pool.units) for pool in pools]
    kept = [min(pool.anchors, size) for pool, size in zip(pools, sizes)]
    missing = target - sum(kept) - sum(u.picks for u in units)
    if missing > 0:
        kept = [k + s for k, s in zip(kept, share(missing, [size - k for size, k in zip(sizes, kept)]))]
    elif missing < 0:
        from_context = min(-missing, sum(kept))
        kept = [k - s for k, s in zip(kept, share(from_context, kept))]
        for unit, cut in zip(units, share(-missing - from_context, [u.picks for u in units])):
            unit.picks -= cut  # the candidates m stay; the unpicked tokens join the pool
    for pool, k in zip(pools, kept):
        pool.anchors = k


def dpc_knn(points: torch.Tensor, count: int, num_neighbors: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec 4.6: (M, D) float32 points -> (count,) centres, highest score first (ties: lower index),
    and the (M, M) Euclidean distances."""
    dist = torch.cdist(points, points)
    nearest = dist.topk(min(num_neighbors + 1, points.shape[0]), largest=False).values[:, 1:]  # self dropped
    rho = torch.exp(-(nearest**2).mean(1))
    denser = rho.view(1, -1) > rho.view(-1, 1)  # [i, j]: rho_j > rho_i
    delta = torch.where(denser, dist, dist.max()).amin(1)  # none denser: the largest distance
    return torch.sort(rho * delta, descending=True, stable=True).indices[:count], dist


def select_salient(unit: Unit, num_neighbors: int) -> torch.Tensor:
    """Spec 4.4: indices into the unit of its k' diverse salient picks among m top-saliency candidates."""
    m, k = unit.candidates, unit.picks
    candidates = torch.sort(unit.sal, descending=True, stable=True).indices[:m]  # ties: ascending position
    if m <= k or m <= 1:
        return candidates
    centres, dist = dpc_knn(unit.rope[candidates], k, num_neighbors)
    nearest = dist[:, centres].argmin(1)  # first centre wins a tie
    picks = []
    for c in range(k):  # candidates are in saliency order: a cluster's first member is its best
        members = torch.nonzero(nearest == c).view(-1)
        picks.append(candidates[members[0]] if members.numel() else candidates[centres[c]])
    return torch.stack(picks)


def merge_context(feats: torch.Tensor, rope: torch.Tensor, anchors: int, config: TangoConfig) -> Tuple[torch.Tensor, ...]:
    """Spec 4.5: pool (P, D) features and ST-RoPE in ascending flat order, ``anchors`` < P ->
    (anchors,) pool indices where features are written and the (anchors, D) features written there."""
    by_score, dist = dpc_knn(rope, anchors, config.num_neighbors)
    by_position = torch.sort(by_score).values
    nearest = dist[:, by_position].argmin(1)  # ties: the anchor of lower flat index
    merged = []
    for i, anchor in enumerate(by_position.tolist()):
        members = nearest == i
        count = int(members.sum())  # 0 only if an exact duplicate of a lower anchor took it all
        w, mean = (max(1.0 / count, config.beta), feats[members].mean(0)) if count else (1.0, feats[anchor])
        merged.append(w * feats[anchor] + (1 - w) * mean)
    # The reference writes the i-th anchor's (pool order) merge at the i-th anchor in score order.
    return (by_position if config.own_anchor_merge else by_score), torch.stack(merged)


def compress_pool(pool: Pool, config: TangoConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec 4.2 / 4.3: salient picks of each unit, then context of the rest of the whole pool ->
    kept (K,) flat indices and (K, D) float32 features."""
    kept, rest = [], []
    for unit in pool.units:
        picked = select_salient(unit, config.num_neighbors) if unit.picks > 0 else unit.flat[:0]
        left = torch.ones_like(unit.flat, dtype=torch.bool).index_fill_(0, picked, False)
        kept.append((unit.flat[picked], unit.feats[picked]))
        rest.append((unit.flat[left], unit.feats[left], unit.rope[left]))
    rest_flat, rest_feats, rest_rope = (torch.cat(parts) for parts in zip(*rest))  # ascending flat order
    if pool.anchors >= rest_flat.shape[0]:  # the whole pool, unchanged
        kept.append((rest_flat, rest_feats))
    elif pool.anchors > 0:
        where, merged = merge_context(rest_feats, rest_rope, pool.anchors, config)
        kept.append((rest_flat[where], merged))
    flats, feats = zip(*kept)
    return torch.cat(flats), torch.cat(feats)


def reference_prune(features: torch.Tensor, saliency: torch.Tensor, grid: Tuple[int, int],
                    timestamps: Optional[torch.Tensor] = None, config: TangoConfig = TangoConfig(),
                    global_features: Optional[torch.Tensor] = None) -> ReferenceResult:
    """Tango on one video (spec 4), inputs already validated. features (N, L, D), saliency (N, L),
    grid (H, W), timestamps (N,) seconds (None: 0, 1, ...), global_features (N, D') for fastvid.
    Computes in float32; kept features come back in the input dtype. r = 1.0 keeps every token."""
    num_frames, num_tokens, dim = features.shape
    feats = features.float()
    sal = zero_sinks(saliency.float(), config.sink_positions)
    device = features.device
    times = torch.arange(num_frames, dtype=torch.float32, device=device) if timestamps is None else timestamps.float()
    tau = config.resolved_similarity_threshold()
    token_sim = consecutive_cosine(feats)  # (N-1, L)
    if num_frames == 1:
        segments = [1]
    elif config.segmenter == "holitom":
        segments = holitom_segments(token_sim, tau)
    else:
        summary = global_features if global_features is not None else feats.mean(1)
        segments = fastvid_segments(consecutive_cosine(summary), tau, config.fastvid_cuts)
    if config.retention_ratio >= 1.0:
        return ReferenceResult(torch.arange(num_frames * num_tokens, device=device), features.reshape(-1, dim), segments)

    rope = st_rope(feats, grid, times, config)
    flat = torch.arange(num_frames * num_tokens, device=device).view(num_frames, num_tokens)
    starts = [sum(segments[:g]) for g in range(len(segments))]
    # Spec 4.2: a position is static when every consecutive pair of the segment is above the threshold.
    statics = [(token_sim[s : s + n - 1] > config.static_threshold).all(0) & (n > 1) for s, n in zip(starts, segments)]
    target = max(1, round(config.retention_ratio * num_frames * num_tokens))
    if config.exact_budget:
        unstatic_for_exact_budget(statics, segments, target)
    pools: List[Pool] = []
    for s, n, static in zip(starts, segments, statics):
        frames = [Unit(flat[f], feats[f], sal[f], rope[f]) for f in range(s, s + n)]
        pools += split_segment(frames, static, config.retention_ratio, config)
    if config.exact_budget:
        spend_exactly(pools, target)
    flats, kept = zip(*[compress_pool(pool, config) for pool in pools])
    keep, order = torch.sort(torch.cat(flats))
    return ReferenceResult(keep, torch.cat(kept)[order].to(features.dtype), segments)

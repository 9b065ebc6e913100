"""Intra-LLM merge-and-prune step of LLaVA-Video (spec section 6), as a function on tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


# LLaVA-Video-7B prunes inside its 28-layer LLM at layer 18 (spec section 6).
REFERENCE_PRUNE_LAYER, REFERENCE_NUM_LAYERS = 18, 28


@dataclass(frozen=True)
class IntraLLMConfig:
    """LLaVA-Video's intra-LLM stage (spec section 6), the one place its knobs live.

    layer: K, the first layer on the shortened sequence (None: 18 of 28, scaled to the model's
    depth). keep_ratio: p, the share of visual tokens kept at K. merge_weight: weight of the pooled
    feature in the merge. reference_bidirectional_bug: run layer K-1 without a causal mask in
    prefill, as the reference does (opt-in; the default is causal).
    """

    layer: Optional[int] = None
    keep_ratio: float = 0.5
    merge_weight: float = 0.4
    reference_bidirectional_bug: bool = False

    def __post_init__(self) -> None:
        if self.layer is not None and (isinstance(self.layer, bool) or int(self.layer) < 1):
            raise ValueError(f"intra-LLM layer K must be a positive layer index, got {self.layer!r}.")
        if not 0.0 < float(self.keep_ratio) <= 1.0:
            raise ValueError(f"intra-LLM keep_ratio must be in (0, 1], got {self.keep_ratio!r}.")
        if not 0.0 <= float(self.merge_weight) <= 1.0:
            raise ValueError(f"intra-LLM merge_weight must be in [0, 1], got {self.merge_weight!r}.")

    def resolved_layer(self, num_layers: int) -> int:
        """K for a model of ``num_layers`` layers: explicit, else 18/28 of the depth rounded, in [1, L-1]."""
        if self.layer is not None:
            if not 1 <= int(self.layer) < num_layers:
                raise ValueError(f"intra-LLM layer K must be in [1, {num_layers - 1}], got {self.layer}.")
            return int(self.layer)
        scaled = int(round(num_layers * REFERENCE_PRUNE_LAYER / REFERENCE_NUM_LAYERS))
        return min(max(scaled, 1), num_layers - 1)

    def pre_llm_ratio(self, average_ratio: float, num_layers: int = REFERENCE_NUM_LAYERS) -> float:
        """The pre-LLM ratio whose token count, averaged over the layers, is ``average_ratio``:
        ``min(L r / (K + (L - K) p), 1)``."""
        layer = self.resolved_layer(num_layers)
        return min(num_layers * average_ratio / (layer + (num_layers - layer) * float(self.keep_ratio)), 1.0)


@dataclass
class IntraLLMResult:
    """keep_positions: (S',) sorted positions kept out of S. hidden: (S', D) their hidden states."""

    keep_positions: torch.Tensor
    hidden: torch.Tensor


def num_kept_visual(num_visual: int, keep_ratio: float) -> int:
    """``round(V * p)`` with Python's round (half to even), as the reference does."""
    return int(round(num_visual * keep_ratio))


def merge_and_prune_visual(
    hidden: torch.Tensor,
    visual_attention: torch.Tensor,
    visual_start: int,
    keep_ratio: float = 0.5,
    merge_weight: float = 0.4,
) -> IntraLLMResult:
    """Keep the most attended visual tokens and merge the others into them.

    hidden: (S, D) hidden states entering layer K (the residual stream).
    visual_attention: (V,) attention of the last prompt token over the visual span
        ``[visual_start, visual_start + V)`` in layer K-1 (averaged over heads).
    Keeps the top ``round(V * keep_ratio)`` visual tokens (ties: lower position first) and every
    text token. Each dropped visual token is assigned to the kept visual token of highest cosine
    similarity; a kept token with assigned sum ``A`` and count ``n`` becomes
    ``(1 - w) * h + w * (h + A) / (1 + n)`` with ``w = merge_weight``. Math in float32.
    """
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (S, D), got shape {tuple(hidden.shape)}.")
    if visual_attention.dim() != 1:
        raise ValueError(f"visual_attention must be (V,), got shape {tuple(visual_attention.shape)}.")
    seq_len = hidden.shape[0]
    num_visual = visual_attention.shape[0]
    if not (0 <= visual_start and visual_start + num_visual <= seq_len):
        raise ValueError(
            f"visual span [{visual_start}, {visual_start + num_visual}) does not fit a sequence of {seq_len} tokens."
        )
    if not (0.0 < keep_ratio <= 1.0):
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}.")
    device = hidden.device
    num_keep = max(num_kept_visual(num_visual, keep_ratio), 1 if num_visual > 0 else 0)
    if num_keep >= num_visual:
        return IntraLLMResult(torch.arange(seq_len, device=device), hidden)

    # Stable descending sort: equal attention keeps ascending position order.
    order = torch.sort(visual_attention.float(), descending=True, stable=True).indices
    kept_local = torch.sort(order[:num_keep]).values
    dropped_local = order[num_keep:]

    visual = hidden[visual_start : visual_start + num_visual].float()
    kept_feats = visual[kept_local]
    dropped_feats = visual[dropped_local]
    similarity = F.normalize(dropped_feats, dim=-1) @ F.normalize(kept_feats, dim=-1).T  # (V - k, k)
    target = similarity.argmax(dim=-1)
    # One-hot products instead of index_add_: deterministic on CUDA.
    assignment = F.one_hot(target, num_keep).to(kept_feats.dtype).T  # (k, V - k)
    assigned_sum = assignment @ dropped_feats
    assigned_count = assignment.sum(dim=-1, keepdim=True)
    pooled = (kept_feats + assigned_sum) / (1.0 + assigned_count)
    merged = ((1.0 - merge_weight) * kept_feats + merge_weight * pooled).to(hidden.dtype)

    keep_positions = torch.cat(
        [
            torch.arange(visual_start, device=device),
            kept_local + visual_start,
            torch.arange(visual_start + num_visual, seq_len, device=device),
        ]
    )
    new_hidden = torch.cat([hidden[:visual_start], merged, hidden[visual_start + num_visual :]], dim=0)
    return IntraLLMResult(keep_positions, new_hidden)

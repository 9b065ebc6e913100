"""Run a transformers ``Qwen2Model`` with LLaVA-Video's intra-LLM pruning stage (spec section 6).

Layers ``0 .. K-1`` see the whole prompt (S tokens). From layer ``K - 1`` the runner takes the
post-softmax attention row of the last prompt token (fp32, mean over heads), keeps the top
``round(V * keep_ratio)`` tokens of the visual span, merges the dropped ones into their most
similar kept token (:func:`tango_core.intra_llm.merge_and_prune_visual`) and runs layers
``K .. L-1`` on the S' kept tokens, each with its original position id. Decoding continues at
position ``last_position + 1 + t`` in every layer; each layer attends to its own cache (S entries
below K, S' from K on).

The transformers modules of the model are reused as they are: decoder layers, rotary embedding,
final norm, ``DynamicCache`` (or a ``StaticCache`` handed in: its layers keep their own write
positions, so the two groups of layers simply hold different lengths) and the mask helpers of
``transformers.masking_utils`` (so sdpa, eager, flash and flex attention all get the mask format
they expect). Batch size 1 only. For :class:`~tango_core.models.static_decoding.StaticDecoding`
to replay as CUDA graphs: :meth:`IntraLLMQwen2Runner.low_layers` and
:meth:`~IntraLLMQwen2Runner.high_layers` are the two halves of the prefill as prefill bodies (a
padded prompt's padding gets no weight in the ranking row), joined by
:meth:`~IntraLLMQwen2Runner.prefill_static`; :meth:`~IntraLLMQwen2Runner.static_step` is a
decoding step whose position comes in a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from ..intra_llm import merge_and_prune_visual

__all__ = ["IntraLLMCache", "IntraLLMQwen2Runner"]


@dataclass
class IntraLLMCache:
    """Key/value cache of a pruned prefill, grown in place by each decode step.

    key_values: one cache for all layers (``DynamicCache``, or the ``StaticCache`` given to the
        prefill); layers ``< prune_layer`` hold ``full_length + t`` entries, layers
        ``>= prune_layer`` hold ``kept_length + t``.
    keep_positions: (S',) sorted indices into the prompt of the tokens kept from layer K on.
    next_position: position id the next decoded token gets (S + t with default positions).
    """

    key_values: DynamicCache
    prune_layer: int
    full_length: int
    keep_positions: Tensor
    visual_start: int
    visual_end: int
    next_position: int

    @property
    def kept_length(self) -> int:
        """S': prompt tokens cached by the layers from ``prune_layer`` on."""
        return int(self.keep_positions.numel())

    @property
    def num_visual_kept(self) -> int:
        """Visual tokens that layers ``prune_layer ..`` see."""
        return self.kept_length - (self.full_length - (self.visual_end - self.visual_start))

    @property
    def num_generated(self) -> int:
        """Tokens decoded so far on top of the prompt."""
        return self.key_values.get_seq_length(0) - self.full_length


def _checked_span(visual_start: int, visual_end: int, seq_len: int) -> Tuple[int, int]:
    """The visual span ``[start, end)`` as ints, checked to end before the prompt's last token."""
    visual_start, visual_end = int(visual_start), int(visual_end)
    if not 0 <= visual_start <= visual_end <= seq_len - 1:
        raise ValueError(
            f"visual span [{visual_start}, {visual_end}) must satisfy 0 <= start <= end <= S - 1 = {seq_len - 1} "
            "(the last prompt token must be text)."
        )
    return visual_start, visual_end


class IntraLLMQwen2Runner:
    """Prefill and decoding steps of a ``Qwen2Model`` with FastV-style pruning at layer K (decode
    greedily with :func:`tango_core.models.base.greedy_decode`).

    language_model: a transformers ``Qwen2Model`` (e.g. ``LlavaOnevisionForConditionalGeneration
        .model.language_model``); its weights are used, never changed.
    prune_layer: K, the first layer that sees the shortened sequence (1 <= K < num layers).
    keep_ratio: fraction p of the visual span kept, in (0, 1].
    merge_weight: weight of the pooled feature in the merge, in [0, 1].
    reference_bidirectional_bug: run layer K-1 without a causal mask in prefill, as the
        reference does (the last row, hence the kept set, is unaffected; everything else is).
    """

    def __init__(
        self,
        language_model: nn.Module,
        prune_layer: int = 18,
        keep_ratio: float = 0.5,
        merge_weight: float = 0.4,
        reference_bidirectional_bug: bool = False,
    ) -> None:
        for name in ("layers", "norm", "rotary_emb", "config"):
            if not hasattr(language_model, name):
                raise TypeError(
                    f"language_model must be a transformers Qwen2Model (missing attribute {name!r}); "
                    "for a LLaVA model pass model.model.language_model."
                )
        config = language_model.config
        num_layers = len(language_model.layers)
        if isinstance(prune_layer, bool) or not isinstance(prune_layer, int) or not 1 <= prune_layer < num_layers:
            raise ValueError(
                f"prune_layer must be an int in [1, {num_layers - 1}] for a model of {num_layers} layers, "
                f"got {prune_layer!r}."
            )
        if not 0.0 < float(keep_ratio) <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}.")
        if not 0.0 <= float(merge_weight) <= 1.0:
            raise ValueError(f"merge_weight must be in [0, 1], got {merge_weight!r}.")
        layer_types = getattr(config, "layer_types", None) or ["full_attention"] * num_layers
        if any(t != "full_attention" for t in layer_types):
            raise ValueError("IntraLLMQwen2Runner supports full-attention layers only (no sliding window).")
        self.model = language_model
        self.config = config
        self.num_layers = num_layers
        self.prune_layer = prune_layer
        self.keep_ratio = float(keep_ratio)
        self.merge_weight = float(merge_weight)
        self.reference_bidirectional_bug = bool(reference_bidirectional_bug)

    # ------------------------------------------------------------------ helpers

    def _run_layers(
        self,
        hidden: Tensor,
        layer_range: range,
        mask: Optional[Tensor],
        position_embeddings: Tuple[Tensor, Tensor],
        cache: DynamicCache,
    ) -> Tensor:
        """Run decoder layers ``layer_range`` on hidden (1, q, D) with one mask; returns (1, q, D)."""
        for i in layer_range:
            hidden = self.model.layers[i](
                hidden,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                past_key_values=cache,
                use_cache=True,
            )
        return hidden

    def _causal_mask(self, hidden: Tensor, cache: DynamicCache, position_ids: Tensor, layer_idx: int):
        """Causal mask (implementation-specific format, or None) of hidden (1, q, D) for cache layer ``layer_idx``."""
        return create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=None,
            past_key_values=cache,
            position_ids=position_ids,
            layer_idx=layer_idx,
        )

    def _last_row_attention(
        self, layer: nn.Module, hidden_in: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, last: Optional[Tensor] = None
    ) -> Tensor:
        """Post-softmax attention (S,) fp32 of query ``last`` of ``layer``, averaged over heads.

        hidden_in: (1, S, D) input of the layer. cos, sin: (1, S, hd). keys: (1, kv_heads, S, hd),
        the layer's rotated keys (from its cache). last: (1,) index of the query (default S - 1);
        keys after it (a padded prompt's padding) get no weight. Only one query row is formed.
        """
        attn = layer.self_attn
        head_dim = attn.head_dim
        if last is None:
            row, row_cos, row_sin = hidden_in[:, -1:], cos[:, -1:], sin[:, -1:]
        else:
            row, row_cos, row_sin = (t.index_select(1, last) for t in (hidden_in, cos, sin))
        query = attn.q_proj(layer.input_layernorm(row))  # (1, 1, H * hd)
        query = query.view(1, 1, -1, head_dim).transpose(1, 2)  # (1, H, 1, hd)
        query, _ = apply_rotary_pos_emb(query, query, row_cos, row_sin)
        num_kv = keys.shape[1]
        groups = query.shape[1] // num_kv
        # Query head h uses key head h // groups (what repeat_kv does), without repeating keys.
        q = query.reshape(num_kv, groups, head_dim).float()
        k = keys[0].float()  # (kv_heads, S, hd)
        scores = torch.matmul(q, k.transpose(1, 2)) * attn.scaling  # (kv_heads, groups, S)
        if last is not None:
            padding = torch.arange(scores.shape[-1], device=scores.device) > last
            scores = scores.masked_fill(padding, float("-inf"))
        return torch.softmax(scores, dim=-1).mean(dim=(0, 1))

    def low_layers(self, model: Optional[nn.Module], embeds: Tensor, positions: Tensor, slots: Optional[Tensor],
                   last: Optional[Tensor], key_values: Cache) -> Tuple[Tensor, Tensor]:
        """Layers ``0 .. K-1`` on a prompt (1, S, D), padded at its end or not, into a static cache:
        (hidden (1, S, D) out of layer K-1, attention (S,) fp32 of the prompt's last real token
        ``last`` (1,; None: the last token) in layer K-1, zero on the padding). A
        :class:`~tango_core.models.static_decoding.StaticDecoding` prefill body (``model`` unused)."""
        k_layer = self.prune_layer
        cos, sin = self.model.rotary_emb(embeds, positions)
        causal = self._causal_mask(embeds, key_values, positions, layer_idx=0)
        hidden_in = self._run_layers(embeds, range(k_layer - 1), causal, (cos, sin), key_values)
        hidden = self._run_layers(hidden_in, range(k_layer - 1, k_layer), causal, (cos, sin), key_values)
        keys = key_values.layers[k_layer - 1].keys[:, :, : embeds.shape[1]]
        return hidden, self._last_row_attention(self.model.layers[k_layer - 1], hidden_in, cos, sin, keys, last)

    def high_layers(self, model: nn.Module, hidden: Tensor, positions: Tensor, slots: Tensor, last: Tensor, key_values: Cache) -> Tensor:
        """Layers ``K .. L-1`` on the kept tokens (1, S', D) at their own positions (1, S'), padded
        at the end or not: logits (1, V) of ``model``'s head at the last real token ``last`` (1,).
        A :class:`~tango_core.models.static_decoding.StaticDecoding` prefill body."""
        k_layer = self.prune_layer
        rope = self.model.rotary_emb(hidden, positions)
        causal = self._causal_mask(hidden, key_values, positions, layer_idx=k_layer)
        hidden = self._run_layers(hidden, range(k_layer, self.num_layers), causal, rope, key_values)
        return model.lm_head(self.model.norm(hidden.index_select(1, last))[:, 0])

    def _choose_kept(self, hidden: Tensor, last_row: Tensor, visual_start: int, visual_end: int) -> Tuple[Tensor, Tensor]:
        """Layer K-1's output rows (S, D) and last attention row (S,) -> (keep positions (S',)
        int64, the kept tokens' merged hidden states (1, S', D) in the rows' dtype)."""
        result = merge_and_prune_visual(
            hidden, last_row[visual_start:visual_end], visual_start, self.keep_ratio, self.merge_weight
        )
        keep = result.keep_positions.to(device=hidden.device, dtype=torch.long)
        return keep, result.hidden.to(hidden.dtype)[None]

    # ------------------------------------------------------------------ public API

    @torch.no_grad()
    def prefill(
        self,
        inputs_embeds: Tensor,
        position_ids: Optional[Tensor],
        visual_start: int,
        visual_end: int,
        key_values: Optional[Cache] = None,
    ) -> Tuple[Tensor, IntraLLMCache]:
        """Prefill the prompt with pruning at layer K.

        inputs_embeds: (1, S, D). position_ids: (1, S) or None for 0 .. S-1.
        visual_start, visual_end: the visual span ``[visual_start, visual_end)``; it must end before
        the last token (the last token is the query whose attention ranks the visual tokens).
        key_values: an empty (or rewound) cache to fill; default a new ``DynamicCache``. A static
        cache cannot serve ``reference_bidirectional_bug`` (its mask would cover the empty slots).
        Returns the final-normed hidden states (1, S', D) of the kept tokens (last row = last prompt
        token) and the cache to decode from.
        """
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1:
            raise ValueError(f"inputs_embeds must be (1, S, D), got shape {tuple(inputs_embeds.shape)}.")
        seq_len = inputs_embeds.shape[1]
        visual_start, visual_end = _checked_span(visual_start, visual_end, seq_len)
        device = inputs_embeds.device
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=device)[None]
        elif tuple(position_ids.shape) != (1, seq_len):
            raise ValueError(f"position_ids must be (1, {seq_len}), got shape {tuple(position_ids.shape)}.")
        position_ids = position_ids.to(device=device, dtype=torch.long)
        k_layer = self.prune_layer

        if key_values is not None and self.reference_bidirectional_bug and getattr(key_values, "is_compileable", False):
            raise ValueError("reference_bidirectional_bug needs a growing cache: pass key_values=None.")
        cache = DynamicCache(config=self.config) if key_values is None else key_values
        cos, sin = self.model.rotary_emb(inputs_embeds, position_ids)  # (1, S, hd) each
        if self.reference_bidirectional_bug:  # layer K-1 without its causal mask, then the last row
            causal = self._causal_mask(inputs_embeds, cache, position_ids, layer_idx=0)
            hidden_in = self._run_layers(inputs_embeds, range(k_layer - 1), causal, (cos, sin), cache)
            layer = self.model.layers[k_layer - 1]
            full = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_in, attention_mask=None,
                                             past_key_values=cache)
            hidden = layer(hidden_in, attention_mask=full, position_embeddings=(cos, sin), past_key_values=cache,
                           use_cache=True, is_causal=False)
            last_row = self._last_row_attention(layer, hidden_in, cos, sin, cache.layers[k_layer - 1].keys[:, :, :seq_len])
        else:  # layers 0 .. K-1, and layer K-1's last attention row (a static layer's empty slots left out)
            hidden, last_row = self.low_layers(None, inputs_embeds, position_ids, None, None, cache)

        keep, hidden = self._choose_kept(hidden[0], last_row, visual_start, visual_end)
        kept_ids = position_ids[:, keep]
        kept_rope = (cos[:, keep], sin[:, keep])
        causal = self._causal_mask(hidden, cache, kept_ids, layer_idx=k_layer)
        hidden = self._run_layers(hidden, range(k_layer, self.num_layers), causal, kept_rope, cache)
        hidden = self.model.norm(hidden)

        state = IntraLLMCache(
            key_values=cache,
            prune_layer=k_layer,
            full_length=seq_len,
            keep_positions=keep,
            visual_start=visual_start,
            visual_end=visual_end,
            next_position=int(position_ids[0, -1]) + 1,
        )
        return hidden, state

    @torch.no_grad()
    def prefill_static(
        self,
        decoding,
        key_values: Cache,
        inputs_embeds: Tensor,
        visual_start: int,
        visual_end: int,
    ) -> Tuple[Tensor, IntraLLMCache]:
        """:meth:`prefill` on a static cache through ``decoding`` (a
        :class:`~tango_core.models.static_decoding.StaticDecoding` made for the model whose head
        ends :meth:`high_layers`): the layers below K and the layers from K on are two prefills, each
        padded and replayed as its own CUDA graph where ``decoding`` says so (their lengths, S and
        S', vary apart); the choice of the kept tokens between them runs eagerly. Positions are
        0 .. S-1. Returns logits (1, V) of the last prompt token and the cache to decode from.
        """
        if self.reference_bidirectional_bug:
            raise ValueError("reference_bidirectional_bug needs a growing cache: use prefill(key_values=None).")
        seq_len = inputs_embeds.shape[1]
        visual_start, visual_end = _checked_span(visual_start, visual_end, seq_len)
        k_layer = self.prune_layer
        position_ids = torch.arange(seq_len, device=inputs_embeds.device)[None]
        hidden, last_row = decoding.prefill(self.low_layers, key_values, inputs_embeds, position_ids, layers=range(k_layer))
        keep, kept = self._choose_kept(hidden[0, :seq_len], last_row, visual_start, visual_end)
        logits = decoding.prefill(self.high_layers, key_values, kept, position_ids[:, keep], layers=range(k_layer, self.num_layers))
        state = IntraLLMCache(
            key_values=key_values,
            prune_layer=k_layer,
            full_length=seq_len,
            keep_positions=keep,
            visual_start=visual_start,
            visual_end=visual_end,
            next_position=seq_len,
        )
        return logits, state

    @torch.no_grad()
    def decode_step(self, token_embeds: Tensor, cache: IntraLLMCache) -> Tuple[Tensor, IntraLLMCache]:
        """One decoding step: token_embeds (1, 1, D) -> final-normed hidden (1, 1, D); cache grows in place."""
        if token_embeds.dim() != 3 or tuple(token_embeds.shape[:2]) != (1, 1):
            raise ValueError(f"token_embeds must be (1, 1, D), got shape {tuple(token_embeds.shape)}.")
        if cache.prune_layer != self.prune_layer:
            raise ValueError(f"cache was built with prune_layer={cache.prune_layer}, runner has {self.prune_layer}.")
        position_ids = torch.full((1, 1), cache.next_position, device=token_embeds.device, dtype=torch.long)
        hidden = self.step_layers(token_embeds, position_ids, cache.key_values)
        cache.next_position += 1
        return hidden, cache

    def step_layers(self, token_embeds: Tensor, position_ids: Tensor, key_values: Cache) -> Tensor:
        """Every layer on one new token (1, 1, D) at position_ids (1, 1), each layer attending to its
        own cache (grown by one): final-normed hidden (1, 1, D). No host synchronisation."""
        rope = self.model.rotary_emb(token_embeds, position_ids)
        k_layer = self.prune_layer
        # Masks are sized from the cache before the layers grow it (a q_len of 1 sees every entry).
        low = self._causal_mask(token_embeds, key_values, position_ids, layer_idx=0)
        high = self._causal_mask(token_embeds, key_values, position_ids, layer_idx=k_layer)
        hidden = self._run_layers(token_embeds, range(k_layer), low, rope, key_values)
        hidden = self._run_layers(hidden, range(k_layer, self.num_layers), high, rope, key_values)
        return self.model.norm(hidden)

    def static_step(self, model: nn.Module, token: Tensor, slot: Tensor, position: Tensor, key_values: Cache) -> Tensor:
        """A :class:`~tango_core.models.static_decoding.StaticDecoding` step body: token (1, 1) at
        position (1, 1) -> logits (1, V) of ``model``'s head (each layer's cache knows its own slot)."""
        hidden = self.step_layers(model.get_input_embeddings()(token), position, key_values)
        return model.lm_head(hidden[:, -1])

"""The intra-LLM merge-and-prune step against a loop-based reference (spec section 6)."""

import pytest
import torch

from tango_core import merge_and_prune_visual


def _slow(hidden, attention, start, keep_ratio, weight):
    num_visual = attention.shape[0]
    keep = round(num_visual * keep_ratio)
    ranked = sorted(range(num_visual), key=lambda i: (-float(attention[i]), i))
    kept = sorted(ranked[:keep])
    visual = hidden[start : start + num_visual]
    new = {i: visual[i].clone() for i in kept}
    sums = {i: torch.zeros_like(visual[0]) for i in kept}
    counts = {i: 0 for i in kept}
    for i in ranked[keep:]:
        sims = [torch.nn.functional.cosine_similarity(visual[i], visual[j], dim=0) for j in kept]
        target = kept[int(torch.stack(sims).argmax())]
        sums[target] += visual[i]
        counts[target] += 1
    for i in kept:
        pooled = (visual[i] + sums[i]) / (1 + counts[i])
        new[i] = (1 - weight) * visual[i] + weight * pooled
    positions = list(range(start)) + [start + i for i in kept] + list(range(start + num_visual, hidden.shape[0]))
    rows = [hidden[p] if not (start <= p < start + num_visual) else new[p - start] for p in positions]
    return torch.tensor(positions), torch.stack(rows)


@pytest.mark.parametrize("num_visual,ratio", [(10, 0.5), (9, 0.5), (7, 0.3), (1, 0.5)])
def test_matches_slow_reference(num_visual, ratio):
    gen = torch.Generator().manual_seed(num_visual)
    hidden = torch.randn(4 + num_visual + 3, 8, generator=gen)
    attention = torch.rand(num_visual, generator=gen)
    if num_visual >= 3:
        attention[1] = attention[2] = attention.max()  # a tie: the lower position wins
    result = merge_and_prune_visual(hidden, attention, 4, ratio)
    if round(num_visual * ratio) == 0:  # at least one visual token is always kept
        assert torch.equal(result.keep_positions, torch.arange(hidden.shape[0]))
        return
    positions, rows = _slow(hidden, attention, 4, ratio, 0.4)
    assert result.keep_positions.tolist() == positions.tolist()
    torch.testing.assert_close(result.hidden, rows)


def test_round_half_to_even_and_errors():
    hidden = torch.randn(10, 4)
    # V = 5, p = 0.5 -> round(2.5) = 2 visual tokens kept.
    assert merge_and_prune_visual(hidden, torch.rand(5), 2, 0.5).keep_positions.numel() == 10 - 3
    with pytest.raises(ValueError, match="visual span"):
        merge_and_prune_visual(hidden, torch.rand(9), 2)
    with pytest.raises(ValueError, match="keep_ratio"):
        merge_and_prune_visual(hidden, torch.rand(3), 2, 0.0)

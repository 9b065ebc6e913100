"""DPC-KNN on small hand-checked sets (spec 4.4-4.6)."""

import math

import torch
from host_references import problem_tables

from tango_core.clustering import merge_into_anchors, select_diverse_salient
from tango_core.dpc import dpc_knn_centres, pairwise_distances
from tango_core.ops import PYTORCH


def _single(points, centres, k=7):
    return points.unsqueeze(0), problem_tables([points.shape[0]], [centres], k)


def _reference_scores(points, k):
    """Direct transcription of spec 4.6 with Python loops."""
    m = points.shape[0]
    d = [[float((points[i] - points[j]).norm()) for j in range(m)] for i in range(m)]
    kk = min(k + 1, m)
    rho = []
    for i in range(m):
        nearest = sorted(d[i])[1:kk]
        rho.append(math.exp(-sum(x * x for x in nearest) / len(nearest)))
    largest = max(max(row) for row in d)
    score = []
    for i in range(m):
        denser = [d[i][j] for j in range(m) if rho[j] > rho[i]]
        score.append(rho[i] * (min(denser) if denser else largest))
    return score


def test_two_blobs_give_one_centre_each():
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [5.0, 5.2]])
    batch, tables = _single(points, 2, k=2)
    centres = dpc_knn_centres(pairwise_distances(batch), tables, num_neighbors=2)[0]
    assert {int(c) < 3 for c in centres} == {True, False}


def test_scores_order_matches_direct_formula():
    gen = torch.Generator().manual_seed(3)
    points = torch.randn(9, 3, generator=gen)
    score = _reference_scores(points, 3)
    expected = sorted(range(9), key=lambda i: (-score[i], i))
    batch, tables = _single(points, 9, k=3)
    got = dpc_knn_centres(pairwise_distances(batch), tables, num_neighbors=3)[0]
    assert got.tolist() == expected


def test_padding_does_not_change_a_problem():
    gen = torch.Generator().manual_seed(4)
    small = torch.randn(5, 4, generator=gen)
    big = torch.randn(8, 4, generator=gen)
    padded = torch.zeros(2, 8, 4)
    padded[0, :5] = small
    padded[1] = big
    both = dpc_knn_centres(pairwise_distances(padded), problem_tables([5, 8], [3, 3], 7), 7)
    alone, tables = _single(small, 3)
    assert both[0].tolist() == dpc_knn_centres(pairwise_distances(alone), tables, 7)[0].tolist()


def test_salient_keeps_best_member_of_each_cluster():
    # Candidates in descending saliency: two near-duplicates, then a far point.
    points = torch.tensor([[0.0, 0.0], [0.05, 0.0], [3.0, 3.0], [3.1, 3.0]])
    batch, tables = _single(points, 2)
    picks = select_diverse_salient(batch, tables, num_neighbors=7, ops=PYTORCH)[0]
    assert sorted(picks.tolist()) == [0, 2]


def test_salient_keeps_all_when_targets_cover_candidates():
    batch, tables = _single(torch.randn(3, 2), 3)
    picks = select_diverse_salient(batch, tables, num_neighbors=7, ops=PYTORCH)[0]
    assert picks.tolist() == [0, 1, 2]


def test_anchor_merge_weights_and_pairing():
    gen = torch.Generator().manual_seed(5)
    blob_a = torch.randn(4, 2, generator=gen) * 0.1
    blob_b = torch.randn(3, 2, generator=gen) * 0.1 + 10.0
    points = torch.cat([blob_a, blob_b]).unsqueeze(0)
    features = torch.randn(1, 7, 3, generator=gen)
    tables = problem_tables([7], [2], 3)
    beta = 0.6
    by_score = dpc_knn_centres(pairwise_distances(points), tables, 3)[0].tolist()
    anchors = sorted(by_score)
    # Direct computation: nearest anchor (lower index on ties), mean of members, weight max(1/n, beta).
    expected = []
    for anchor in anchors:
        members = [
            i for i in range(7)
            if min(anchors, key=lambda a: (float((points[0, i] - points[0, a]).norm()), a)) == anchor
        ]
        mean = features[0, members].mean(0)
        weight = max(1 / len(members), beta)
        expected.append(weight * features[0, anchor] + (1 - weight) * mean)
    expected = torch.stack(expected)

    rows = (features.view(7, 3), torch.arange(7).view(1, 7))  # the features as a table and its rows
    slots, merged = merge_into_anchors(points, *rows, tables, 3, beta, own_anchor_merge=True, ops=PYTORCH)
    assert slots[0].tolist() == anchors
    torch.testing.assert_close(merged[0], expected)
    # Reference pairing: the i-th merged feature (pool order) lands on the i-th anchor by score.
    slots, merged = merge_into_anchors(points, *rows, tables, 3, beta, own_anchor_merge=False, ops=PYTORCH)
    assert slots[0].tolist() == by_score
    torch.testing.assert_close(merged[0], expected)

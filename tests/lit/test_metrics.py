"""Stage-1 metrics against straightforward reference computations on small hand-made arrays (no sklearn)."""

import math

import pytest
import torch

from icg.lit.metrics import ClickMetrics, grouped_auroc


def reference_auc(scores, labels):
    """AUC by counting pairs: a positive above a negative scores 1, a tie 1/2."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def reference_gauc(scores, labels, users):
    aucs = []
    for user in sorted(set(users)):
        s = [x for x, u in zip(scores, users, strict=True) if u == user]
        y = [x for x, u in zip(labels, users, strict=True) if u == user]
        if 0 < sum(y) < len(y):  # users with one class only have no AUC
            aucs.append(reference_auc(s, y))
    return sum(aucs) / len(aucs)


def reference_ranking(scores, labels, groups, k):
    ndcgs, recalls = [], []
    for group in sorted(set(groups)):
        rows = sorted(
            [(s, y) for s, y, g in zip(scores, labels, groups, strict=True) if g == group], key=lambda r: -r[0]
        )
        relevant = sum(y for _, y in rows)
        if relevant == 0:
            continue
        dcg = sum(y / math.log2(rank + 2) for rank, (_, y) in enumerate(rows[:k]))
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(relevant, k)))
        ndcgs.append(dcg / ideal)
        recalls.append(sum(y for _, y in rows[:k]) / relevant)
    return sum(ndcgs) / len(ndcgs), sum(recalls) / len(recalls)


SCORES = [2.0, -1.0, 0.5, 0.3, 1.2, -0.4, 0.9, 0.1, -2.0, 1.5, 0.7, -0.2]
LABELS = [1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0]
USERS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3]  # user 3 has no click: left out of GAUC
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_grouped_auroc_matches_pair_counting_with_ties():
    scores = [0.1, 0.4, 0.35, 0.8, 0.5, 0.5, 0.2, 0.3, 0.3, 0.3, 0.9]
    labels = [0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 0]
    users = [0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    got = grouped_auroc(torch.tensor(scores), torch.tensor(labels), torch.tensor(users))
    assert got.item() == pytest.approx(reference_gauc(scores, labels, users), abs=1e-6)
    # single group: plain AUC
    assert grouped_auroc(torch.tensor(scores), torch.tensor(labels), torch.zeros(11)).item() == pytest.approx(
        reference_auc(scores, labels), abs=1e-6
    )


def test_grouped_auroc_order_independent_and_nan_without_pairs():
    perm = torch.randperm(len(SCORES), generator=torch.Generator().manual_seed(0))
    a = grouped_auroc(torch.tensor(SCORES), torch.tensor(LABELS), torch.tensor(USERS))
    b = grouped_auroc(torch.tensor(SCORES)[perm], torch.tensor(LABELS)[perm], torch.tensor(USERS)[perm])
    assert a.item() == pytest.approx(b.item())
    assert math.isnan(grouped_auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]), torch.tensor([0, 1])).item())


def test_ranking_metrics_ignore_the_sign_of_logits():
    # torchmetrics' RetrievalRecall treats scores <= 0 as "not retrieved"; logits are mostly negative.
    shifted = [s - 10.0 for s in SCORES]
    metrics = ClickMetrics(top_k=2)
    metrics.update(torch.tensor(shifted), torch.tensor(LABELS, dtype=torch.float), torch.tensor(USERS),
                   torch.tensor(GROUPS))  # fmt: skip
    ndcg, recall = reference_ranking(shifted, LABELS, GROUPS, k=2)
    got = metrics.compute()
    assert got["recall@2"].item() == pytest.approx(recall, abs=1e-6) and recall > 0
    assert got["ndcg@2"].item() == pytest.approx(ndcg, abs=1e-6)


def test_click_metrics_equal_reference_in_two_batches():
    metrics = ClickMetrics(top_k=2)
    half = 6
    for sl in (slice(0, half), slice(half, None)):
        metrics.update(
            torch.tensor(SCORES[sl]),
            torch.tensor(LABELS[sl], dtype=torch.float),
            torch.tensor(USERS[sl]),
            torch.tensor(GROUPS[sl]),
        )
    got = {k: v.item() for k, v in metrics.compute().items()}
    ndcg, recall = reference_ranking(SCORES, LABELS, GROUPS, k=2)
    logloss = -sum(
        y * math.log(1 / (1 + math.exp(-s))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-s)))
        for s, y in zip(SCORES, LABELS, strict=True)
    ) / len(SCORES)
    assert got["auc"] == pytest.approx(reference_auc(SCORES, LABELS), abs=1e-6)
    assert got["gauc"] == pytest.approx(reference_gauc(SCORES, LABELS, USERS), abs=1e-6)
    assert got["logloss"] == pytest.approx(logloss, abs=1e-5)
    assert got["ndcg@2"] == pytest.approx(ndcg, abs=1e-6)
    assert got["recall@2"] == pytest.approx(recall, abs=1e-6)
    metrics.reset()
    metrics.update(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    assert set(metrics.compute()) == {"auc", "gauc", "logloss"}  # no groups: no ranking metrics

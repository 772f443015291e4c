"""Offline click-model metrics of ICG's stage 1 and its recommendation evaluation (Bian et al., EMNLP 2025).

``ClickMetrics`` gathers, over an epoch of candidates, AUC (all pairs), GAUC (per-user AUC, averaged over users that
have both a click and a non-click), log loss, and NDCG@k / Recall@k of each held-out positive among its sampled
candidates (``group``). AUC, NDCG and Recall are torchmetrics'; GAUC is ``GroupedAUROC`` below, because
``torchmetrics.RetrievalAUROC`` scores a query with only positives as 0 rather than leaving it out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall
from torchmetrics.utilities import dim_zero_cat


def grouped_auroc(preds: Tensor, target: Tensor, indexes: Tensor) -> Tensor:
    """Mean over groups of the per-group AUC (Mann-Whitney U with tie-averaged ranks); one-class groups skipped.

    Args:
        preds: N scores (any monotone scale: logits or probabilities).
        target: N labels in {0, 1}.
        indexes: N group ids (e.g. ``user_idx`` for GAUC).

    Returns:
        a scalar; NaN when no group has both classes.
    """
    preds, target, indexes = preds.detach().double().flatten(), target.flatten().long(), indexes.flatten().long()
    _, group = torch.unique(indexes, return_inverse=True)
    # order by (group, score): a stable sort on score, then a stable sort on group
    order = torch.sort(preds, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    g, p, t = group[order], preds[order], target[order]
    n = len(g)
    position = torch.arange(n, dtype=torch.float64)
    num_groups = int(g.max()) + 1 if n else 0
    group_size = torch.bincount(g, minlength=num_groups)
    group_start = torch.cumsum(group_size, 0) - group_size
    # runs of equal (group, score) share their average rank
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1])
    run = torch.cumsum(new_run.long(), 0) - 1
    run_start = position[new_run]
    run_len = torch.bincount(run).double()
    rank = run_start[run] + (run_len[run] + 1) / 2 - group_start[g].double()  # 1-based rank within the group
    n_pos = torch.bincount(g, weights=t.double(), minlength=num_groups)
    n_neg = group_size.double() - n_pos
    rank_sum = torch.bincount(g, weights=rank * t.double(), minlength=num_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return torch.tensor(float("nan"))
    auc = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    return auc.mean().float()


class GroupedAUROC(Metric):
    """torchmetrics wrapper of ``grouped_auroc``: GAUC when ``indexes`` is the user index."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("indexes", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, indexes: Tensor) -> None:
        self.preds.append(preds.detach().flatten().float())
        self.target.append(target.detach().flatten().long())
        self.indexes.append(indexes.detach().flatten().long())

    def compute(self) -> Tensor:
        return grouped_auroc(dim_zero_cat(self.preds), dim_zero_cat(self.target), dim_zero_cat(self.indexes))


class ClickMetrics(nn.Module):
    """AUC, GAUC, log loss, NDCG@k and Recall@k of click logits; ``compute()`` returns ``{name: value}``.

    Keys: ``auc``, ``gauc``, ``logloss``, ``ndcg@{k}``, ``recall@{k}``. Ranking metrics need ``group`` (one id per
    held-out positive and its candidates); without it they are left out.

    Args:
        top_k: cut-off of NDCG and Recall.
    """

    def __init__(self, top_k: int = 10) -> None:
        super().__init__()
        self.top_k = top_k
        self.auc = BinaryAUROC()
        self.gauc = GroupedAUROC()
        self.ndcg = RetrievalNormalizedDCG(top_k=top_k, empty_target_action="skip")
        self.recall = RetrievalRecall(top_k=top_k, empty_target_action="skip")
        self.logloss_sum: Tensor
        self.register_buffer("logloss_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64), persistent=False)
        self.has_groups = False

    def update(self, logits: Tensor, click: Tensor, user_idx: Tensor, group: Tensor | None = None) -> None:
        logits, click = logits.detach().float().flatten(), click.detach().float().flatten()
        target = click.long()
        self.auc.update(logits.sigmoid(), target)
        self.gauc.update(logits, target, user_idx)
        self.logloss_sum += F.binary_cross_entropy_with_logits(logits, click, reduction="sum").double()
        self.count += click.numel()
        if group is not None:
            self.has_groups = True
            # Probabilities, not logits: torchmetrics' retrieval_recall counts a candidate with a score <= 0 as
            # not retrieved, so negative logits would read as recall 0. float64 keeps large logits apart.
            prob = logits.double().sigmoid()
            self.ndcg.update(prob, target, indexes=group.long())
            self.recall.update(prob, target, indexes=group.long())

    def compute(self) -> dict[str, Tensor]:
        out = {
            "auc": self.auc.compute(),
            "gauc": self.gauc.compute(),
            "logloss": (self.logloss_sum / self.count.clamp_min(1)).float(),
        }
        if self.has_groups:
            out[f"ndcg@{self.top_k}"] = self.ndcg.compute()
            out[f"recall@{self.top_k}"] = self.recall.compute()
        return out

    def reset(self) -> None:
        for metric in (self.auc, self.gauc, self.ndcg, self.recall):
            metric.reset()
        self.logloss_sum.zero_()
        self.count.zero_()
        self.has_groups = False

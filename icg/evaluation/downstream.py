"""Downstream recommendation accuracy of generated covers (ICG, Bian et al., EMNLP 2025; docs/evaluation.md,
"Downstream").

AUC/GAUC of the evaluator (the platform's click model, trained on the logged data) when each candidate's cover is the
method's cover for that (user, candidate). The labels are the clicks the user would make on the covers shown: on the
synthetic platform each (user, candidate, cover) is shown ``downstream_impressions`` times and clicks are drawn from
the oracle (counterfactual, ``downstream_auc``/``gauc``). Logged clicks were caused by the *original* covers, so
against them every regenerated cover can only lose signal; they are reported apart (``downstream_auc_logged``/
``gauc_logged``) as a measure of fidelity to the original cover, and are all that real data offers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from icg.data.oracle import Oracle
from icg.evaluation.evaluator import ClickModel
from icg.evaluation.sample import EvaluationSample
from icg.lit.metrics import ClickMetrics


@dataclass
class DownstreamLabels:
    """The downstream candidates' labels, shared by every method.

    Args:
        logged_click: N logged clicks (1: the held-out positive).
        group: N ``user_idx`` (GAUC's groups).
        impressions: R x N uniform draws; a shown cover is clicked where the draw is below the oracle's click
            probability of that cover (common random numbers across methods).
    """

    logged_click: torch.Tensor
    group: torch.Tensor
    impressions: torch.Tensor

    @classmethod
    def of(cls, sample: EvaluationSample, impressions: int, seed: int) -> DownstreamLabels:
        """The labels of ``sample``'s downstream rows; the draws seeded by ``seed``."""
        rows = sample.down_rows
        click = torch.tensor([float(r["click"]) for r in rows])
        group = torch.tensor([int(r["user_idx"]) for r in rows])
        # One uniform draw per (impression, candidate), shared by every method: click = draw < P(click | cover).
        draws = torch.rand(impressions, len(rows), generator=torch.Generator().manual_seed(seed))
        return cls(click, group, draws)


@torch.no_grad()
def downstream_metrics(
    evaluator: ClickModel, oracle: Oracle | None, covers: torch.Tensor, batch: dict[str, Any], labels: DownstreamLabels
) -> dict[str, float]:
    """Downstream AUC/GAUC of the evaluator on these covers: against logged clicks, and (with an oracle) against the
    clicks the user would make on these very covers."""
    device = next(evaluator.model.parameters()).device
    logits = evaluator.model(covers.to(device), evaluator.user_rows[batch["user_idx"]].to(device)).cpu()
    metrics = ClickMetrics()
    metrics.update(logits, labels.logged_click, labels.group)
    logged = metrics.compute()
    out = {"downstream_auc_logged": float(logged["auc"]), "downstream_gauc_logged": float(logged["gauc"])}
    if oracle is not None:
        probs = oracle(covers, oracle.user_index(batch["user_id"], "fallback")).float().cpu()
        clicks = (labels.impressions < probs).float()  # R x N
        repeats = clicks.shape[0]
        metrics = ClickMetrics()
        metrics.update(logits.repeat(repeats), clicks.reshape(-1), labels.group.repeat(repeats))
        values = metrics.compute()
        out |= {"downstream_auc": float(values["auc"]), "downstream_gauc": float(values["gauc"])}
        # The user's true click probability on the candidates they did not click: items whose original cover did
        # not win them, where personalization is free of the held-out pairs' selection effect.
        unclicked = labels.logged_click == 0
        if bool(unclicked.any()):
            out["true_click_prob_candidates"] = float(probs[unclicked].mean())
    return out

"""Personalization itself (issue 20): the report's ``personalization`` block, on the held-out clicked pairs and on
the unclicked candidates, synthetic platform only (ICG, Bian et al., EMNLP 2025; docs/evaluation.md).

What a platform must see before it generates (MISSION, "What the product must prove"), in the oracle's true click
probability, beside one another: the item's own cover, every method's covers, the faithful headroom and ICG's share
of it (``headroom.py``), and a pool + pick of generic covers at a fixed pool size and at ICG's cost (``pool_pick.py``).
Each figure is given twice: on the held-out pairs (clicked through their original cover, so the reference is strong
there) and on the downstream sample's unclicked candidates (free of that selection effect).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from icg.data.datamodule import ICGDataModule
from icg.data.oracle import Oracle
from icg.data.synthetic import read_truth
from icg.evaluation.evaluator import ClickModel
from icg.evaluation.headroom import ORACLE_BATCH, FaithfulTable, headroom_figures, personal_share
from icg.evaluation.methods import CoverMethod
from icg.evaluation.metrics import bootstrap_lift
from icg.evaluation.pool_pick import generate_pools, pool_pick, score_pools
from icg.evaluation.sample import EvaluationSample, Pair, pairs_batch
from icg.evaluation.settings import RunSettings, ScoringSettings

log = logging.getLogger(__name__)
SET_NAMES = {"clicked": "held-out clicked pairs", "candidates": "unclicked candidates"}
POOL_VARIANTS = ("pool", "equal_cost")


def evaluation_sets(sample: EvaluationSample) -> dict[str, list[Pair]]:
    """``clicked``: the held-out pairs; ``candidates``: the downstream sample's unclicked candidates (as rows, so a
    negative drawn twice counts twice, as in ``true_click_prob_candidates``)."""
    candidates = [(int(r["user_idx"]), int(r["item_idx"])) for r in sample.down_rows if float(r["click"]) == 0]
    return {"clicked": sample.main_pairs, "candidates": candidates}


def pairs_per_item(pairs: list[Pair]) -> Counter:
    """``item_idx`` -> distinct (user, item) pairs of it: the covers ICG generates for that item."""
    return Counter(item for _, item in set(pairs))


def measure_personalization(  # noqa: PLR0913  # the evaluation's parts, handed over by run.py
    dm: ICGDataModule,
    data_root: str,
    oracle: Oracle | None,
    picker: ClickModel,
    methods: Mapping[str, CoverMethod],
    covers: Mapping[str, dict | None],
    sample: EvaluationSample,
    settings: ScoringSettings,
    run: RunSettings,
    seed: int,
    unavailable: dict[str, str],
) -> tuple[dict[str, Any] | None, dict[str, float]]:
    """The report's ``personalization`` block and the seconds its pools took to generate, per pool method.

    Args:
        dm: the evaluation's DataModule (its ``image_size`` is the faithful re-renderings' side).
        data_root: the dataset folder (its hidden truth holds the items' cover attributes).
        oracle: the platform's click model (None: the block is unavailable).
        picker: the platform's click model that picks from the pools (stage 1).
        methods: the evaluated methods (the pool methods among them generate the pools).
        covers: every method's covers of the evaluated pairs (``covers["reference"]`` None: the dataset's own).
        sample: the evaluated pairs.
        settings: ``treatment``, ``without_users``, ``pool_methods``, ``pool_size``, ``bootstrap_samples``.
        run: ``pool_batch_size``, the pool covers generated per call.
        seed: seed of the bootstraps.
        unavailable: figure -> why it is unavailable; filled in place.
    """
    if oracle is None:
        unavailable["personalization"] = "needs the oracle and the items' cover attributes (synthetic platform only)"
        return None, {}
    start = time.time()
    sets = evaluation_sets(sample)
    items = list(dict.fromkeys(item for pairs in sets.values() for _, item in pairs))
    catalogue = dm.catalogue
    faithful = FaithfulTable.render(oracle, read_truth(data_root), {i: str(catalogue.item_ids[i]) for i in items},
                                    int(dm.image_size))  # fmt: skip
    equal_cost = {name: pairs_per_item(pairs) for name, pairs in sets.items()}
    sizes = {i: max(settings.pool_size, *(count[i] for count in equal_cost.values())) for i in items}
    pools, seconds = {}, {}
    for name in settings.pool_methods:
        if name not in methods:
            unavailable[f"pool_pick/{name}"] = f"no method named {name!r} to draw the pools from"
            continue
        t0 = time.time()
        generated = generate_pools(methods[name], dm, sizes, run.pool_batch_size)
        pools[name] = score_pools(generated, picker, oracle, ORACLE_BATCH)
        seconds[f"pool/{name}"] = time.time() - t0
        log.info(
            "pool + pick, %s: %d covers for %d items in %.1f s",
            name,
            sum(sizes.values()),
            len(items),
            seconds[f"pool/{name}"],
        )
    titles = {i: str(catalogue.titles[i]) for i in items}
    block: dict[str, Any] = {"pool_size": settings.pool_size, "picker": picker.source}
    context = _SetContext(dm, oracle, picker, covers, faithful, pools, titles, settings, seed)
    for name, pairs in sets.items():
        if not pairs:
            block[name] = None
            unavailable[f"personalization/{name}"] = f"no {SET_NAMES[name]} in the sample"
            continue
        block[name] = context.figures(pairs, equal_cost[name], unavailable, name)
    block["seconds"] = time.time() - start
    return block, seconds


class _SetContext:
    """The figures of one set of pairs (clicked or candidates) from the evaluation's shared parts."""

    def __init__(self, dm, oracle, picker, covers, faithful, pools, titles, settings, seed) -> None:
        self.dm, self.oracle, self.picker, self.covers = dm, oracle, picker, covers
        self.faithful, self.pools, self.titles = faithful, pools, titles
        self.settings, self.seed = settings, seed

    def true_probs(self, pairs: list[Pair], rows: torch.Tensor) -> dict[str, np.ndarray]:
        """Method (and ``reference``) -> per-pair true click probability of its covers."""
        out = {}
        for name, by_pair in self.covers.items():
            probs = []
            for start in range(0, len(pairs), ORACLE_BATCH):
                chunk = pairs[start : start + ORACLE_BATCH]
                images = (pairs_batch(self.dm, chunk)["image"] if by_pair is None
                          else torch.stack([by_pair[p] for p in chunk]))  # fmt: skip
                with torch.no_grad():
                    probs.append(self.oracle(images, rows[start : start + ORACLE_BATCH]).double())
            out[name] = torch.cat(probs).numpy()
        return out

    def figures(self, pairs: list[Pair], equal_cost: Counter, unavailable: dict[str, str], set_name: str) -> dict:
        settings = self.settings
        user_ids = [str(self.dm.user_ids[u]) for u, _ in pairs]
        rows = self.oracle.user_index(user_ids)
        true = self.true_probs(pairs, rows)
        personal, generic = self.faithful.best(pairs, rows)
        treatment, without = settings.treatment, settings.without_users
        out: dict[str, Any] = {
            "pairs": len(pairs),
            "users": len(set(user_ids)),
            "items": len(equal_cost),
            "icg_covers": sum(equal_cost.values()),
            "true_click_prob": {name: float(values.mean()) for name, values in true.items()},
            "faithful": headroom_figures(personal, generic),
            "personal_share": None,
            "pool_pick": {},
        }
        if treatment in true and without in true:
            share = personal_share(true[treatment], true[without], personal - generic, user_ids,
                                   settings.bootstrap_samples, self.seed)  # fmt: skip
            if share is None:
                unavailable[f"personal_share/{set_name}"] = "no faithful headroom on these pairs"
            else:
                out["personal_share"] = share | {"treatment": treatment, "without_users": without}
        else:
            unavailable[f"personal_share/{set_name}"] = f"needs methods named {treatment!r} and {without!r}"
        for name, pools in self.pools.items():
            out["pool_pick"][name] = {
                "pool": self.pick_figures(
                    pools, pairs, {i: settings.pool_size for i in equal_cost}, rows, true, user_ids
                ),
                "equal_cost": self.pick_figures(pools, pairs, equal_cost, rows, true, user_ids),
            }
        return out

    def pick_figures(self, pools, pairs, sizes: Mapping[int, int], rows, true, user_ids) -> dict[str, Any]:
        """One pool + pick: its cost, the picked covers' mean true click probability, and ICG's lift over it."""
        result = pool_pick(pools, pairs, sizes, self.picker, rows, self.titles)
        figures = {
            "covers": int(sum(sizes.values())),
            "covers_per_item": float(np.mean(list(sizes.values()))),
            "true_click_prob": float(result["picked"].mean()),
            "random_pick": float(result["random_pick"].mean()),
            "best_in_pool": float(result["best_in_pool"].mean()),
        }
        treatment = self.settings.treatment
        if treatment in true:
            lift = bootstrap_lift(true[treatment], result["picked"], user_ids,
                                  num_samples=self.settings.bootstrap_samples, seed=self.seed)  # fmt: skip
            figures["icg_lift"] = {"true_click_prob": lift.pop("value"), **lift}
        return figures


def format_personalization(block: dict[str, Any] | None) -> list[str]:
    """The ``personalization`` block as a Markdown section (empty without the block)."""
    if not block:
        return []
    columns = [name for name in SET_NAMES if block.get(name)]
    if not columns:
        return []
    sets = {name: block[name] for name in columns}
    first = sets[columns[0]]
    n = block["pool_size"]

    def cell(values: list[str]) -> str:
        return "| " + " | ".join(values) + " |"

    lines = [
        "",
        "### Personalization itself (true click probability, oracle)",
        "",
        cell(["", *(f"{SET_NAMES[c]} ({sets[c]['pairs']})" for c in columns)]),
        cell(["---", *("---:" for _ in columns)]),
    ]
    for method in first["true_click_prob"]:
        label = "reference cover (the item's own)" if method == "reference" else method
        lines.append(cell([label, *(f"{sets[c]['true_click_prob'].get(method, float('nan')):.4f}" for c in columns)]))
    for method in first["pool_pick"]:
        for variant, what in (("pool", f"{n} per item"), ("equal_cost", "equal cost")):
            figures = [sets[c]["pool_pick"][method][variant] for c in columns]
            lines.append(cell([f"pool + pick: {method}, {what}",
                               *(f"{f['true_click_prob']:.4f} (random {f['random_pick']:.4f}, best "
                                 f"{f['best_in_pool']:.4f})" for f in figures)]))  # fmt: skip
    for key, label in (
        ("best_generic", "best faithful cover, one per item for all users"),
        ("best_personal", "best faithful cover per user"),
        ("headroom", "faithful headroom (per user - for all)"),
    ):
        lines.append(cell([label, *(f"{sets[c]['faithful'][key]:.4f}" for c in columns)]))
    shares = [sets[c]["personal_share"] for c in columns]
    lines.append(cell(["ICG's personal share of the headroom", *(_share(s) for s in shares)]))
    lines += [
        "",
        "Faithful: re-renderings of the item's cover that keep all its title names (backdrop hue and object size "
        "free). Personal share: (ICG - ICG without users) / headroom, ratio of means, 95% bootstrap CI over users.",
        f"Pool + pick: per item, generic covers of the method at different seeds; the stage-1 click model (what a "
        f"platform has, not the oracle) picks one per user; random: a random pick, best: the pool's best for the user. "
        f"Cost in generated covers, {SET_NAMES[columns[0]]}: ICG one per pair ({first['icg_covers']} for "
        f"{first['items']} items); pool of {n}: {n} per item ({n * first['items']}); equal cost: as many per item as "
        f"ICG generates for it ({first['icg_covers']}).",
    ]
    for method in first["pool_pick"]:
        for variant, what in (("pool", f"{n} per item"), ("equal_cost", "equal cost")):
            lifts = [sets[c]["pool_pick"][method][variant].get("icg_lift") for c in columns]
            if all(lifts):
                lines.append(
                    f"ICG over pool + pick ({method}, {what}): "
                    + "; ".join(
                        f"{SET_NAMES[c]} {x['true_click_prob']:+.2%} (CI {x['ci_low']:+.2%} .. {x['ci_high']:+.2%})"
                        for c, x in zip(columns, lifts, strict=True)
                    )
                    + "."
                )
    return lines


def _share(share: dict[str, Any] | None) -> str:
    if share is None:
        return "unavailable"
    return f"{share['value']:.2f} (CI {share['ci_low']:.2f} .. {share['ci_high']:.2f})"

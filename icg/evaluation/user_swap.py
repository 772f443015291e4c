"""Personalization itself (ICG, Bian et al., EMNLP 2025): is the cover made for a user better *for that user* than
the covers the same model makes for other users of the same item, by more than seed noise moves a cover?

A higher click probability for a user's cover than for the baseline's says little on its own: a method that makes
every cover more appealing to everyone gains as much. The *user-swap test* holds everything but the user fixed: for
each evaluated pair (u, i) -- the held-out clicked pairs, and the unclicked candidates of the downstream sample -- it
generates item i's cover for u and for M other users, all from the **same seed** (one seed per item,
``common_seed``), and scores every one of them *for u*. A model that personalizes wins these comparisons; one that
ignores the user ties them (its covers are identical) and one that only adds appeal wins half of them.

Per method and pair set (``report.json``'s ``user_swap``; docs/evaluation.md, "Personalization itself"):

* ``oracle`` / ``evaluator``: win rate of the own cover over another user's (ties count 1/2, so 0.5 = no
  personalization; ``wins``, ``ties``, ``losses`` apart) and the mean margin in click probability, by the true click
  model (synthetic platform only) and by the evaluator click model;
* ``agreement``: how often the stage-1 click model (the reward ICG was trained on) and the evaluator order
  "own vs other cover" as the oracle does (comparisons the oracle ties left out);
* ``distance``: pixel RMSE and 1 - SSIM between different users' covers at the common seed (the user effect) beside
  those between one user's covers at two seeds (the common one and the pair's own seed of the main evaluation: seed
  noise), and their ratio.

``agreement`` also holds, for the stage-1 model and the evaluator, the correlation over (user, cover) of their
per-user differences (a cover's score minus its mean over users) with the oracle's, on the reference covers and on
each method's generated covers. The gallery's user-swap section (``icg.evaluation.swap_gallery``) shows the covers.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from icg.data.datamodule import ICGDataModule
from icg.data.oracle import Oracle
from icg.evaluation.evaluator import ClickModel
from icg.evaluation.methods import CoverMethod
from icg.evaluation.metrics import ssim_to
from icg.evaluation.sample import EvaluationSample, Pair, pairs_batch
from icg.evaluation.settings import UserSwapSettings
from icg.generation.seeds import pair_seed

log = logging.getLogger(__name__)
COMMON_USER = ""  # the user part of the common seed: no real user id is empty, so it is no pair's own seed
TIE = 1e-6  # click probabilities closer than this are a tie (identical covers score identically up to rounding)
CHUNK = 4096  # (cover, user) scores per click-model call


def common_seed(base: int, item_id: str) -> int:
    """The one seed of every user's cover of ``item_id`` in the user-swap test."""
    return pair_seed(base, COMMON_USER, str(item_id))


def takes_seeds(method: CoverMethod) -> bool:
    """Whether ``method`` can be called with explicit ``seeds`` (``icg.evaluation.methods``' methods can)."""
    try:
        return "seeds" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------ the measures
def compare(own: Tensor, other: Tensor) -> dict[str, float]:
    """Own vs other cover, K comparisons: ``win_rate`` (ties 1/2), ``wins``, ``ties``, ``losses`` (fractions) and
    ``margin`` (mean own - other)."""
    diff = (own.double() - other.double()).reshape(-1)
    if diff.numel() == 0:
        raise ValueError("compare: no comparisons")
    ties = diff.abs() <= TIE
    wins, losses = (diff > 0) & ~ties, (diff < 0) & ~ties
    return {
        "win_rate": float(wins.double().mean() + 0.5 * ties.double().mean()),
        "wins": float(wins.double().mean()),
        "ties": float(ties.double().mean()),
        "losses": float(losses.double().mean()),
        "margin": float(diff.mean()),
    }


def sign_agreement(model_diff: Tensor, oracle_diff: Tensor) -> float | None:
    """Fraction of comparisons the model orders as the oracle does (the oracle's ties left out; None: all tied).

    A model tie on a comparison the oracle does not tie counts 1/2."""
    model_diff, oracle_diff = model_diff.double().reshape(-1), oracle_diff.double().reshape(-1)
    kept = oracle_diff.abs() > TIE
    if not kept.any():
        return None
    same = torch.sign(model_diff[kept]) == torch.sign(oracle_diff[kept])
    tied = model_diff[kept] == 0
    return float((same & ~tied).double().mean() + 0.5 * tied.double().mean())


def per_user_correlation(model: Tensor, oracle: Tensor, interaction: bool = False) -> float | None:
    """Pearson correlation over (user, cover) of two U x N score tables after removing each cover's mean over users
    (``interaction``: each user's mean over covers too); None when either is constant after that."""
    a, b = model.double(), oracle.double()
    a, b = a - a.mean(0, keepdim=True), b - b.mean(0, keepdim=True)
    if interaction:
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    a, b = a.reshape(-1), b.reshape(-1)
    norm = a.norm() * b.norm()
    if float(norm) <= 1e-12:
        return None
    return float((a @ b) / norm)


def rmse(a: Tensor, b: Tensor) -> Tensor:
    """Per-image root mean squared pixel difference (B) of two B x 3 x H x W batches in [0, 1]."""
    return (a.double() - b.double()).pow(2).flatten(1).mean(1).sqrt()


def distance_block(users: tuple[Tensor, Tensor], seeds: tuple[Tensor, Tensor] | None) -> dict[str, float | None]:
    """The user effect (``users``: own vs another user's cover, common seed) beside seed noise (``seeds``: one user's
    covers at two seeds): mean RMSE and 1 - SSIM of each, and user / seed ratios (None: no seed pairs)."""
    out: dict[str, float | None] = {}
    for name, pair in (("user", users), ("seed", seeds)):
        out[f"{name}_rmse"] = float(rmse(*pair).mean()) if pair is not None else None
        out[f"{name}_dssim"] = float((1 - ssim_to(*pair)).mean()) if pair is not None else None
    for kind in ("rmse", "dssim"):
        seed = out[f"seed_{kind}"]
        out[f"{kind}_ratio"] = out[f"user_{kind}"] / seed if seed else None
    return out


# ------------------------------------------------------------------------------------------------ the pairs
@dataclass
class SwapSet:
    """One set of evaluated pairs and, per pair, the M other users whose covers it is compared with.

    Args:
        pairs: (user_idx, item_idx) pairs.
        others: per pair, M other ``user_idx``.
    """

    pairs: list[Pair]
    others: list[list[int]]

    def cells(self) -> list[Pair]:
        """Every (user, item) cover the set needs, own first."""
        own = list(self.pairs)
        return own + [(v, i) for (_, i), vs in zip(self.pairs, self.others, strict=True) for v in vs]

    def comparisons(self) -> tuple[list[Pair], list[Pair], list[int]]:
        """(own cell, other cell, pair's user) per comparison, pair-major."""
        own, other, user = [], [], []
        for (u, i), vs in zip(self.pairs, self.others, strict=True):
            for v in vs:
                own.append((u, i))
                other.append((v, i))
                user.append(u)
        return own, other, user


def other_users(users: list[int], user: int, count: int) -> list[int]:
    """The ``count`` users after ``user`` among ``users`` in ``user_idx`` order (wrapping around; never ``user``)."""
    pool = sorted(v for v in users if v != user)
    if not pool:
        return []
    start = sum(1 for v in pool if v < user)
    return [pool[(start + k) % len(pool)] for k in range(min(count, len(pool)))]


def spread(pairs: list[Pair], limit: int | None) -> list[Pair]:
    """At most ``limit`` of ``pairs``, round-robin over their users (every user's first pair, then second, ...), in
    their order."""
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    seen: dict[int, int] = {}
    rank = []
    for u, _ in pairs:
        rank.append(seen.get(u, 0))
        seen[u] = rank[-1] + 1
    kept = sorted(sorted(range(len(pairs)), key=lambda k: (rank[k], k))[:limit])
    return [pairs[k] for k in kept]


def swap_sets(chosen: EvaluationSample, settings: UserSwapSettings) -> dict[str, SwapSet]:
    """``held_out`` (the held-out clicked pairs) and ``candidates`` (the downstream sample's unclicked candidates),
    each at most ``settings.max_pairs`` (``spread``)."""
    candidates = [(int(r["user_idx"]), int(r["item_idx"])) for r in chosen.down_rows if float(r["click"]) == 0]
    sets = {}
    for name, pairs in (("held_out", chosen.main_pairs), ("candidates", list(dict.fromkeys(candidates)))):
        pairs = spread(pairs, settings.max_pairs)
        sets[name] = SwapSet(pairs, [other_users(chosen.users, u, settings.others) for u, _ in pairs])
    return sets


def gallery_cells(chosen: EvaluationSample, settings: UserSwapSettings) -> tuple[list[int], list[int]]:
    """The gallery section's users (the first sampled) and items (their held-out items first, then others')."""
    users = chosen.users[: settings.gallery_users]
    main = chosen.main_pairs
    ranked = [i for u, i in main if u in users] + [i for u, i in main if u not in users]
    return users, list(dict.fromkeys(ranked))[: settings.gallery_items]


def generate_common(method: CoverMethod, dm: ICGDataModule, cells: list[Pair], batch_size: int) -> dict[Pair, Tensor]:
    """``{(user, item): cover}`` of ``method`` for ``cells``, every user's cover of an item from that item's
    ``common_seed`` (the method's own base seed)."""
    base = int(getattr(method, "seed", 0))
    covers = {}
    for start in range(0, len(cells), batch_size):
        chunk = cells[start : start + batch_size]
        batch = pairs_batch(dm, chunk)
        seeds = [common_seed(base, item) for item in batch["item_id"]]
        images = method(batch, seeds=seeds).detach().float().cpu().clamp(0, 1)
        covers.update(zip(chunk, images, strict=True))
    return covers


# ------------------------------------------------------------------------------------------------ scoring
def click_logits(model: ClickModel, images: Tensor, titles: list[str], cover: Tensor, user_idx: Tensor) -> Tensor:
    """Click logits of ``model`` for (``images[cover[k]]``, DataModule user ``user_idx[k]``), K; images encoded once."""
    net = model.model
    device = next(net.parameters()).device
    with torch.no_grad():
        feats = torch.cat([net.encode_images(images[s : s + 256].to(device)) for s in range(0, len(images), 256)])
        rows = model.user_rows[user_idx.long()].to(device)
        out = []
        for s in range(0, len(cover), CHUNK):
            index = cover[s : s + CHUNK]
            names = [titles[int(c)] for c in index] if net.title_type != "none" else None
            out.append(net.score_features(feats[index.to(device)], rows[s : s + CHUNK], titles=names).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class Graders:
    """What scores the covers: the true click model (None on real data), the evaluator and the stage-1 model.

    Args:
        oracle: the synthetic platform's true click model.
        evaluator: the grading click model.
        stage1: the stage-1 click model (the reward ICG was optimized against).
        user_ids: DataModule ``user_idx`` -> user id.
    """

    oracle: Oracle | None
    evaluator: ClickModel
    stage1: ClickModel
    user_ids: list[str]

    def table(self, images: Tensor, titles: list[str], users: list[int]) -> dict[str, Tensor]:
        """U x N logits of every click model for ``users`` x ``images``."""
        n = len(images)
        cover = torch.arange(n).repeat(len(users))
        user = torch.tensor(users, dtype=torch.long).repeat_interleave(n)
        out = {name: click_logits(model, images, titles, cover, user).reshape(len(users), n)
               for name, model in (("evaluator", self.evaluator), ("stage1", self.stage1))}  # fmt: skip
        if self.oracle is not None:
            rows = self.oracle.user_index([self.user_ids[u] for u in users])
            with torch.no_grad():
                out["oracle"] = torch.cat([self.oracle.logit_matrix(images[s : s + 256], rows).float().cpu()
                                           for s in range(0, n, 256)], dim=1)  # fmt: skip
        return out


def oracle_probability(oracle: Oracle, images: Tensor, user_ids: list[str]) -> Tensor:
    """True click probabilities (K) of ``images`` (K) for ``user_ids`` (K), in chunks (the oracle stays on the CPU)."""
    with torch.no_grad():
        rows = oracle.user_index(user_ids)
        return torch.cat([oracle(images[s : s + 256], rows[s : s + 256]).float().cpu()
                          for s in range(0, len(images), 256)])  # fmt: skip


def score_set(swap: SwapSet, covers: dict[Pair, Tensor], titles: dict[int, str], graders: Graders,
              seed_covers: dict[Pair, Tensor] | None) -> dict[str, Any]:  # fmt: skip
    """One method's block on one pair set: win rates and margins, agreement with the oracle, distances.

    Args:
        swap: the pairs and their other users.
        covers: the method's covers at the common seed (every cell of ``swap``).
        titles: item_idx -> title.
        graders: the click models.
        seed_covers: the method's covers of ``swap.pairs`` at their own per-pair seed (the main evaluation's), for
            seed noise; None: unavailable.
    """
    own_cells, other_cells, users = swap.comparisons()
    own = torch.stack([covers[c] for c in own_cells])
    other = torch.stack([covers[c] for c in other_cells])
    names = [titles[i] for _, i in own_cells] * 2
    block: dict[str, Any] = {"pairs": len(swap.pairs), "comparisons": len(own_cells)}
    user = torch.tensor(users, dtype=torch.long).repeat(2)
    cover = torch.arange(2 * len(own_cells))
    diffs = {}
    for name, model in (("evaluator", graders.evaluator), ("stage1", graders.stage1)):
        p_own, p_other = torch.sigmoid(click_logits(model, torch.cat([own, other]), names, cover, user)).chunk(2)
        diffs[name] = p_own - p_other
        if name == "evaluator":
            block["evaluator"] = compare(p_own, p_other)
    if graders.oracle is not None:
        ids = [graders.user_ids[u] for u in users]
        p_own, p_other = oracle_probability(graders.oracle, own, ids), oracle_probability(graders.oracle, other, ids)
        block["oracle"] = compare(p_own, p_other)
        block["agreement"] = {name: sign_agreement(diffs[name], p_own - p_other) for name in ("stage1", "evaluator")}
    seeds = None
    if seed_covers is not None and all(c in seed_covers for c in swap.pairs):
        seeds = (torch.stack([covers[c] for c in swap.pairs]), torch.stack([seed_covers[c] for c in swap.pairs]))
    block["distance"] = distance_block((own, other), seeds)
    return block


def correlations(graders: Graders, image_sets: dict[str, tuple[Tensor, list[str]]], users: list[int]) -> dict:
    """``{"stage1" | "evaluator": {"per_user" | "interaction": {set: r}}}``: correlation over (user, cover) of each
    click model's per-user differences with the oracle's (``per_user_correlation``) on each set of covers."""
    out: dict[str, Any] = {model: {"per_user": {}, "interaction": {}} for model in ("stage1", "evaluator")}
    for set_name, (images, titles) in image_sets.items():
        table = graders.table(images, titles, users)
        for model in ("stage1", "evaluator"):
            out[model]["per_user"][set_name] = per_user_correlation(table[model], table["oracle"])
            out[model]["interaction"][set_name] = per_user_correlation(table[model], table["oracle"], interaction=True)
    return out


# ------------------------------------------------------------------------------------------------ the test
@dataclass
class UserSwapResult:
    """The report's ``user_swap`` block, what could not be measured (key -> reason) and the gallery section.

    Args:
        block: ``report["user_swap"]`` (docs/evaluation.md, "Personalization itself").
        unavailable: ``user_swap/...`` keys with their reasons, for ``report["unavailable"]``.
        gallery: the gallery's user-swap section (``icg.evaluation.swap_gallery.swap_section``), or None.
    """

    block: dict[str, Any]
    unavailable: dict[str, str]
    gallery: dict[str, Any] | None


def user_swap_test(
    dm: ICGDataModule,
    methods: dict[str, CoverMethod],
    covers: dict[str, dict | None],
    chosen: EvaluationSample,
    graders: Graders,
    settings: UserSwapSettings,
) -> UserSwapResult:
    """Generate every tested method's covers at the common seed and score them (module docstring).

    Args:
        dm: the DataModule (vocabularies, titles, reference covers).
        methods: the evaluation's methods; ``settings.methods`` are tested.
        covers: the main evaluation's covers (method -> {pair: cover}, each at its pair's own seed): seed noise.
        chosen: the evaluation's sample (its users, held-out pairs and downstream candidates).
        graders: the oracle, the evaluator and the stage-1 click model.
        settings: the test's options.
    """
    began = time.time()
    unavailable: dict[str, str] = {}
    sets = swap_sets(chosen, settings)
    g_users, g_items = gallery_cells(chosen, settings)
    gallery_pairs = [(u, i) for i in g_items for u in g_users]
    cells = list(dict.fromkeys([c for swap in sets.values() for c in swap.cells()] + gallery_pairs))
    tested, seconds = {}, {}
    for name in settings.methods:
        method = methods.get(name)
        if method is None or not takes_seeds(method):
            why = "no such method" if method is None else "its covers cannot be given explicit seeds"
            unavailable[f"user_swap/{name}"] = f"{why} (UserSwapSettings.methods)"
            continue
        start = time.time()
        tested[name] = generate_common(method, dm, cells, settings.batch_size)
        seconds[name] = time.time() - start
        log.info("user swap: %d covers of %s at the common seed in %.1f s", len(cells), name, seconds[name])
    titles = {i: str(dm.catalogue.titles[i]) for _, i in cells}
    block: dict[str, Any] = {"others": settings.others, "users": len(chosen.users), "covers": len(cells),
                             "generation_seconds": seconds}  # fmt: skip
    for set_name, swap in sets.items():
        if not swap.pairs or not all(swap.others):
            unavailable[f"user_swap/{set_name}"] = "needs pairs and at least 2 evaluated users"
            continue
        block[set_name] = {name: score_set(swap, tested[name], titles, graders, covers.get(name))
                           for name in tested}  # fmt: skip
        unavailable |= _undefined(set_name, block[set_name])
    if graders.oracle is None:
        unavailable["user_swap/oracle"] = "no hidden truth: oracle win rates and agreement need the synthetic platform"
    else:
        image_sets = {"reference": _reference_covers(dm, sorted({i for _, i in cells}))}
        image_sets |= {name: (torch.stack(list(c.values())), [titles[i] for _, i in c]) for name, c in tested.items()}
        block["agreement"] = correlations(graders, image_sets, chosen.users)
    gallery = _gallery(dm, tested, g_users, g_items, chosen, graders) if tested and g_items else None
    block["seconds"] = time.time() - began
    return UserSwapResult(block, unavailable, gallery)


def _undefined(set_name: str, rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Why a figure of a pair set's rows is null: agreement when the oracle ties everything, ratios without noise."""
    out = {}
    for method, row in rows.items():
        for model, value in row.get("agreement", {}).items():
            if value is None:
                out[f"user_swap/{set_name}/{method}/agreement/{model}"] = (
                    "the oracle ties every comparison (the covers do not depend on the user)"
                )
        for kind in ("rmse", "dssim"):
            if row["distance"][f"{kind}_ratio"] is None:
                out[f"user_swap/{set_name}/{method}/distance/{kind}_ratio"] = (
                    "no seed noise to compare with (the main evaluation has no covers of these pairs, or they are "
                    "identical at both seeds)"
                )
    return out


def _reference_covers(dm: ICGDataModule, items: list[int]) -> tuple[Tensor, list[str]]:
    cat = dm.catalogue
    return torch.stack([cat.decoder(cat.images[i]) for i in items]), [str(cat.titles[i]) for i in items]


def _gallery(dm: ICGDataModule, tested: dict[str, dict[Pair, Tensor]], users: list[int], items: list[int],
             chosen: EvaluationSample, graders: Graders) -> dict[str, Any]:  # fmt: skip
    """The gallery section: items (rows) x users (columns), each tested method's cover at the common seed, the click
    probability of that cover for its user and the mean of the other columns' covers for that user (the oracle's;
    the evaluator's on real data)."""
    grader = "oracle" if graders.oracle is not None else "evaluator"
    cells = [(u, i) for i in items for u in users]
    own, others = {}, {}
    for name, by_cell in tested.items():
        own[name], others[name] = [], []
        for i in items:
            images = torch.stack([by_cell[(u, i)] for u in users])
            p = torch.sigmoid(graders.table(images, [str(dm.catalogue.titles[i])] * len(users), users)[grader])
            n = len(users)  # p[v, w]: user v's click probability of user w's cover
            own[name] += p.diagonal().tolist()
            others[name] += ((p.sum(1) - p.diagonal()) / max(n - 1, 1)).tolist() if n > 1 else [float("nan")] * n
    held_out = set(chosen.main_pairs)
    return {
        "users": [graders.user_ids[u] for u in users],
        "items": [str(dm.catalogue.item_ids[i]) for i in items],
        "titles": [str(dm.catalogue.titles[i]) for i in items],
        "references": _reference_covers(dm, items)[0],
        "covers": {name: torch.stack([by_cell[c] for c in cells]) for name, by_cell in tested.items()},
        "own": own,
        "others": others,
        "score_label": "p" if grader == "oracle" else "eval p",
        "clicked": [c in held_out for c in cells],
    }


def format_user_swap(block: dict[str, Any]) -> list[str]:
    """``report.md``'s user-swap lines: one table row per (pair set, method), then the click models' agreement."""

    def num(value: Any, fmt: str = "{:.3f}") -> str:
        return "n/a" if value is None else fmt.format(value)

    lines = [
        "",
        f"User-swap test: each pair's cover vs the covers of the same item made for {block['others']} other users, one "
        "common seed per item, all scored for the pair's user (win rate: ties 1/2, 0.5 = no personalization); "
        "distances: between users' covers at the common seed (user) and one user's covers at two seeds (seed).",
        "",
        "| pairs | method | win oracle | ties | margin oracle | win evaluator | margin evaluator | stage-1 agrees | "
        "user RMSE | seed RMSE | ratio | user 1-SSIM | seed 1-SSIM | ratio |",
        "| --- | --- |" + " ---: |" * 12,
    ]
    for set_name in ("held_out", "candidates"):
        for method, row in block.get(set_name, {}).items():
            oracle, ev, dist = row.get("oracle", {}), row["evaluator"], row["distance"]
            lines.append(
                f"| {set_name} ({row['pairs']}) | {method} | {num(oracle.get('win_rate'))} | {num(oracle.get('ties'))} "
                f"| {num(oracle.get('margin'), '{:+.4f}')} | {num(ev['win_rate'])} | {num(ev['margin'], '{:+.4f}')} | "
                f"{num(row.get('agreement', {}).get('stage1'))} | {num(dist['user_rmse'])} | {num(dist['seed_rmse'])} "
                f"| {num(dist['rmse_ratio'], '{:.2f}')} | {num(dist['user_dssim'])} | {num(dist['seed_dssim'])} | "
                f"{num(dist['dssim_ratio'], '{:.2f}')} |"
            )
    for model, tables in block.get("agreement", {}).items():
        lines.append(
            f"\n{model} click model vs the oracle, correlation over (user, cover) of per-user differences: "
            + ", ".join(f"{name} {num(r)}" for name, r in tables["per_user"].items())
            + " (each user's mean removed too: "
            + ", ".join(f"{name} {num(r)}" for name, r in tables["interaction"].items())
            + ")."
        )
    return lines

"""ICG's evaluation on the paper's axes (Bian et al., EMNLP 2025): one table for the baselines and ICG.

``evaluate(...)`` generates covers for a sample of held-out (user, item) pairs with every method (``methods.py``),
scores them and writes ``report.json``, ``report.md``, ``gallery.html`` and TensorBoard hparams (``report.py``,
``gallery.py``). Axes (docs/evaluation.md defines every metric and its range):

* quality: the aesthetic reward; ImageReward when the reward bundle holds one (its weights were supplied);
* fidelity: the relevance reward and its title-match accuracy; CLIP image-title / image-reference similarity when
  ``clip_path`` is given; SSIM to the reference (no weights); LPIPS when an ``lpips`` scorer is given;
* personalization: the held-out user's click probability under an *evaluator* click model trained separately from
  the stage-1 model that served as reward (so the optimized model is not the grader); on the synthetic platform the
  oracle's true click probability; the stage-2 preference reward (the optimized one, shown for reference);
  similarity to the user's clicked covers; diversity across users for the same item;
* downstream recommendation: AUC/GAUC of the evaluator (the platform's click model, trained on the logged data) when
  each candidate's cover is the method's cover for that (user, candidate) -- on a sample of users and candidates,
  since every candidate needs a generated cover. The labels are the clicks the user would make on the covers shown:
  on the synthetic platform each (user, candidate, cover) is shown ``downstream_impressions`` times and clicks are
  drawn from the oracle (counterfactual, ``downstream_auc``/``gauc``). Logged clicks were caused by the *original*
  covers (a held-out positive is an item whose original cover the user clicked), so against them every regenerated
  cover can only lose signal; they are reported apart (``downstream_auc_logged``/``gauc_logged``) as a measure of
  fidelity to the original cover, and are all that real data offers (docs/evaluation.md, "Downstream").

A metric whose weights are absent is ``null`` in JSON with a reason under ``unavailable``; it is never faked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from icg.data.datamodule import EpochSampler, ICGDataModule
from icg.data.oracle import Oracle, user_tastes
from icg.errors import ConfigError
from icg.evaluation.covers import write_held_out_covers
from icg.evaluation.lpips import LPIPS
from icg.evaluation.methods import AlignmentMethod, CoverMethod, TitleOnlyMethod
from icg.evaluation.metrics import (
    bootstrap_lift,
    cosine_to_history,
    mean_pairwise_dissimilarity,
    ssim_to,
    title_match_accuracy,
)
from icg.evaluation.report import METRICS, write_report
from icg.lit.metrics import ClickMetrics
from icg.lit.preference import compare_click_models
from icg.models.image_encoders import TinyImageEncoder
from icg.models.preference import PreferenceModel
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import RewardBundle, load_reward_bundle
from icg.study.results import attach_user_appeal

log = logging.getLogger(__name__)
Pair = tuple[int, int]  # (user_idx, item_idx) in the DataModule's vocabularies
# Bounds that keep evaluation on one machine at PixelRec scale (docs/performance.md, "Evaluation at Pixel1M scale");
# the demo's platform (200 users, ~10k train clicks) is below both, so it is evaluated whole.
DEFAULT_MAX_USERS = 2_000  # users whose held-out rows the click-model comparisons score
DEFAULT_MAX_PAIRS = 200_000  # train positives the in-process evaluator learns from


# ------------------------------------------------------------------------------------------------ evaluator model
def train_evaluator(
    datamodule: ICGDataModule,
    epochs: int = 4,
    seed: int = 1,
    lr: float = 5e-3,
    batch_size: int = 256,
    max_pairs: int | None = None,
    device: torch.device | str = "cpu",
    users: np.ndarray | None = None,
) -> PreferenceModel:
    """A click model trained apart from stage 1 (other seed, other architecture) on the train split, in-process.

    Architecture: a ``PreferenceModel`` over a weight-free colour encoder (``TinyImageEncoder`` with no conv
    layers, 3 bins per colour axis), ``embed_dim=16``; item features are encoded once, then ``epochs`` passes of BCE
    on train clicks + the DataModule's resampled negatives, streamed in batches.

    Args:
        max_pairs: train on a seeded sample of at most this many train positives (each with its resampled
            negatives); None: no bound.
        device: where the model trains (and is returned).
        users: train on these users' positives only (sorted ``user_idx``; the users it will grade); None: every
            user. The model's user table then holds these users alone, at ``compact_users(users, ...)[user_idx]``:
            a 1M-row table would cost every optimizer step a dense update of all of it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = TinyImageEncoder(input_size=32, channels=[], color_bins=3)
        num_users = datamodule.num_users if users is None else len(users)
        model = PreferenceModel(encoder, num_users=num_users, embed_dim=16, hidden_dim=32).to(device)
    rows_of = compact_users(users, datamodule.num_users).to(device)  # DataModule user_idx -> the model's
    features = torch.zeros(datamodule.num_items, model.feature_dim, device=device)
    with torch.no_grad():
        for batch in datamodule.dataloader("train", "items", fields=("item_idx", "image"), batch_size=128):
            features[batch["item_idx"].to(device)] = model.encode_images(batch["image"].to(device))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    loader = _train_rows(datamodule, users, max_pairs, seed, batch_size)
    model.train()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model.score_features(features[batch["item_idx"]], rows_of[batch["user_idx"]])
            loss = F.binary_cross_entropy_with_logits(logits, batch["click"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(logits), count + len(logits)
        log.info("evaluator click model: epoch %d, train BCE %.4f", epoch, total / max(count, 1))
    return model.eval().requires_grad_(False)


class _SampledRows(Dataset):
    """Rows ``rows`` of an ``EpochSampler``-keyed dataset; keys ``epoch * len + i`` keep its per-epoch resampling."""

    def __init__(self, dataset: Dataset, rows: np.ndarray) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> dict:
        epoch, index = divmod(int(key), len(self.rows))
        return self.dataset[epoch * len(self.dataset) + int(self.rows[index])]


def _train_rows(
    datamodule: ICGDataModule, users: np.ndarray | None, max_pairs: int | None, seed: int, batch_size: int
) -> DataLoader:
    """The evaluator's shuffled train rows: every one, or those of ``users``' positives, at most ``max_pairs``."""
    fields = ("user_idx", "item_idx", "click")
    dataset = datamodule.dataset("train", "interactions", fields=fields)
    total = len(dataset.positions)
    chosen = np.arange(total)
    if users is not None:
        chosen = chosen[np.isin(datamodule.log.user[dataset.positions], users)]
    if max_pairs is not None and len(chosen) > max_pairs:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, size=max_pairs, replace=False))
    if len(chosen) == total:  # the whole train split, as DataModule serves it
        return datamodule.dataloader("train", "interactions", fields=fields, shuffle=True, batch_size=batch_size)
    rows = (chosen[:, None] * dataset.per_row + np.arange(dataset.per_row)).ravel()
    log.info("evaluator click model: %d of %d train positives (sampled users, max_pairs)", len(chosen), total)
    sampled = _SampledRows(dataset, rows)
    return DataLoader(sampled, batch_size=batch_size, sampler=EpochSampler(len(sampled), datamodule.seed),
                      num_workers=datamodule.num_workers)  # fmt: skip


def compact_users(users: np.ndarray | None, num_users: int) -> torch.Tensor:
    """DataModule ``user_idx`` -> row of a user table that holds ``users`` alone (sorted; -1: not there, the
    fallback row); the identity when ``users`` is None."""
    if users is None:
        return torch.arange(num_users)
    rows = torch.full((num_users,), -1, dtype=torch.long)
    rows[torch.as_tensor(np.asarray(users), dtype=torch.long)] = torch.arange(len(users))
    return rows


def sample_users(datamodule: ICGDataModule, split: str, max_users: int | None, seed: int) -> np.ndarray | None:
    """A seeded sample of ``max_users`` users with held-out rows in ``split`` (sorted ``user_idx``); None: all."""
    dataset = datamodule.dataset(split, "interactions", fields=("user_idx",))
    users = np.unique(datamodule.log.user[dataset.positions])
    if max_users is None or max_users >= len(users):
        return None
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


# ------------------------------------------------------------------------------------------------ pairs and batches
def pairs_batch(datamodule: ICGDataModule, pairs: list[Pair]) -> dict[str, Any]:
    """A ``pairs``-unit batch (reference covers decoded at the DataModule's size) for arbitrary (user, item) pairs."""
    cat = datamodule.catalogue
    users, items = [u for u, _ in pairs], [i for _, i in pairs]
    return {
        "user_idx": torch.tensor(users, dtype=torch.long),
        "user_id": [str(datamodule.user_ids[u]) for u in users],
        "item_idx": torch.tensor(items, dtype=torch.long),
        "item_id": [str(cat.item_ids[i]) for i in items],
        "title": [str(cat.titles[i]) for i in items],
        "image": torch.stack([cat.decoder(cat.images[i]) for i in items]),
    }


def _held_out_rows(datamodule: ICGDataModule) -> tuple[Any, int]:
    dataset = datamodule.dataset("test", "interactions", fields=("user_idx", "item_idx", "click", "history"))
    return dataset, dataset.per_row


def _index_map(vocabulary: Iterable[str], datamodule: ICGDataModule) -> torch.Tensor:
    """DataModule user_idx -> a model's user_idx (-1 where the model does not know the user)."""
    index = pd.Index([str(u) for u in vocabulary])
    return torch.from_numpy(index.get_indexer([str(u) for u in datamodule.user_ids]).astype(np.int64))


def generate(method: CoverMethod, datamodule: ICGDataModule, pairs: list[Pair], batch_size: int) -> dict:
    """``{pair: 3 x H x W cover}`` of ``method`` for every pair, in batches."""
    covers = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = method(pairs_batch(datamodule, chunk)).detach().float().cpu().clamp(0, 1)
        if images.shape[0] != len(chunk) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"a method returned covers of shape {tuple(images.shape)} for {len(chunk)} pairs")
        covers.update(zip(chunk, images, strict=True))
    return covers


# ------------------------------------------------------------------------------------------------ the evaluation
class _Scorer:
    """Every per-pair metric of a set of covers; optional scorers are None when their weights are absent."""

    def __init__(self, datamodule, bundle, evaluator, evaluator_users, stage1_users, oracle, clip, lpips, names,
                 device: torch.device | str = "cpu"):  # fmt: skip
        self.dm, self.bundle, self.evaluator, self.oracle = datamodule, bundle, evaluator, oracle
        self.evaluator_users, self.stage1_users = evaluator_users, stage1_users
        self.clip, self.lpips = clip, lpips
        self.aesthetic, self.relevance, self.preference, self.imagereward = names
        self.device = torch.device(device)

    @torch.no_grad()
    def per_pair(self, images: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Metric name -> B scores (only the metrics that are available), on the CPU."""
        out: dict[str, torch.Tensor] = {}
        cpu_images, cpu_reference = images, batch["image"]
        images, reference = images.to(self.device), cpu_reference.to(self.device)
        titles, user_idx = batch["title"], batch["user_idx"]
        if self.bundle is not None:
            stage1_users = self.stage1_users[user_idx].to(self.device)
            context = RewardContext(titles=titles, user_idx=stage1_users, reference=reference)
            raw = self.bundle(images, context).raw
            for metric, name in (
                ("aesthetic", self.aesthetic),
                ("relevance", self.relevance),
                ("preference_reward", self.preference),
                ("imagereward", self.imagereward),
            ):
                if name is not None and name in raw:
                    out[metric] = raw[name].float().cpu()
        if self.clip is not None:
            out["clip_title"] = self.clip["title"](images, RewardContext(titles=titles)).float().cpu()
            out["clip_reference"] = self.clip["reference"](images, RewardContext(reference=reference)).float().cpu()
        out["ssim_reference"] = ssim_to(cpu_images, cpu_reference)
        if self.lpips is not None:
            out["lpips_reference"] = torch.as_tensor(self.lpips(cpu_images, cpu_reference)).float().reshape(-1).cpu()
        if self.oracle is not None:  # the synthetic platform's truth stays on the CPU
            out["true_click_prob"] = self.oracle(cpu_images, self.oracle.user_index(batch["user_id"], "fallback"))
        logits = self.evaluator(images, self.evaluator_users[user_idx].to(self.device))
        out["evaluator_click_prob"] = torch.sigmoid(logits).float().cpu()
        return out

    def relevance_score(self) -> Callable | None:
        if self.bundle is None or self.relevance not in self.bundle.rewards:
            return None
        reward = self.bundle.rewards[self.relevance]
        return lambda images, titles: reward(images.to(self.device), RewardContext(titles=list(titles))).cpu()


def _unavailable(bundle, names, clip, lpips, oracle, have_relevance) -> dict[str, str]:
    missing: dict[str, str] = {}
    aesthetic, relevance, preference, imagereward = names
    in_bundle = set(bundle.rewards) if bundle is not None else set()
    if aesthetic not in in_bundle:
        missing["aesthetic"] = f"no reward named {aesthetic!r} in the reward bundle"
    if imagereward is None:
        missing["imagereward"] = "no ImageReward weights (the reward bundle holds no ImageRewardRelevance)"
    if relevance not in in_bundle:
        missing["relevance"] = f"no reward named {relevance!r} in the reward bundle"
    if not have_relevance:
        missing["title_match_acc"] = "needs the relevance reward"
    if preference not in in_bundle:
        missing["preference_reward"] = f"no reward named {preference!r} in the reward bundle"
    if clip is None:
        reason = "no CLIP weights given (clip_path)"
        missing["clip_title"] = missing["clip_reference"] = reason
    if lpips is None:
        missing["lpips_reference"] = "no LPIPS backbone weights given (lpips_backbone); nothing is downloaded"
    if oracle is None:
        missing["true_click_prob"] = "no hidden truth: only the synthetic platform has an oracle"
        missing["true_click_prob_candidates"] = missing["true_click_prob"]
        missing["downstream_auc"] = missing["downstream_gauc"] = (
            "needs the clicks users would make on the covers shown (the synthetic platform's oracle); see *_logged"
        )
    return missing


def _imagereward_name(bundle: RewardBundle | None) -> str | None:
    if bundle is None:
        return None
    from icg.models.rewards.imagereward import ImageRewardRelevance

    return next((n for n, r in bundle.rewards.items() if isinstance(r, ImageRewardRelevance)), None)


def evaluate(
    data_root: str | Path,
    stage1_ckpt: str | Path,
    methods: dict[str, CoverMethod],
    out_dir: str | Path,
    *,
    rewards: RewardBundle | str | Path | None = None,
    evaluator_ckpt: str | Path | None = None,
    clip_path: str | Path | None = None,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    image_size: int = 64,
    holdout: int = 1,
    eval_candidates: int = 20,
    num_users: int = 40,
    grid_users: int = 4,
    grid_items: int = 4,
    downstream_users: int = 10,
    downstream_negatives: int = 4,
    downstream_impressions: int = 20,
    treatment: str = "icg",
    baseline: str = "title_only",
    reward_names: tuple[str, str, str] = ("aesthetic", "relevance", "preference"),
    evaluator_epochs: int = 4,
    batch_size: int = 8,
    bootstrap_samples: int = 2000,
    seed: int = 0,
    started_at: float | None = None,
    tensorboard: bool = True,
    mode: str = "",
    study_db: str | Path | None = None,
    device: torch.device | str = "cpu",
    max_users: int | None = DEFAULT_MAX_USERS,
    max_pairs: int | None = DEFAULT_MAX_PAIRS,
) -> dict[str, Any]:
    """Score every method on held-out pairs and write ``report.json``, ``report.md``, ``gallery.html``.

    Args:
        data_root: the dataset folder (icg format); the synthetic platform adds the oracle.
        stage1_ckpt: the stage-1 click model (its test AUC/GAUC go under ``stage1``; it is not the grader).
        methods: method name -> cover generator (``icg.evaluation.methods``); at least ``treatment`` and
            ``baseline`` for the lift.
        out_dir: where the report, the gallery and its images are written.
        rewards: the stage-2 reward bundle or its checkpoint (aesthetic, relevance, preference and ImageReward
            scores); None leaves those metrics unavailable.
        evaluator_ckpt: a separately trained stage-1-style checkpoint to grade with; None trains one here
            (``train_evaluator``: another seed and architecture than stage 1).
        clip_path: a local CLIP folder for CLIP image-title / image-reference similarity (None: unavailable).
        lpips: ``(images, reference) -> B`` LPIPS distances with locally supplied weights (None: unavailable).
        image_size: side the reference covers are decoded at.
        holdout: interactions per user held out for test (and val); must equal the stages' ``data.holdout``.
        eval_candidates: sampled negatives per held-out positive (must match stage 1's for its AUC to compare).
        num_users: held-out users sampled (seeded); each contributes its held-out pairs.
        grid_users: users of the gallery grid (also the diversity sample).
        grid_items: items of the gallery grid (each generated for every grid user).
        downstream_users: users whose test candidates get generated covers for the downstream AUC/GAUC.
        downstream_negatives: sampled negatives per held-out positive kept for the downstream AUC/GAUC.
        downstream_impressions: times each downstream (user, candidate, cover) is shown to the oracle's simulated
            user (clicks drawn with common random numbers across methods, seeded).
        treatment: the method whose lift is reported (ICG).
        baseline: the method the lift and the relevance drop are relative to (title-only).
        reward_names: names of the aesthetic, relevance and preference rewards in the bundle.
        evaluator_epochs: epochs of the in-process evaluator.
        batch_size: covers generated per call.
        bootstrap_samples: resamples of the lift's confidence interval.
        seed: seed of the user sample, the evaluator and the bootstrap.
        started_at: ``time.time()`` when the whole run began (``minutes`` counts from it; default: this call).
        tensorboard: also write the table as TensorBoard hparams under ``out_dir/tensorboard``.
        mode: one sentence for the gallery's legend on how the methods start their covers.
        study_db: a blind pairwise study's database (``icg study``): its Bradley-Terry scores become the
            ``user_appeal`` row (None: unavailable).
        device: where the evaluator, the reward bundle, CLIP and the stage-1 model run (the methods bring their
            own device; the oracle and SSIM stay on the CPU).
        max_users: the click-model comparisons (stage 1, oracle, popularity; the evaluator's AUC) score the held-out
            rows of a seeded sample of this many users, plus the ``num_users`` evaluated ones (None: every user);
            the in-process evaluator then trains on those users' positives, the users it grades.
        max_pairs: at most this many train positives for the in-process evaluator (seeded sample; None: no bound).

    Returns:
        the report dict (see docs/evaluation.md): ``stage1``, ``evaluator``, ``methods``, ``reference_covers``,
        ``lift``, ``relevance_drop``, ``unavailable``, ``sample``, ``minutes``, ``files``.
    """
    start = time.time()
    if not methods:
        raise ValueError("evaluate: methods is empty; give at least one cover generator")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dm = ICGDataModule(str(data_root), image_size=image_size, holdout=holdout, eval_candidates=eval_candidates, seed=0)
    dm.setup("test")
    try:
        oracle = Oracle.from_dataset(data_root)
    except FileNotFoundError:
        oracle = None
        log.info("%s has no hidden truth: oracle metrics are unavailable", data_root)

    # ---- the sample's users (held-out positives of sampled users); the click models are compared on them and more
    rows, per_row = _held_out_rows(dm)
    base_users = dm.log.user[rows.positions]  # the user of each held-out positive (a "base" row), in order
    rng = np.random.default_rng(seed)
    candidates = np.unique(base_users)
    users = sorted(rng.choice(candidates, size=min(num_users, len(candidates)), replace=False).tolist())
    compared = sample_users(dm, "test", max_users, seed)  # None: every user (all the demo's 200)
    if compared is not None:
        compared = np.union1d(compared, users)

    stage1_model, stage1_ids = PreferenceModel.from_checkpoint(stage1_ckpt, "stage1_ckpt")
    stage1_model.to(device)
    stage1_users = _index_map(stage1_ids or dm.user_ids, dm)
    click_table = compare_click_models(dm, stage1_model, oracle, users=compared, user_rows=stage1_users)
    stage1 = {
        "auc": click_table["model"]["auc"],
        "gauc": click_table["model"]["gauc"],
        "oracle_auc": click_table["oracle"]["auc"] if oracle is not None else None,
        "oracle_gauc": click_table["oracle"]["gauc"] if oracle is not None else None,
        "popularity_auc": click_table["popularity"]["auc"],
        "popularity_gauc": click_table["popularity"]["gauc"],
    }
    if evaluator_ckpt is not None:
        evaluator, evaluator_ids = PreferenceModel.from_checkpoint(evaluator_ckpt, "evaluator_ckpt")
        evaluator = evaluator.to(device)
        evaluator_users, evaluator_source = _index_map(evaluator_ids or dm.user_ids, dm), str(evaluator_ckpt)
    else:
        evaluator = train_evaluator(dm, epochs=evaluator_epochs, seed=seed + 1, max_pairs=max_pairs, device=device,
                                    users=compared)  # fmt: skip
        evaluator_users = compact_users(compared, dm.num_users)  # its user table holds the compared users alone
        evaluator_source = "trained in-process (train_evaluator)"
    evaluator_table = compare_click_models(dm, evaluator, users=compared, user_rows=evaluator_users)["model"]
    evaluator_block = {"source": evaluator_source, "auc": evaluator_table["auc"], "gauc": evaluator_table["gauc"]}

    bundle = load_reward_bundle(rewards, "rewards") if isinstance(rewards, str | Path) else rewards
    if bundle is not None:
        bundle.to(device)
    names = (*reward_names, _imagereward_name(bundle))
    clip = None
    if clip_path is not None:
        from icg.models.rewards.clip_relevance import ClipRelevance

        clip = {
            mode: ClipRelevance(str(clip_path), mode=mode, config_key="clip_path").to(device)
            for mode in ("title", "reference")
        }
    scorer = _Scorer(dm, bundle, evaluator, evaluator_users, stage1_users, oracle, clip, lpips, names, device)

    # ---- the sample: held-out positives of sampled users, a users x items grid, downstream candidates
    bases_by_user = {u: np.flatnonzero(base_users == u).tolist() for u in users}
    main_rows = [rows[base * per_row] for u in users for base in bases_by_user[u]]
    main_pairs = [(int(r["user_idx"]), int(r["item_idx"])) for r in main_rows]
    grid_u = users[:grid_users]
    grid_i = list(dict.fromkeys(i for _, i in main_pairs))[:grid_items]
    grid_pairs = [(u, i) for u in grid_u for i in grid_i]
    down_rows = []
    for u in users[:downstream_users]:
        for base in bases_by_user[u]:
            down_rows += [rows[base * per_row + slot] for slot in range(min(per_row, 1 + downstream_negatives))]
    down_pairs = [(int(r["user_idx"]), int(r["item_idx"])) for r in down_rows]
    all_pairs = list(dict.fromkeys(main_pairs + grid_pairs + down_pairs))
    log.info(
        "evaluating %d methods on %d pairs (%d held-out, %d grid, %d downstream)",
        len(methods), len(all_pairs), len(main_pairs), len(grid_pairs), len(down_pairs),
    )  # fmt: skip

    covers = {"reference": None}
    timings = {}
    for name, method in methods.items():
        t0 = time.time()
        covers[name] = generate(method, dm, all_pairs, batch_size)
        timings[name] = time.time() - t0
        log.info("%s: %d covers in %.1f s", name, len(all_pairs), timings[name])

    # ---- per-pair scores of the held-out pairs and the grid
    batch_main = pairs_batch(dm, main_pairs)
    history = torch.stack([torch.as_tensor(r["history"]) for r in main_rows])  # P x L item_idx, -1 padded
    history_feats, history_mask = _history_features(dm, evaluator, history)
    relevance_score = scorer.relevance_score()

    def covers_of(name: str, pairs: list[Pair], batch: dict[str, Any]) -> torch.Tensor:
        return batch["image"] if name == "reference" else torch.stack([covers[name][p] for p in pairs])

    batch_grid = pairs_batch(dm, grid_pairs)
    batch_down = pairs_batch(dm, down_pairs)
    down_click = torch.tensor([float(r["click"]) for r in down_rows])
    down_group = torch.tensor([int(r["user_idx"]) for r in down_rows])
    # One uniform draw per (impression, candidate), shared by every method: click = draw < P(click | cover).
    impressions = torch.rand(downstream_impressions, len(down_rows), generator=torch.Generator().manual_seed(seed + 2))
    table, per_pair, grid_scores = {}, {}, {}
    for name in ["reference", *methods]:
        images = covers_of(name, main_pairs, batch_main)
        scores = scorer.per_pair(images, batch_main)
        with torch.no_grad():
            scores["history_similarity"] = cosine_to_history(
                evaluator.encode_images(images.to(device)).cpu(), history_feats, history_mask
            )
        per_pair[name] = scores
        row = {metric: _nanmean(values) for metric, values in scores.items()}
        if relevance_score is not None and len(set(batch_main["title"])) > 1:
            with torch.no_grad():
                row["title_match_acc"] = title_match_accuracy(relevance_score, images, batch_main["title"], seed=seed)
        grid_images = covers_of(name, grid_pairs, batch_grid)
        grid_scores[name] = scorer.per_pair(grid_images, batch_grid)
        if len(grid_u) >= 2:
            by_item = [grid_images[[k for k, (_, i) in enumerate(grid_pairs) if i == item]] for item in grid_i]
            row["diversity"] = float(np.mean([mean_pairwise_dissimilarity(x) for x in by_item]))
        row.update(_downstream(evaluator, evaluator_users, oracle, covers_of(name, down_pairs, batch_down), batch_down,
                               down_click, down_group, impressions))  # fmt: skip
        table[name] = {metric: row.get(metric) for metric in METRICS}

    unavailable = _unavailable(bundle, names, clip, lpips, oracle, relevance_score is not None)
    if len(grid_u) < 2:
        unavailable["diversity"] = "needs at least 2 grid users"
    lift: dict[str, Any] = {"true_click_prob": None, "ci_low": None, "ci_high": None}
    if oracle is not None and treatment in per_pair and baseline in per_pair:
        result = bootstrap_lift(
            per_pair[treatment]["true_click_prob"].numpy(),
            per_pair[baseline]["true_click_prob"].numpy(),
            batch_main["user_id"],
            num_samples=bootstrap_samples,
            seed=seed,
        )
        lift = {"true_click_prob": result.pop("value"), **result, "treatment": treatment, "baseline": baseline}
    else:
        unavailable["lift"] = f"needs the oracle and methods named {treatment!r} and {baseline!r}"
    relevance_drop = None
    acc_t, acc_b = (table.get(n, {}).get("title_match_acc") for n in (treatment, baseline))
    if acc_t is not None and acc_b:
        relevance_drop = 1.0 - acc_t / acc_b
    else:
        unavailable["relevance_drop"] = f"needs title_match_acc of {treatment!r} and {baseline!r}"

    report: dict[str, Any] = {
        "stage1": stage1,
        "evaluator": evaluator_block,
        "methods": {name: table[name] for name in methods},
        "reference_covers": table["reference"],
        "lift": lift,
        "relevance_drop": relevance_drop,
        "unavailable": unavailable,
        "sample": {
            "held_out_pairs": len(main_pairs),
            "users": len(users),
            "grid": [len(grid_u), len(grid_i)],
            "downstream_users": len(users[:downstream_users]),
            "downstream_rows": len(down_rows),
            "downstream_negatives_per_positive": min(per_row, 1 + downstream_negatives) - 1,
            "downstream_impressions": downstream_impressions if oracle is not None else 0,
            "seed": seed,
        },
        "generation_seconds": timings,
        "evaluation_minutes": (time.time() - start) / 60.0,
        "minutes": (time.time() - (started_at if started_at is not None else start)) / 60.0,
    }
    grid = {
        "users": [str(dm.user_ids[u]) for u in grid_u],
        "items": [str(dm.catalogue.item_ids[i]) for i in grid_i],
        "titles": [str(dm.catalogue.titles[i]) for i in grid_i],
        "pairs": grid_pairs,
        "covers": {name: covers_of(name, grid_pairs, batch_grid) for name in ["reference", *methods]},
        "scores": grid_scores,
        "user_notes": user_tastes(data_root),
        "mode": mode,
    }
    report["cover_manifest"] = str(write_held_out_covers(out / "covers", dm, main_pairs, covers))
    attach_user_appeal(report, study_db)
    write_report(report, out, grid=grid, tensorboard=tensorboard)
    return report


@torch.no_grad()
def _downstream(evaluator, evaluator_users, oracle, covers, batch, logged_click, group, impressions) -> dict:
    """Downstream AUC/GAUC of the evaluator on these covers: against logged clicks, and (with an oracle) against the
    clicks the user would make on these very covers (``impressions``: R x N uniform draws)."""
    device = next(evaluator.parameters()).device
    logits = evaluator(covers.to(device), evaluator_users[batch["user_idx"]].to(device)).cpu()
    metrics = ClickMetrics()
    metrics.update(logits, logged_click, group)
    logged = metrics.compute()
    out = {"downstream_auc_logged": float(logged["auc"]), "downstream_gauc_logged": float(logged["gauc"])}
    if oracle is not None:
        probs = oracle(covers, oracle.user_index(batch["user_id"], "fallback")).float().cpu()
        clicks = (impressions < probs).float()  # R x N
        repeats = clicks.shape[0]
        metrics = ClickMetrics()
        metrics.update(logits.repeat(repeats), clicks.reshape(-1), group.repeat(repeats))
        values = metrics.compute()
        out |= {"downstream_auc": float(values["auc"]), "downstream_gauc": float(values["gauc"])}
        # The user's true click probability on the candidates they did not click: items whose original cover did
        # not win them, where personalization is free of the held-out pairs' selection effect.
        unclicked = logged_click == 0
        if bool(unclicked.any()):
            out["true_click_prob_candidates"] = float(probs[unclicked].mean())
    return out


def _history_features(dm: ICGDataModule, evaluator: PreferenceModel, history: torch.Tensor):
    """Evaluator image features (P x L x F) of the clicked covers in ``history`` (item_idx, -1 padded) + mask."""
    mask = history >= 0
    items = sorted({int(i) for i in history[mask].tolist()})
    feats = torch.zeros(*history.shape, evaluator.feature_dim)
    if items:
        with torch.no_grad():
            encoded = {}
            for start in range(0, len(items), 64):
                chunk = items[start : start + 64]
                images = torch.stack([dm.catalogue.decoder(dm.catalogue.images[i]) for i in chunk])
                device = next(evaluator.parameters()).device
                encoded.update(zip(chunk, evaluator.encode_images(images.to(device)).cpu(), strict=True))
        for p, slot in mask.nonzero().tolist():
            feats[p, slot] = encoded[int(history[p, slot])]
    return feats, mask


def _nanmean(values: torch.Tensor) -> float | None:
    values = values.double()
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def evaluate_checkpoints(
    data_root: str,
    stage1_ckpt: str,
    stage3_ckpt: str,
    base_model: str,
    out_dir: str = "runs/demo",
    rewards_ckpt: str | None = None,
    no_user_ckpt: str | None = None,
    evaluator_ckpt: str | None = None,
    clip_path: str | None = None,
    lpips_backbone: str | None = None,
    baseline_guidance_scale: float = 1.0,
    image_size: int | None = None,
    holdout: int = 1,
    num_users: int = 40,
    downstream_users: int = 10,
    downstream_negatives: int = 4,
    seed: int = 0,
    started_at: float | None = None,
    study_db: str | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    max_users: int | None = DEFAULT_MAX_USERS,
    max_pairs: int | None = DEFAULT_MAX_PAIRS,
) -> dict[str, Any]:
    """The demo's evaluation from paths: title-only baseline, ICG without user refinement, ICG (and, when ICG is
    reference-guided, ICG from pure noise); every method in ICG's mode.

    Args:
        data_root: the dataset folder.
        stage1_ckpt: stage-1 checkpoint.
        stage3_ckpt: stage-3 (alignment) checkpoint: ICG, and ICG with the cold-start user for everyone.
        base_model: the base diffusion folder with its text encoder (SD 1.5, or the stand-in base model export); every
            method runs on it, ICG included (it replaces the folder the stage-3 checkpoints recorded).
        out_dir: where report.json, report.md and gallery.html go.
        rewards_ckpt: stage-2 checkpoint (None: the one the stage-3 checkpoint recorded).
        no_user_ckpt: a stage-3 ablation checkpoint trained without user refinement (None: ICG with the cold-start
            user embedding for everyone).
        evaluator_ckpt: separately trained click model to grade with (None: trained here).
        clip_path: local CLIP folder for the CLIP metrics.
        lpips_backbone: torchvision's AlexNet checkpoint (``alexnet-owt-7be5be79.pth``) for LPIPS to the reference
            (``icg.evaluation.lpips``; None: LPIPS unavailable).
        baseline_guidance_scale: classifier-free guidance of the title-only baseline.
        image_size: side the reference covers are decoded at (None: the stage-3 cover size, as its training data).
        holdout: interactions per user held out for test (and val); must equal the stages' ``data.holdout``.
        num_users: held-out users sampled.
        downstream_users: users of the downstream AUC/GAUC sample.
        downstream_negatives: negatives per held-out positive in that sample.
        seed: seed of the sample.
        started_at: ``time.time()`` when the whole run began (the report's ``minutes`` counts from it).
        study_db: a blind pairwise study's database over this evaluation's covers (``user_appeal`` row).
        device: where generation and scoring run (``cpu``, ``cuda``, ``cuda:1``).
        batch_size: covers generated per call of each method.
        max_users: users whose held-out rows the click-model comparisons score (seeded sample; None: all).
        max_pairs: train positives the in-process evaluator learns from (seeded sample; None: all).
    """
    device = _check_device(device)
    # Every method runs on the one base model given (checkpoints moved from the folder they were trained in included).
    icg = AlignmentMethod.from_checkpoint(stage3_ckpt, device=device, base_model=base_model)
    no_user = (AlignmentMethod.from_checkpoint(no_user_ckpt, "own", "no_user_ckpt", device, base_model)
               if no_user_ckpt else None)  # fmt: skip
    no_user = no_user or AlignmentMethod(icg.generator, user="fallback")
    title_only = TitleOnlyMethod.from_folder(
        base_model,
        num_steps=icg.num_steps,
        image_size=icg.image_size,
        guidance_scale=baseline_guidance_scale,
        strength=icg.mode_strength,  # every method in the table runs in the same mode
        seed=icg.seed,
        device=device,
    )
    methods = {"title_only": title_only, "icg_no_user": no_user, "icg": icg}
    if icg.mode_strength < 1:  # reference-guided: also show what ICG does from pure noise
        methods["icg_from_noise"] = AlignmentMethod(icg.generator, strength=1.0)
    rewards = rewards_ckpt or icg.generator.provenance.get("rewards_ckpt")
    strength = icg.mode_strength
    mode = (
        f"Every method starts each cover from the item's reference cover noised to strength {strength:g} "
        "(reference-guided), with the same noise per (user, item)"
        + ("; ICG from noise starts from pure noise." if strength < 1 else ".")
        if strength < 1
        else "Every method starts each cover from pure noise, the same noise per (user, item)."
    )
    return evaluate(
        data_root,
        stage1_ckpt,
        methods,
        out_dir,
        rewards=rewards,
        evaluator_ckpt=evaluator_ckpt,
        clip_path=clip_path,
        lpips=LPIPS(lpips_backbone) if lpips_backbone else None,
        image_size=image_size or icg.image_size,
        holdout=holdout,
        num_users=num_users,
        downstream_users=downstream_users,
        downstream_negatives=downstream_negatives,
        seed=seed,
        started_at=started_at,
        mode=mode,
        study_db=study_db,
        device=device,
        batch_size=batch_size,
        max_users=max_users,
        max_pairs=max_pairs,
    )


def _check_device(device: str) -> torch.device:
    """``--device`` as a torch device; a CUDA device this machine does not have is one line, before anything loads."""
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return chosen


def main(args: list[str] | None = None) -> int:
    """``python -m icg.evaluation.run --data_root ... --stage1_ckpt ... --stage3_ckpt ... --base_model ...``."""
    from jsonargparse import CLI, ArgumentParser

    from icg.errors import ShortParserErrors
    from icg.evaluation.report import format_markdown

    class Parser(ShortParserErrors, ArgumentParser):
        """Parser errors as one line (``icg.cli.main`` prints them)."""

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = CLI(evaluate_checkpoints, args=args, as_positional=False, parser_class=Parser)
    print(format_markdown(report))  # cli-output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

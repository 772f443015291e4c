"""New users without retraining: an embedding from a user's clicks, with the stage-1 click model's item tower frozen.

ICG (Bian et al., EMNLP 2025) refines every cover with the user's stage-1 embedding, so a user who joined after
training would get the cold-start fallback. Their clicks are usually known by then. Fold-in (the matrix-factorization
trick of fitting a new row against fixed item factors) fits that user's ID embedding ``e`` and bias ``b`` to their
clicks with everything else of the stage-1 model frozen, by the loss stage 1 trained on::

    logit(i) = <e + h, v_i> + w_b . v_i + b + b0        v_i = item tower(cover_i, title_i), frozen
    loss     = sum_i w_i BCE(logit(i), click_i) / sum_i w_i + l2 * |e|^2

``h`` is the stage-1 model's click-history term (``history_type="mean"``: a projection of the mean features of the
user's latest clicked covers; 0 otherwise), held fixed so that ``e`` is on the footing of the trained users' rows that
stage 3 learned with (it reads ID embeddings without history). Implicit data: every clicked item is a positive and
every other item a negative, weighted so that negatives weigh ``negatives_per_positive`` times the positives -- the
expectation of stage 1's sampled negatives (uniform, or by popularity like ``negative_sampling="popularity"``).
Explicit data: the user's rows as they are. ``l2`` is stage 1's ``user_l2`` prior. The problem is convex per user,
so full-batch L-BFGS from the fallback row solves it in a few dozen iterations, deterministically.

``icg users fold-in`` adds the new rows to an export's user table; docs/generation.md has the measurement on the
synthetic platform (users held out of stages 1-3 entirely).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from icg import ckpt
from icg.errors import UserError
from icg.generation.users import UserTable
from icg.models.preference import PreferenceModel

log = logging.getLogger(__name__)

PREFERENCE_STAGE = "preference"  # = icg.lit.preference.STAGE (inference code does not import training code)
DEFAULT_L2 = 0.01  # when stage 1 trained without a user prior (user_l2 = 0), fold-in still needs one
SAMPLINGS = ("uniform", "popularity")


class FoldInError(UserError, ValueError):
    """Fold-in cannot run as asked; the message names the option, file or user and what to do."""


@dataclass
class Stage1:
    """The frozen stage-1 model and what its training run recorded that fold-in needs.

    Args:
        model: the frozen click model.
        user_ids: its user vocabulary (row order of its user tables).
        user_l2: its stage's ``user_l2``.
        image_size: the DataModule's cover size it was trained on.
        negatives_per_positive: its DataModule's sampled negatives per positive.
        negative_sampling: ``uniform`` or ``popularity``.
        history_length: clicked covers in a history.
    """

    model: PreferenceModel
    user_ids: list[str]
    user_l2: float = 0.0
    image_size: int = 64
    negatives_per_positive: int = 4
    negative_sampling: str = "uniform"
    history_length: int = 10

    @classmethod
    def load(cls, path: str | Path, config_key: str = "--stage1_ckpt") -> Stage1:
        checkpoint = ckpt.load_stage_checkpoint(path, PREFERENCE_STAGE, config_key)
        model = ckpt.load_module(checkpoint, "model", prefix="model")
        if not isinstance(model, PreferenceModel):
            raise ckpt.CheckpointError(f"{config_key}: {path} holds a {type(model).__name__}, not a PreferenceModel")
        hparams = checkpoint.get("hyper_parameters", {})
        data = checkpoint.get("datamodule_hyper_parameters", {})
        return cls(
            ckpt.freeze(model),
            list(checkpoint[ckpt.ICG_KEY].get("user_ids", [])),
            user_l2=float(hparams.get("user_l2", 0.0)),
            image_size=int(data.get("image_size", 64)),
            negatives_per_positive=int(data.get("negatives_per_positive", 4)),
            negative_sampling=str(data.get("negative_sampling", "uniform")),
            history_length=int(data.get("history_length", 10)),
        )


@torch.no_grad()
def item_vectors(
    model: PreferenceModel, images: Sequence[str], titles: Sequence[str], image_size: int, batch_size: int = 256
) -> tuple[Tensor, Tensor, Tensor]:
    """The frozen item tower over a catalogue: item embeddings I x D, their user-independent logits I (``w_b . v +
    b0``) and the image features I x F (for history terms). Covers are decoded as the DataModule decodes them."""
    from icg.generation.generator import reference_batch

    device = next(model.parameters()).device
    vectors, biases, features = [], [], []
    for start in range(0, len(images), batch_size):
        pixels = reference_batch(list(images[start : start + batch_size]), image_size, device)
        feats = model.encode_images(pixels)
        titles_batch = list(titles[start : start + batch_size]) if model.title_encoder is not None else None
        v = model.item_embedding(feats, titles_batch)
        vectors.append(v.float().cpu())
        biases.append(model.item_bias(v).squeeze(-1).float().cpu())
        features.append(feats.float().cpu())
    return torch.cat(vectors), torch.cat(biases), torch.cat(features)


def history_terms(model: PreferenceModel, features: Tensor, recent: Sequence[Sequence[int]]) -> Tensor:
    """U x D: the click-history term of each user (their ``recent`` clicked items, newest first); 0 without one."""
    out = torch.zeros(len(recent), model.embed_dim)
    if model.history_proj is None:
        return out
    with torch.no_grad():
        for u, items in enumerate(recent):
            if len(items):
                out[u] = model.history_proj(features[list(items)].mean(0).to(model.history_proj.weight)).float().cpu()
    return out


def fold_in(
    vectors: Tensor,
    item_logit: Tensor,
    targets: Tensor,
    weights: Tensor,
    init: Tensor,
    init_bias: Tensor,
    history: Tensor | None = None,
    l2: float = DEFAULT_L2,
    steps: int = 50,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fit U users' ID embeddings and biases against frozen item vectors (the loss of the module docstring).

    Args:
        vectors: I x D item embeddings.
        item_logit: I user-independent logits (``w_b . v_i + b0``).
        targets: U x I clicks (1) and non-clicks (0).
        weights: U x I row weights (0: the item is not one of the user's rows).
        init: U x D starting embeddings (the fallback row).
        init_bias: U starting biases (the fallback's).
        history: U x D fixed history terms (None: none).
        l2: weight of ``|e|^2``.
        steps: L-BFGS iterations (full batch; the problem is convex per user).

    Returns:
        ``(embeddings U x D, biases U, final loss per user U)``.
    """
    e = init.detach().clone().float().requires_grad_(True)
    b = init_bias.detach().clone().float().requires_grad_(True)
    h = torch.zeros_like(e) if history is None else history.float()
    mass = weights.sum(1).clamp_min(1e-12)

    def per_user() -> Tensor:
        logits = (e + h) @ vectors.T + item_logit + b[:, None]
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (bce * weights).sum(1) / mass + l2 * e.pow(2).sum(1)

    optimizer = torch.optim.LBFGS([e, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = per_user().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return e.detach(), b.detach(), per_user()


def user_rows(
    clicks: dict[str, tuple[np.ndarray, np.ndarray]],
    num_items: int,
    implicit: bool,
    negatives_per_positive: int,
    popularity: np.ndarray | None = None,
) -> tuple[Tensor, Tensor]:
    """Targets and weights (U x I) of each user's fold-in rows, users in ``clicks`` order.

    Args:
        clicks: user -> (item indices, clicks 0/1) of their interactions.
        num_items: catalogue size.
        implicit: every interaction is a click; the other items are weighted negatives.
        negatives_per_positive: total negative weight per positive (implicit data).
        popularity: per-item click counts for popularity-weighted negatives (None: uniform).
    """
    targets = torch.zeros(len(clicks), num_items)
    weights = torch.zeros(len(clicks), num_items)
    for u, (items, labels) in enumerate(clicks.values()):
        if implicit:
            positive = np.zeros(num_items, bool)
            positive[items] = True
            negative = ~positive
            share = np.where(negative, 1.0 if popularity is None else 1.0 + popularity, 0.0)
            share = share / max(share.sum(), 1e-12) * negatives_per_positive * positive.sum()
            targets[u] = torch.from_numpy(positive.astype(np.float32))
            weights[u] = torch.from_numpy(np.where(positive, 1.0, share).astype(np.float32))
        else:
            targets[u, items] = torch.from_numpy(labels.astype(np.float32))
            weights[u, items] = 1.0
    return targets, weights


def fold_in_users(
    stage1: Stage1,
    data_root: str | Path,
    user_ids: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    l2: float | None = None,
    steps: int = 50,
    chunk: int = 256,
) -> tuple[list[str], Tensor, dict[str, Any]]:
    """Fold-in embeddings of users from their interactions in a dataset.

    Args:
        stage1: the frozen stage-1 model (the one the export's user table comes from).
        data_root: an icg dataset holding the users' clicks (docs/data.md).
        user_ids: the users to fold in (None: every user with a click there, except ``exclude``).
        exclude: users to leave out of the default set (those the export already knows).
        l2: the prior on the embedding (None: stage 1's ``user_l2``, or ``DEFAULT_L2`` when that was 0).
        steps: L-BFGS iterations per chunk of users.
        chunk: users fitted together (memory: chunk x items floats).

    Returns:
        ``(user ids, embeddings U x D, report)``; the report counts clicks and holds the settings used.

    Raises:
        FoldInError: a requested user has no click in the dataset.
    """
    from icg.data.schema import read_dataset

    items, interactions, meta = read_dataset(data_root)
    root = Path(data_root)
    index = {item: i for i, item in enumerate(items["item_id"])}
    # Rows `icg data validate` would reject (unknown item, click not 0/1) are left out rather than guessed at.
    click = pd.to_numeric(interactions["click"], errors="coerce")
    interactions = interactions[interactions["item_id"].isin(index) & click.isin([0, 1])]
    interactions = interactions.assign(item=interactions["item_id"].map(index), click=click.astype("Int64"),
                                       timestamp=pd.to_numeric(interactions["timestamp"], errors="coerce"))  # fmt: skip
    clicked = interactions[interactions["click"] == 1]
    if user_ids is None:
        skip = set(exclude)
        user_ids = sorted(u for u in clicked["user_id"].unique() if u not in skip)
    user_ids = [str(u) for u in user_ids]
    having = set(clicked["user_id"].unique())
    without = [u for u in user_ids if u not in having]
    if without:
        raise FoldInError(f"{len(without)} user(s) have no click in {root}: {', '.join(without[:5])}"
                          f"{' ...' if len(without) > 5 else ''}; fold-in needs clicks (they keep the cold-start "
                          "fallback)")  # fmt: skip
    if not user_ids:
        return [], torch.zeros(0, stage1.model.embed_dim), {"users": 0}
    model = stage1.model
    vectors, item_logit, features = item_vectors(
        model, [str(root / p) for p in items["image"]], list(items["title"]), stage1.image_size
    )
    if l2 is None:
        l2 = stage1.user_l2 if stage1.user_l2 > 0 else DEFAULT_L2
    if stage1.negative_sampling not in SAMPLINGS:
        raise FoldInError(f"--stage1_ckpt: negative_sampling {stage1.negative_sampling!r} is not one of {SAMPLINGS}")
    popularity = None
    if stage1.negative_sampling == "popularity":
        popularity = np.bincount(clicked["item"].to_numpy(), minlength=len(items)).astype(np.float64)
    rows = interactions[interactions["user_id"].isin(set(user_ids))].sort_values(["user_id", "timestamp", "item"])
    grouped = {u: g for u, g in rows.groupby("user_id", sort=False)}
    with torch.no_grad():
        fallback = model.user_embedding_table.weight[model.fallback_index].float().cpu()
        fallback_bias = model.user_bias.weight[model.fallback_index, 0].float().cpu()
    embeddings, losses = [], []
    for start in range(0, len(user_ids), chunk):
        chunk_ids = user_ids[start : start + chunk]
        clicks = {u: (grouped[u]["item"].to_numpy(), grouped[u]["click"].to_numpy(dtype=int)) for u in chunk_ids}
        targets, weights = user_rows(clicks, len(items), bool(meta.implicit), stage1.negatives_per_positive,
                                     popularity)  # fmt: skip
        recent = [list(reversed(items_[labels == 1][-stage1.history_length :])) for items_, labels in clicks.values()]
        history = history_terms(model, features, recent)
        n = len(chunk_ids)
        e, _, loss = fold_in(vectors, item_logit, targets, weights, fallback.expand(n, -1), fallback_bias.expand(n),
                             history, l2=l2, steps=steps)  # fmt: skip
        embeddings.append(e)
        losses.append(loss)
    counts = clicked[clicked["user_id"].isin(set(user_ids))].groupby("user_id").size()
    report = {
        "users": len(user_ids),
        "clicks": {"min": int(counts.min()), "median": float(counts.median()), "max": int(counts.max())},
        "l2": l2,
        "steps": steps,
        "negatives_per_positive": stage1.negatives_per_positive,
        "negative_sampling": stage1.negative_sampling,
        "mean_loss": float(torch.cat(losses).mean()),
    }
    return user_ids, torch.cat(embeddings), report


def check_export_matches(stage1: Stage1, users: Any, config_key: str = "--stage1_ckpt") -> None:
    """Refuse a stage-1 model whose embeddings are not the ones the export's user table was read from."""
    model = stage1.model
    if users.embed_dim != model.embed_dim:
        raise FoldInError(f"{config_key}: user embeddings of width {model.embed_dim}, but the export's are "
                          f"{users.embed_dim} wide: not the stage-1 model of this export")  # fmt: skip
    vocabulary = UserTable.of_ids(stage1.user_ids)
    shared = [u for u in users.user_ids if u in vocabulary][:64]
    with torch.no_grad():
        rows = torch.cat([vocabulary.index_map(shared), torch.tensor([-1])])
        theirs = model.user_embedding(rows).float().cpu()
    ours = torch.cat([users.lookup(shared)[0].cpu(), users.fallback(1).cpu()]) if shared else users.fallback(1).cpu()
    if not torch.allclose(theirs, ours, atol=1e-5):
        raise FoldInError(
            f"{config_key}: its user embeddings differ from the export's user table: not the stage-1 model this export "
            "was made from (give the preference_ckpt its provenance names)"
        )


def fold_in_export(
    export: str | Path,
    data_root: str | Path,
    stage1_ckpt: str | Path | None = None,
    users: Sequence[str] | None = None,
    out: str | Path | None = None,
    refit: bool = False,
    l2: float | None = None,
    steps: int = 50,
) -> dict[str, Any]:
    """``icg users fold-in``: add users with clicks in ``data_root`` to an export's user table.

    Args:
        export: the ``icg export`` folder.
        data_root: the dataset with the new users' clicks.
        stage1_ckpt: the stage-1 checkpoint the export's users come from (default: the one its provenance names).
        users: users to fold in (default: every user with clicks that the export does not know).
        out: the new export folder to write (required; it must not exist yet or be empty, and is never ``export``
            itself: the input export is never written to).
        refit: allow users the export already knows (their trained embedding is replaced by a fold-in).
        l2: prior on the new embeddings (default: stage 1's ``user_l2``).
        steps: L-BFGS iterations.

    Returns:
        a report: users added, their click counts, the settings used, and the export folder written.
    """
    from icg.generation.export import check_new_export, read_config, write_users
    from icg.generation.users import UserTable

    if out is None:
        raise FoldInError("--out: give a new folder for the extended export (the input export is never written to)")
    config = read_config(export, "--export")
    check_new_export(export, out)  # before any work: the input export is never written to
    table = UserTable.load(export, count=config["users"]["count"])
    stage1_ckpt = stage1_ckpt or config.get("provenance", {}).get("preference_ckpt")
    if stage1_ckpt is None:
        raise FoldInError(f"--stage1_ckpt: {export} does not record its stage-1 checkpoint; pass --stage1_ckpt")
    stage1 = Stage1.load(stage1_ckpt)
    check_export_matches(stage1, table)
    if users is not None:
        known = [u for u in users if u in table]
        if known and not refit:
            raise FoldInError(f"--users: {len(known)} user(s) already in the export ({', '.join(known[:5])}); their "
                              "trained embeddings stay unless --refit true")  # fmt: skip
    ids, embeddings, report = fold_in_users(stage1, data_root, users, exclude=table.user_ids, l2=l2, steps=steps)
    target = Path(out)
    note = {"users": len(ids), "stage1_ckpt": str(Path(stage1_ckpt).resolve()),
            "data_root": str(Path(data_root).resolve()), "l2": report.get("l2"), "steps": steps}  # fmt: skip
    if ids:
        write_users(export, table.extend(ids, embeddings), note, out=target)
        log.info("folded in %d users: %s", len(ids), json.dumps(report))
    return {**report, "export": str(target), "user_ids": ids}

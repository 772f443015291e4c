"""New users without retraining: ``icg users fold-in`` fits an embedding from a user's clicks."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from icg.ckpt import CheckpointError
from icg.cli import main
from icg.commands.generate import generate
from icg.generation import CoverGenerator, UserTable
from icg.generation.export import CONFIG, USERS_IDS, WEIGHTS
from icg.generation.fold_in import FoldInError, Stage1, fold_in, fold_in_export, user_rows
from icg.output_lock import OutputLock
from tests.helpers.cli import run_cli
from tests.helpers.generation import write_tiny_export

NEW = ["u0003", "u0011", "u0020"]  # in the tiny platform and in stage 1, left out of the export: "new" users


def test_fold_in_recovers_a_users_taste_from_their_clicks():
    """Clicks drawn from known user vectors over fixed item vectors: the fit points where the truth does."""
    g = torch.Generator().manual_seed(0)
    items, dim, users = 300, 6, 40
    vectors = torch.randn(items, dim, generator=g)
    item_logit = torch.full((items,), -1.5)
    truth = 1.5 * torch.randn(users, dim, generator=g)
    prob = torch.sigmoid(truth @ vectors.T + item_logit)
    clicked = torch.rand(users, items, generator=g) < prob
    clicks = {str(u): (np.flatnonzero(clicked[u].numpy()), np.ones(int(clicked[u].sum()), int)) for u in range(users)}
    targets, weights = user_rows(clicks, items, implicit=True, negatives_per_positive=4)
    assert torch.allclose((weights * (1 - targets)).sum(1), 4 * targets.sum(1))  # negatives weigh 4x the positives
    start, start_bias = torch.zeros(users, dim), torch.zeros(users)
    fitted, _, loss = fold_in(vectors, item_logit, targets, weights, start, start_bias, l2=0.01, steps=100)
    before = _loss(start, start_bias, vectors, item_logit, targets, weights, 0.01)
    assert (loss < before).all()
    cosine = F.cosine_similarity(fitted, truth, dim=1)
    assert cosine.mean() > 0.9 and cosine.min() > 0.6, cosine
    again, _, _ = fold_in(vectors, item_logit, targets, weights, start, start_bias, l2=0.01, steps=100)
    assert torch.equal(again, fitted)  # deterministic


def _loss(e, b, vectors, item_logit, targets, weights, l2):
    logits = e @ vectors.T + item_logit + b[:, None]
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (bce * weights).sum(1) / weights.sum(1) + l2 * e.pow(2).sum(1)


@pytest.fixture()
def stage1_export(tiny_stage1_ckpt, tmp_path):
    """An export whose user table is the tiny stage-1 model's, without the users in NEW."""
    stage1 = Stage1.load(tiny_stage1_ckpt)
    table = UserTable.from_preference_model(stage1.model, stage1.user_ids)
    keep = [u for u in table.user_ids if u not in NEW]
    users = UserTable(keep, torch.cat([table.lookup(keep)[0], table.fallback(1)]))
    return write_tiny_export(tmp_path / "export", users, provenance={"preference_ckpt": str(tiny_stage1_ckpt)})


def test_icg_users_fold_in_adds_new_users_to_the_export(stage1_export, tiny_platform, tmp_path, capsys):
    weights = (stage1_export / WEIGHTS).read_bytes()
    before = UserTable.load(stage1_export)
    # Covers made before: the new users get the cold-start fallback.
    pairs = tmp_path / "pairs.csv"
    interactions = pd.read_parquet(tiny_platform / "interactions.parquet")
    chosen = interactions[interactions["user_id"].isin([NEW[0], "u0000"])].groupby("user_id").head(3)
    chosen[["user_id", "item_id"]].to_csv(pairs, index=False)
    common = dict(data_root=str(tiny_platform), progress_bar=False)
    first = generate(str(stage1_export), str(pairs), str(tmp_path / "out"), **common)
    assert first["fallback"] == 3

    ids, table = (stage1_export / USERS_IDS).read_bytes(), (stage1_export / "users.safetensors").read_bytes()
    extended = tmp_path / "export_v2"
    run_cli("users", "fold-in", "--export", stage1_export, "--data_root", tiny_platform,
            "--out", extended)  # fmt: skip  # stage 1 from the export's provenance
    assert f"{len(NEW)} user(s) folded in" in capsys.readouterr().out
    assert (stage1_export / USERS_IDS).read_bytes() == ids  # the input export is never written to
    assert (stage1_export / "users.safetensors").read_bytes() == table
    after = UserTable.load(extended)
    assert after.user_ids == before.user_ids + NEW
    assert torch.equal(after.embeddings[: len(before)], before.embeddings[:-1])  # trained users untouched
    assert torch.equal(after.embeddings[-1], before.embeddings[-1])  # fallback untouched
    assert not torch.allclose(after.lookup(NEW)[0], after.fallback(3))  # the new users have their own
    config = json.loads((extended / CONFIG).read_text())
    assert config["users"]["count"] == len(after) and config["provenance"]["fold_in"][0]["users"] == len(NEW)
    assert (extended / WEIGHTS).read_bytes() == (stage1_export / WEIGHTS).read_bytes() == weights
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    gen = CoverGenerator.from_pretrained(extended)
    image = sorted((tiny_platform / "images").glob("*.png"))[0]
    assert gen(NEW, ["Red star"] * 3, [image] * 3).fallback == [False] * 3
    # The earlier run's fallback covers of now-known users are made again; the others are kept.
    second = generate(str(extended), str(pairs), str(tmp_path / "out"), **common)
    assert (second["made"], second["fallback"]) == (first["fallback"], 0)


def test_fold_in_refuses_what_it_cannot_do(stage1_export, tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(FoldInError, match=r"already in the export \(u0000\).*--refit true"):
        fold_in_export(stage1_export, tiny_platform, users=["u0000"], out=out)
    with pytest.raises(FoldInError, match="1 user\\(s\\) have no click in .*: ghost"):
        fold_in_export(stage1_export, tiny_platform, users=["ghost"], out=out)
    with pytest.raises(CheckpointError, match="'rewards' stage.*'preference' stage checkpoint"):
        fold_in_export(stage1_export, tiny_platform, stage1_ckpt=tiny_stage2_ckpt, out=out)
    stranger = write_tiny_export(tmp_path / "other", UserTable(["a", "b"], torch.randn(3, 8)))
    with pytest.raises(FoldInError, match="--stage1_ckpt: its user embeddings differ from the export's"):
        fold_in_export(stranger, tiny_platform, stage1_ckpt=tiny_stage1_ckpt, out=out)
    with pytest.raises(FoldInError, match="does not record its stage-1 checkpoint"):
        fold_in_export(stranger, tiny_platform, out=out)
    with pytest.raises(FoldInError, match="--out: give a new folder"):
        fold_in_export(stage1_export, tiny_platform, users=NEW[:1])
    before = {p.name: p.read_bytes() for p in stage1_export.iterdir()}
    link = tmp_path / "link"
    link.symlink_to(stage1_export)
    for same in (stage1_export, tmp_path / "." / "export", stage1_export / "inside", link):
        with pytest.raises(Exception, match="--out: .* (is the input export|is a symbolic link)"):
            fold_in_export(stage1_export, tiny_platform, users=NEW[:1], out=str(same))
    assert {p.name: p.read_bytes() for p in stage1_export.iterdir()} == before  # refused before writing anything
    assert not list(stage1_export.rglob("inside"))
    run_cli("users", "fold-in", "--export", stage1_export, "--data_root", tiny_platform, "--users", ",".join(NEW[:2]),
            "--out", tmp_path / "two")  # fmt: skip  # the ids as one comma-separated word
    assert UserTable.load(tmp_path / "two").user_ids[-2:] == NEW[:2]
    ids = (stage1_export / USERS_IDS).read_text()
    (stage1_export / "pytorch_lora_weights.safetensors").write_bytes(b"a file the export format may hold")
    copy = tmp_path / "copy"
    shutil.copytree(stage1_export, copy)
    report = fold_in_export(stage1_export, tiny_platform, users=NEW[:1], out=str(tmp_path / "new_export"))
    assert report["user_ids"] == NEW[:1] and (stage1_export / USERS_IDS).read_text() == ids  # the input untouched
    assert json.loads((tmp_path / "new_export" / USERS_IDS).read_text())[-1] == NEW[0]
    lora = (tmp_path / "new_export" / "pytorch_lora_weights.safetensors").read_bytes()
    assert lora == b"a file the export format may hold"  # every other file of the export comes along
    with pytest.raises(Exception, match="exists and is not empty"):
        fold_in_export(stage1_export, tiny_platform, users=NEW[1:2], out=str(copy))


def test_a_second_fold_in_into_the_same_out_is_refused_naming_the_first(stage1_export, tiny_platform, tmp_path,
                                                                        capsys):  # fmt: skip
    out = tmp_path / "v2"
    first = OutputLock(out, "icg users fold-in")  # another fold-in, still writing --out
    first.acquire()
    try:
        words = ["users", "fold-in", "--export", stage1_export, "--data_root", tiny_platform, "--out", out]
        assert main([str(w) for w in words]) == 2
        err = capsys.readouterr().err.strip()
        assert (
            len(err.splitlines()) == 1
            and f"another run writes this folder: icg users fold-in (pid {os.getpid()}" in err
        )
    finally:
        first.release()
    assert not out.exists() and not [p for p in stage1_export.iterdir() if p.name.startswith(".")]

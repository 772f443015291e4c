"""Segments, pools and picks (issue 21): ``icg generate --segments`` / ``--pool N`` share covers per item.

Tiny fixtures: 5 users known to stage 1 and the export plus one stranger, 2 items; K = 2 segments.
"""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from icg.cli import main
from icg.commands.generate import generate
from icg.cover_manifest import read_manifest
from icg.generation import CoverGenerator, UserTable
from icg.generation.fold_in import Stage1
from icg.generation.pairs import read_pairs
from icg.generation.picking import ClickScorer
from icg.generation.pools import load_cover
from icg.generation.seeds import candidate_seeds, pair_seed
from icg.generation.segments import segment_export
from tests.helpers.generation import write_tiny_export

KNOWN = ["u0000", "u0001", "u0002", "u0003", "u0004"]
PAIR_USERS = [*KNOWN, "stranger"]
ITEMS = ["i00001", "i00002"]


@pytest.fixture(scope="module")
def export(tiny_stage1_ckpt, tmp_path_factory):
    """An export whose users are the tiny stage-1 model's first five (the click model knows them)."""
    stage1 = Stage1.load(tiny_stage1_ckpt)
    table = UserTable.from_preference_model(stage1.model, stage1.user_ids)
    users = UserTable(KNOWN, torch.cat([table.lookup(KNOWN)[0], table.fallback(1)]))
    folder = tmp_path_factory.mktemp("pools") / "export"
    return write_tiny_export(folder, users, provenance={"preference_ckpt": str(tiny_stage1_ckpt)})


@pytest.fixture(scope="module")
def segmented(export):
    out = export.parent / "segments"
    segment_export(export, 2, out, seed=0)
    return out


@pytest.fixture(scope="module")
def pairs(export):
    path = export.parent / "pairs.csv"
    pd.DataFrame([(u, i) for i in ITEMS for u in PAIR_USERS], columns=["user_id", "item_id"]).to_csv(path, index=False)
    return path


def run(export, pairs, out, tiny_platform, **kwargs):
    return generate(str(export), str(pairs), str(out), data_root=str(tiny_platform), progress_bar=False, **kwargs)


def table(path) -> pd.DataFrame:
    """A parquet file with its nulls as None (pandas reads a null string as NaN)."""
    frame = pd.read_parquet(path)
    return frame.astype(object).where(frame.notna(), None)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_segments_make_k_covers_per_item_shared_by_each_segments_users(segmented, pairs, tiny_platform, tmp_path):
    out = tmp_path / "out"
    summary = run(segmented, pairs, out, tiny_platform, segments=True, batch_size=2)
    # 2 segments + the stranger's cold-start cover per item: 6 covers for 12 pairs; the MLLM reads each item once
    assert (summary["mode"], summary["covers"], summary["covers_made"]) == ("segments", 12, 6)
    assert summary["pool_covers"] == 6
    assert (summary["mllm_calls"], summary["fallback"]) == (len(ITEMS), len(ITEMS))
    assert len({p.name for p in (out / "covers").rglob("*.png")}) == 6
    pool = table(out / "pool.parquet")
    assert len(pool) == 6 and list(pool.columns) == ["item_id", "slot", "segment", "seed", "cover"]
    segment_of = dict(pd.read_parquet(segmented / "segments.parquet")[["user_id", "segment"]].values)
    assert dict(pd.read_parquet(out / "segments.parquet").values) == segment_of
    by_slot = {(r.item_id, r.slot): r for r in pool.itertuples()}
    picks = table(out / "picks.parquet")
    assert pq.read_schema(out / "picks.parquet").names == ["user_id", "item_id", "slot", "cover", "score", "segment",
                                                           "fallback"]  # fmt: skip
    assert picks["score"].isna().all() and pq.read_schema(out / "pool.parquet").field("segment").type == "string"
    entries = read_manifest(out)
    assert [(e.user_id, e.item_id) for e in entries] == [(u, i) for i in ITEMS for u in PAIR_USERS]
    for entry, pick in zip(entries, picks.itertuples(), strict=True):
        row = by_slot[(pick.item_id, pick.slot)]
        assert entry.file == out / row.cover == out / pick.cover  # each pair points at its segment's cover
        assert entry.extra["slot"] == pick.slot and entry.extra["segment"] == row.segment == pick.segment
        expected = segment_of.get(entry.user_id)  # None: the stranger gets the cold-start cover
        assert row.segment == expected and pick.fallback == entry.extra["fallback"] == (expected is None)
        assert row.slot == (int(expected.split("/")[1]) if expected else 2)
    # each pool cover is the one CoverGenerator draws for the segment (or the cold-start user) and the item
    found, _ = read_pairs(pairs, tiny_platform)
    item = {p.item_id: p for p in found}
    gen = CoverGenerator.from_pretrained(segmented)
    members = [r.segment or "" for r in pool.itertuples()]  # "": unknown to the table, so the cold-start row
    covers = gen(members, [item[i].title for i in pool["item_id"]], [item[i].image for i in pool["item_id"]],
                 item_ids=list(pool["item_id"]))  # fmt: skip
    for r, image, seed in zip(pool.itertuples(), covers.images, covers.seeds, strict=True):
        assert np.array_equal(pixels(out / r.cover), np.asarray(image)) and r.seed == seed
    again = run(segmented, pairs, out, tiny_platform, segments=True, batch_size=2)  # resumes: nothing drawn again
    assert (again["made"], again["kept"], again["mllm_calls"], again["covers_made"]) == (0, 6, 0, 0)
    assert read_manifest(out) == entries


def test_pool_and_pick_gives_each_user_the_pool_cover_the_click_model_scores_highest(
    export, segmented, pairs, tiny_platform, tiny_stage1_ckpt, tmp_path
):
    out = tmp_path / "pool"
    summary = run(export, pairs, out, tiny_platform, pool=3)  # a plain export: 3 cold-start covers per item
    assert (summary["mode"], summary["covers_made"], summary["mllm_calls"]) == ("pool", 6, len(ITEMS))
    settings = json.loads((out / "generate.json").read_text())
    assert (settings["mode"], settings["pool"]) == ("pool", 3) and "export_weights" in settings
    stats = json.loads((out / "generate.stats.json").read_text())
    assert (stats["mllm_calls"], stats["covers_made"]) == (len(ITEMS), 6)
    pool = pd.read_parquet(out / "pool.parquet")
    assert pool["segment"].isna().all() and sorted(pool["slot"]) == [0, 0, 1, 1, 2, 2]
    for item in ITEMS:  # N distinct seeds of the cold-start user
        own = pair_seed(5, "", item)
        assert list(pool[pool.item_id == item]["seed"]) == [candidate_seeds([own], c)[0] for c in range(3)]
    scorer = ClickScorer.from_checkpoint(tiny_stage1_ckpt)
    titles = {p.item_id: p.title for p in read_pairs(pairs, tiny_platform)[0]}
    picks = pd.read_parquet(out / "picks.parquet")
    chosen = set()
    for pick in picks.itertuples():
        rows = pool[pool.item_id == pick.item_id].sort_values("slot")
        images = torch.stack([load_cover(out / c) for c in rows["cover"]])
        scores = scorer(images, [pick.user_id] * len(rows), [titles[pick.item_id]] * len(rows))
        assert pick.slot == int(rows["slot"].iloc[int(scores.argmax())])  # the best pool cover for this user
        assert pick.score == pytest.approx(float(scores.max()), abs=1e-6)
        assert pick.fallback == (pick.user_id not in KNOWN)
        chosen.add((pick.item_id, pick.slot))
    assert len(chosen) > len(ITEMS)  # users of one item do not all get the same cover
    lines = read_manifest(out)
    assert [e.file for e in lines] == [out / c for c in picks["cover"]]
    both = run(segmented, pairs, tmp_path / "both", tiny_platform, pool=2)  # K segments x N seeds per item
    assert (both["pool_covers"], both["covers_made"], both["mllm_calls"]) == (2 * 2 * len(ITEMS), 8, len(ITEMS))
    assert set(pd.read_parquet(tmp_path / "both" / "pool.parquet")["segment"]) == {"segment/0", "segment/1"}


def test_the_mllm_reads_each_item_of_a_batch_once_and_the_covers_do_not_change(export, tmp_path):
    gen = CoverGenerator.from_pretrained(export)
    titles = ["Red star", "A much longer title about blue circles", "Red star", "Green", "Green"]
    refs = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    refs[2], refs[4] = refs[0], refs[3]
    keys = [("a", "Red star", "a.png"), ("b", titles[1], "b.png"), ("a", "Red star", "a.png"), ("c", "Green", "c.png"),
            ("c", "Green", "c.png")]  # fmt: skip
    before = gen.mllm_calls
    with torch.no_grad():
        shared = gen.item_features(titles, refs, keys)
        assert gen.mllm_calls - before == 3  # distinct items
        per_pair = gen.item_features(titles, refs)
    assert gen.mllm_calls - before == 3 + 5
    assert torch.equal(shared, per_pair)  # the same padding as the batch's rows: the same features


def _fails(capsys, words) -> str:
    assert main([str(w) for w in words]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_bad_segment_and_pool_options_are_one_line(export, segmented, pairs, tiny_platform, tmp_path, capsys):
    words = ["generate", "--pairs", pairs, "--data_root", tiny_platform, "--out", tmp_path / "out", "--progress_bar",
             "false"]  # fmt: skip
    line = _fails(capsys, [*words, "--export", export, "--segments", "true"])
    assert line.startswith(f"icg generate: --segments: {export} is not a segment export (no segments.parquet)")
    line = _fails(capsys, [*words, "--export", export, "--pool", "-1"])
    assert line.startswith("icg generate: --pool must be >= 0") and line.endswith("got -1")
    line = _fails(capsys, [*words, "--export", segmented, "--pool", "2", "--candidates", "2"])
    assert line.startswith("icg generate: --candidates 2 picks per pair; with --pool")
    bare = write_tiny_export(tmp_path / "bare", UserTable(KNOWN, torch.randn(6, 8)))  # records no stage-1 model
    line = _fails(capsys, [*words, "--export", bare, "--pool", "2"])
    assert line.startswith("icg generate: --pool 2 needs the stage-1 click model to pick with")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_ddp_ranks_make_the_same_pool_and_picks_as_one_process(segmented, pairs, tiny_platform, tmp_path):
    from tests.generation.test_generate import icg_subprocess

    common = ["generate", "--export", segmented, "--pairs", pairs, "--data_root", tiny_platform, "--pool", "2",
              "--accelerator", "cpu", "--progress_bar", "false"]  # fmt: skip
    icg_subprocess(*common, "--out", tmp_path / "one")
    icg_subprocess(*common, "--out", tmp_path / "two", "--devices", "2")
    one, two = (table(tmp_path / name / "pool.parquet").sort_values(["item_id", "slot"]) for name in ("one", "two"))
    assert len(one) == 2 * 2 * len(ITEMS) and one.drop(columns="cover").equals(two.drop(columns="cover"))
    for a, b in zip(one["cover"], two["cover"], strict=True):  # every pool cover made once, as one process makes it
        assert np.abs(pixels(tmp_path / "one" / a).astype(int) - pixels(tmp_path / "two" / b).astype(int)).max() <= 1
    picks_one, picks_two = (table(tmp_path / name / "picks.parquet") for name in ("one", "two"))
    assert len(picks_two) == len(PAIR_USERS) * len(ITEMS)
    assert picks_one[["user_id", "item_id", "slot"]].equals(picks_two[["user_id", "item_id", "slot"]])
    assert not list((tmp_path / "two").glob("*.rank*"))

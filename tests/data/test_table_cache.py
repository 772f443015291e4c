"""The parsed-table cache (icg/data/table_cache.py, ``ICGDataModule.cache_dir``): a cached set-up serves exactly the
batches of an uncached one, is keyed by the table's bytes, never writes into the dataset, still validates, and a
broken or unwritable cache degrades to parsing."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch

from icg.data import validation
from icg.data.datamodule import ICGDataModule
from icg.data.schema import read_interaction_arrays
from icg.data.table_cache import cached_interaction_arrays
from icg.data.validation import DataValidationError
from tests.helpers.data import make_dataset


def _setup(root, cache_dir=None, **kwargs):
    dm = ICGDataModule(root, image_size=8, batch_size=5, eval_candidates=3, cache_dir=cache_dir, **kwargs)
    dm.setup("fit")
    return dm


def _batches(dm):
    out = []
    for split, unit, shuffle in [
        ("train", "interactions", True),
        ("val", "interactions", False),
        ("test", "pairs", False),
    ]:
        loader = dm.dataloader(split, unit, shuffle=shuffle)
        if shuffle:
            loader.sampler.set_epoch(1)
        out.extend(loader)
    return out


def _assert_same_batches(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert list(a[key]) == list(b[key]), key


def _files(folder):
    return sorted((p.relative_to(folder), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("table_format", ["parquet", "csv"])
def test_cached_setup_serves_identical_batches(tmp_path, caplog, table_format):
    root = make_dataset(tmp_path / "data", users=7, items=14, per_user=6, table_format=table_format)
    before = _files(root)
    plain = _setup(root)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="icg.data.table_cache"):
        first = _setup(root, cache)  # parses and writes the entry
        warm = _setup(root, cache)  # memory-maps it
    assert "parsed table cached in" in caplog.text and "parsed table read from the cache" in caplog.text
    assert len(list(cache.glob("interactions-*"))) == 1
    assert _files(root) == before  # nothing written, moved or touched in the dataset
    expected = _batches(plain)
    _assert_same_batches(expected, _batches(first))
    _assert_same_batches(expected, _batches(warm))
    for name in ("user", "item", "click", "timestamp", "part"):
        assert np.array_equal(getattr(plain.log, name), getattr(warm.log, name)), name
    assert list(plain.user_ids) == list(warm.user_ids) and list(plain.item_ids) == list(warm.item_ids)
    assert np.array_equal(plain.sampler.keys, warm.sampler.keys)


def test_cached_arrays_equal_parsed_ones(tmp_path):
    root = make_dataset(tmp_path / "data", users=5, items=10, per_user=4)
    parsed = read_interaction_arrays(root)
    cached_interaction_arrays(root, tmp_path / "cache")
    mapped = cached_interaction_arrays(root, tmp_path / "cache")
    assert isinstance(mapped.user_code.base, np.memmap)  # read from the entry, not parsed again
    for name in ("user_code", "item_code", "timestamp", "timestamp_ok", "click", "click_ok", "user_values"):
        assert np.array_equal(getattr(parsed, name), getattr(mapped, name)), name
    assert np.array_equal(parsed.time_order(), mapped.order)


def test_changed_table_gets_a_new_entry(tmp_path):
    root = make_dataset(tmp_path / "data", users=5, items=10, per_user=4)
    cache = tmp_path / "cache"
    _setup(root, cache)
    frame = pd.read_parquet(root / "interactions.parquet")
    frame.loc[0, "timestamp"] += 1  # same size, same columns, different bytes
    frame.to_parquet(root / "interactions.parquet", index=False)
    dm = _setup(root, cache)
    assert len(list(cache.glob("interactions-*"))) == 2
    assert np.array_equal(dm.log.timestamp, _setup(root).log.timestamp)


def test_validation_still_runs_on_a_cached_table(tmp_path):
    root = make_dataset(tmp_path / "data", users=5, items=10, per_user=4)
    cache = tmp_path / "cache"
    _setup(root, cache)
    (root / "images" / "i03.png").unlink()  # the table is unchanged, the dataset is not
    with pytest.raises(DataValidationError, match="missing image file"):
        _setup(root, cache)


def test_broken_entry_is_replaced(tmp_path, caplog):
    root = make_dataset(tmp_path / "data", users=5, items=10, per_user=4)
    cache = tmp_path / "cache"
    expected = _setup(root, cache).log.item.copy()
    (entry,) = cache.glob("interactions-*")
    (entry / "item_code.npy").write_bytes(b"not an array")
    with caplog.at_level(logging.WARNING, logger="icg.data.table_cache"):
        dm = _setup(root, cache)
    assert "unreadable cache entry" in caplog.text
    assert np.array_equal(dm.log.item, expected)
    assert np.array_equal(_setup(root, cache).log.item, expected)  # the rewritten entry reads back


def test_unwritable_cache_is_a_warning(tmp_path, caplog):
    root = make_dataset(tmp_path / "data", users=5, items=10, per_user=4)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="icg.data.table_cache"):
        dm = _setup(root, blocker / "cache")
    assert "data.cache_dir" in caplog.text and "going on without it" in caplog.text
    assert dm.num_users == 5


def test_prepare_data_fills_the_cache(tmp_path):
    root = make_dataset(tmp_path / "data", users=5, items=10, per_user=4)
    cache = tmp_path / "cache"
    ICGDataModule(root, cache_dir=cache).prepare_data()
    assert [p.name.startswith("interactions-v") for p in cache.iterdir()] == [True]  # covers: checked in setup
    ICGDataModule(root).prepare_data()  # no cache_dir: nothing to prepare


def test_verified_covers_are_not_opened_again(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", users=5, items=10, per_user=4)
    cache = tmp_path / "cache"
    opened = []
    real_open = validation.Image.open
    monkeypatch.setattr(validation.Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    _setup(root, cache)
    assert len(opened) == 10  # first set-up: every cover verified
    opened.clear()
    _setup(root, cache)
    assert opened == []  # same files: existence and root checked, not re-opened
    cover = root / "images" / "i04.png"
    cover.write_bytes(cover.read_bytes()[:40])  # truncated in place: a new size and mtime
    with pytest.raises(DataValidationError, match=r"(?s)corrupt image.*i04"):
        _setup(root, cache)
    assert [os.path.basename(p) for p in opened] == ["i04.png"]


def test_resolve_equals_realpath(tmp_path):
    root = tmp_path / "root"
    (root / "images" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "images" / "a.png").write_bytes(b"x")
    (root / "linked").symlink_to(root / "images")
    (root / "images" / "out.png").symlink_to(tmp_path / "outside" / "b.png")
    (root / "away").symlink_to(tmp_path / "outside")
    real = os.path.realpath(root)
    parents: dict[str, str] = {}
    for relative in [
        "images/a.png", "linked/a.png", "images/out.png", "away/b.png", "images/../images/a.png", "../outside/b.png",
        "images/sub/", "images/.", "images/..", "a.png", "images/missing.png", "linked/sub/../a.png",
    ]:  # fmt: skip
        expected = os.path.realpath(os.path.join(real, relative))
        assert validation.cached_realpath(real, relative, parents) == expected, relative


def test_cached_table_reports_the_same_bad_rows(tmp_path):
    root = make_dataset(tmp_path / "data", users=5, items=10, per_user=4, table_format="csv")
    path = root / "interactions.csv"
    lines = path.read_text().splitlines()
    first = lines[1].split(",")
    lines[2] = ",".join([*lines[2].split(",")[:3], "last tuesday"])  # a timestamp outside the rule
    lines.append(",".join([first[0], "nope", *first[2:]]))  # an unknown item
    lines.append(lines[1])  # a duplicate row
    path.write_text("\n".join(lines) + "\n")
    messages = []
    for cache_dir in (None, tmp_path / "cache", tmp_path / "cache"):  # uncached, filling, memory-mapped
        with pytest.raises(DataValidationError) as caught:
            _setup(root, cache_dir)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == messages[2]
    assert "timestamp" in messages[0] and "unknown item" in messages[0] and "duplicate" in messages[0]
    skipped = [_setup(root, cache_dir, on_bad_record="skip") for cache_dir in (None, tmp_path / "cache")]
    assert np.array_equal(skipped[0].log.user, skipped[1].log.user) and len(skipped[0].log) == 5 * 4 + 2 - 3

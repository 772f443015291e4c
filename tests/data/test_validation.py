"""Bad input is reported all at once, naming file and row, and skip mode reports exactly what it left out."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from icg.data.datamodule import ICGDataModule
from icg.data.validation import DataValidationError, validate_dataset
from icg.errors import ConfigError
from tests.helpers.data import make_dataset


def _corrupt(root):
    """One of every bad-input kind; returns what each should report."""
    items = pd.read_parquet(root / "items.parquet")
    items.loc[1, "image"] = "images/nowhere.png"  # missing image, items row 2
    (root / "images" / "i02.png").write_bytes(b"not a png at all")  # corrupt image, row 3
    items.loc[3, "image"] = "../outside.png"  # escaping the root, row 4
    items.loc[4, "title"] = "  "  # empty title, row 5
    items = pd.concat([items, items.iloc[[5]]], ignore_index=True)  # duplicate item id, row 13
    items.to_parquet(root / "items.parquet", index=False)
    inter = pd.read_parquet(root / "interactions.parquet")
    inter["timestamp"] = inter["timestamp"].astype(str)
    inter.loc[0, "item_id"] = "ghost"  # unknown item, row 1
    inter.loc[1, "timestamp"] = "noon"  # non-numeric timestamp, row 2
    inter = pd.concat([inter, inter.iloc[[2]]], ignore_index=True)  # duplicate interaction, last row
    inter.to_parquet(root / "interactions.parquet", index=False)
    return len(inter)


def test_every_kind_in_one_message(tmp_path):
    make_dataset(tmp_path)
    last = _corrupt(tmp_path)
    report = validate_dataset(tmp_path)
    assert not report.ok
    message = report.message()
    for expected in (
        "missing image file: 1 row(s) in items.parquet; first: items.parquet row 2",
        "corrupt image (PIL cannot read it): 1 row(s) in items.parquet; first: items.parquet row 3",
        "image path escaping the dataset folder: 1 row(s) in items.parquet; first: items.parquet row 4",
        "empty title: 1 row(s) in items.parquet; first: items.parquet row 5",
        "duplicate row: 1 row(s) in items.parquet; first: items.parquet row 13",
        "interaction with an unknown item: 1 row(s) in interactions.parquet; first: interactions.parquet row 1 ",
        "timestamp that is not whole seconds or ISO-8601: 1 row(s) in interactions.parquet; first: "
        "interactions.parquet row 2 (timestamp 'noon', ",
        f"duplicate row: 1 row(s) in interactions.parquet; first: interactions.parquet row {last} ",
    ):
        assert expected in message, f"{expected!r} not in:\n{message}"
    assert "'ghost'" in message
    assert "A timestamp must be a whole number of seconds" in message


def test_setup_raises_the_report(tmp_path):
    make_dataset(tmp_path)
    _corrupt(tmp_path)
    with pytest.raises(DataValidationError) as caught:
        ICGDataModule(tmp_path).setup("fit")
    assert "missing image file" in str(caught.value) and "timestamp 'noon'" in str(caught.value)


def test_csv_rows_give_lines_and_symlink_escape(tmp_path):
    make_dataset(tmp_path, table_format="csv")
    outside = tmp_path.parent / f"{tmp_path.name}_outside.png"
    (tmp_path / "images" / "i00.png").rename(outside)
    os.symlink(outside, tmp_path / "images" / "i00.png")  # a link out of the root escapes it too
    path = tmp_path / "interactions.csv"
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    lines[3] = ",".join(cells[:2] + ["7"] + cells[3:])
    path.write_text("\n".join(lines) + "\n")
    message = validate_dataset(tmp_path).message()
    assert "click that is not 0 or 1: 1 row(s) in interactions.csv; first: interactions.csv row 3 (line 4)" in message
    assert "image path escaping the dataset folder: 1 row(s) in items.csv; first: items.csv row 1 (line 2)" in message


def test_clean_dataset_is_ok(tmp_path):
    make_dataset(tmp_path)
    report = validate_dataset(tmp_path)
    assert report.ok and report.message() == ""
    assert report.item_keep.all() and report.interaction_keep.all()


def test_skip_mode_writes_exactly_what_was_left_out(tmp_path):
    make_dataset(tmp_path)
    _corrupt(tmp_path)
    inter = pd.read_parquet(tmp_path / "interactions.parquet")
    items = pd.read_parquet(tmp_path / "items.parquet")
    bad_items = {"i01", "i02", "i03", "i04"}
    cascaded = inter.index[inter["item_id"].isin(bad_items)].tolist()
    report_path = tmp_path.with_name(f"{tmp_path.name}_out") / "left_out.json"  # beside the dataset, never in it
    dm = ICGDataModule(tmp_path, on_bad_record="skip", skip_report=report_path, eval_candidates=3)
    dm.setup("fit")
    report = json.loads(report_path.read_text())
    left_items = {row["item_id"]: row["reasons"] for row in report["items_left_out"]["rows"]}
    assert left_items == {
        "i01": ["missing_image"],
        "i02": ["corrupt_image"],
        "i03": ["image_escapes_root"],
        "i04": ["empty_title"],
        "i05": ["duplicate_row"],
    }
    assert [row["row"] for row in report["items_left_out"]["rows"]] == [2, 3, 4, 5, 13]
    dropped = {row["row"] - 1: row["reasons"] for row in report["interactions_left_out"]["rows"]}
    expected_rows = {0, 1, len(inter) - 1} | set(cascaded)
    assert set(dropped) == expected_rows
    assert dropped[0] == ["unknown_item"] and dropped[len(inter) - 1] == ["duplicate_row"]
    assert all(dropped[r] == ["item_left_out"] for r in cascaded if r not in (0, 1, len(inter) - 1))
    # and the DataModule really serves only the rest
    assert dm.num_items == len(items) - 5
    assert len(dm.log) == len(inter) - len(expected_rows)
    assert not set(dm.item_ids) & bad_items
    inside = tmp_path / "reports" / "left_out.json"
    with pytest.raises(ConfigError, match=f"skip_report={inside}: inside the dataset"):  # an input is never written to
        ICGDataModule(tmp_path, on_bad_record="skip", skip_report=inside, eval_candidates=3).setup("fit")
    assert not inside.parent.exists()

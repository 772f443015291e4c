"""The on-disk dataset format (icg/data/schema.py): round trips in parquet and CSV, compact interaction arrays.

The tiny dataset writer the data tests share, ``make_dataset``, lives in ``tests/helpers/data.py``.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from icg.data import schema
from icg.data.schema import (
    DatasetFormatError,
    DatasetMeta,
    read_dataset,
    read_interaction_arrays,
    write_dataset,
)
from tests.helpers.data import make_dataset


@pytest.mark.parametrize("table_format", ["parquet", "csv"])
def test_round_trip(tmp_path, table_format):
    items = pd.DataFrame({"item_id": ["b", "a"], "title": ["T, with comma", ""], "image": ["images/b.png", "x.png"]})
    inter = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"], "click": [1, 0], "timestamp": [5, 7]})
    write_dataset(tmp_path, items, inter, DatasetMeta("unit", implicit=False, extra={"k": 1}), table_format)
    assert (tmp_path / f"items.{table_format}").is_file()
    got_items, got_inter, meta = read_dataset(tmp_path)
    assert got_items["item_id"].tolist() == ["b", "a"]
    assert got_items["title"].tolist() == ["T, with comma", ""]  # the empty title survives as "", not NaN
    assert got_inter["user_id"].tolist() == ["u1", "u2"]
    assert [int(c) for c in got_inter["click"]] == [1, 0]
    assert [int(t) for t in got_inter["timestamp"]] == [5, 7]
    assert (meta.source, meta.implicit, meta.extra) == ("unit", False, {"k": 1})
    arrays = read_interaction_arrays(tmp_path)
    assert arrays.user_values.tolist() == ["u1", "u2"]
    assert arrays.item_values[arrays.item_code].tolist() == ["a", "b"]
    assert arrays.click.tolist() == [1, 0] and arrays.timestamp.tolist() == [5, 7]
    assert arrays.timestamp_ok.all() and arrays.click_ok.all()


def test_switching_format_leaves_no_stale_twin(tmp_path):
    make_dataset(tmp_path, table_format="csv")
    make_dataset(tmp_path, table_format="parquet")
    assert not (tmp_path / "items.csv").exists() and not (tmp_path / "interactions.csv").exists()


def test_interaction_arrays_codes_follow_sorted_ids(tmp_path):
    make_dataset(tmp_path, users=4, items=5, per_user=3)
    arrays = read_interaction_arrays(tmp_path)
    assert arrays.user_values.tolist() == sorted(arrays.user_values.tolist())
    raw = pd.read_parquet(tmp_path / "interactions.parquet")
    assert arrays.user_values[arrays.user_code].tolist() == raw["user_id"].tolist()
    assert arrays.item_values[arrays.item_code].tolist() == raw["item_id"].tolist()


def test_non_numeric_values_are_flagged_not_fatal(tmp_path):
    make_dataset(tmp_path, table_format="csv")
    path = tmp_path / "interactions.csv"
    lines = path.read_text().splitlines()
    fields = lines[1].split(",")
    lines[1] = ",".join([fields[0], fields[1], "2", "yesterday"])
    path.write_text("\n".join(lines) + "\n")
    arrays = read_interaction_arrays(tmp_path)
    assert not arrays.timestamp_ok[0] and not arrays.click_ok[0]
    assert arrays.timestamp_ok[1:].all() and arrays.click_ok[1:].all()


def test_missing_meta_and_columns_are_named(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(DatasetFormatError, match="meta.json"):
        read_dataset(tmp_path)
    make_dataset(tmp_path)
    pd.DataFrame({"user_id": ["u"], "item_id": ["i00"]}).to_parquet(tmp_path / "interactions.parquet")
    with pytest.raises(DatasetFormatError, match=r"interactions.parquet: missing column\(s\) \['click', 'timestamp'\]"):
        read_interaction_arrays(tmp_path)


ID_SETS = {
    "short, mixed widths, non-ASCII": ["b", "a", "", None, "ab", "abc", "a", "zz", "é", "éa", "日本", "🙂", "1234567"],
    "fixed width 8": ["u0000001", "u0000000", "u0000001", "u9999999"],
    "integers": ["1", "10", "9", "100", "09", "10"],
    "longer than 8 bytes": ["abcdefghi", "a", "abcdefgh"],
    "NUL bytes": ["a\x00", "a", "a\x00\x00", "b"],
}


@pytest.mark.parametrize("name", list(ID_SETS))
def test_id_encoding_matches_sorted_python_strings(name, monkeypatch):
    # short ids take the 64-bit key path, the others the string path; both must give the same codes and order as
    # sorting Python strings (chunks of 3 rows here so that chunk and slice boundaries are crossed)
    monkeypatch.setattr(schema, "KEY_CHUNK", 3)
    ids = ID_SETS[name]
    column = pa.chunked_array([pa.array(ids[:5], pa.string()), pa.array(["pad", *ids[5:]], pa.string()).slice(1)])
    expected_values = sorted({i or "" for i in ids})
    codes, values = schema.encode_ids(lambda: column)
    assert list(values) == expected_values
    assert codes.tolist() == [expected_values.index(i or "") for i in ids]
    short = name not in ("longer than 8 bytes", "NUL bytes")
    assert (schema.short_id_keys(column.fill_null("")) is not None) == short

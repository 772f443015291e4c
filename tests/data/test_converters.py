"""PixelRec and MovieLens converters on small files written in their published layouts.

Beside the conversions themselves: the inputs are never touched (byte-identical after every run, failed or not),
an output that overlaps an input is refused, a failed run leaves no half dataset, every left-out row is listed with
its reason, and timestamps follow the same rule as ``icg data validate``.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from icg.cli import main
from icg.data.conversion import LEFT_OUT_FILE, ConversionError, InteractionsWriter
from icg.data.convert_movielens import convert_movielens
from icg.data.convert_pixelrec import convert_pixelrec
from icg.data.schema import read_dataset
from icg.data.validation import validate_dataset
from icg.output_lock import OutputLock, old_copy

ITEM_INFO_HEADER = (
    "item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,barrage_number,"
    "title_en,title,description,tag"
)


def _covers(folder, ids):
    folder.mkdir(parents=True, exist_ok=True)
    for n, item in enumerate(ids):
        Image.new("RGB", (32, 18), (20 * n, 100, 200)).save(folder / f"{item}.jpg")


def _snapshot(*paths: Path) -> dict[str, bytes]:
    """Every file under ``paths`` (files or folders) with its bytes: inputs must come out byte-identical."""
    files = {}
    for path in paths:
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(file)] = file.read_bytes()
    return files


def _pixelrec_inputs(folder: Path, interactions: str | None = None, ids=("a1", "a2")) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "item_info.csv").write_text(
        ITEM_INFO_HEADER + "\n" + "".join(f"{i},1,1,1,1,1,1,1,Title {i},t,d,g\n" for i in ids)
    )
    (folder / "Pixel1M.csv").write_text(
        interactions or "item_id,user_id,timestamp\n" + "".join(f"{i},u1,{n + 1}\n" for n, i in enumerate(ids))
    )
    _covers(folder / "covers", ids)
    return {"interactions": folder / "Pixel1M.csv", "items": folder / "item_info.csv", "covers": folder / "covers"}


def _convert_args(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    words = ["data", "convert", "pixelrec", "--interactions", inputs["interactions"], "--items", inputs["items"]]
    return [str(w) for w in [*words, "--covers", inputs["covers"], "--out", out, *extra]]


def _left_out(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / LEFT_OUT_FILE, dtype=str, keep_default_na=False)


def test_pixelrec(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "item_info.csv").write_text(
        ITEM_INFO_HEADER
        + "\n"
        + "a1,10,1,2,0,0,1,3,Cat video,猫,desc,tag\n"
        + 'a2,5,0,0,0,0,0,0,,"中文, 标题",d,t\n'  # no English title: the original is kept
        + "a3,7,0,0,0,0,0,0,No cover,无,d,t\n"  # no cover: left out with its interactions
    )
    (src / "Pixel1M.csv").write_text(
        "item_id,user_id,timestamp\na1,u1,100\na2,u1,200\na3,u1,300\na1,u2,50\nzz,u2,60\na2,u2,70\n"
    )
    _covers(src / "covers", ["a1", "a2"])
    out = tmp_path / "ds"
    report = convert_pixelrec(src / "Pixel1M.csv", src / "item_info.csv", src / "covers", out, chunk_rows=2)
    assert report["items_written"] == 2 and report["items_without_cover"] == 1
    assert report["interactions_of_left_out_items"] == 1 and report["interactions_with_unknown_item"] == 1
    assert report["interactions_written"] == 4 and report["left_out_rows"] == LEFT_OUT_FILE
    assert json.loads((out / "conversion_report.json").read_text()) == report
    assert _left_out(out).values.tolist() == [
        ["item_info.csv", "3", "a3", "", "", "no_cover"],
        ["Pixel1M.csv", "3", "a3", "u1", "", "item_left_out"],
        ["Pixel1M.csv", "5", "zz", "u2", "", "unknown_item"],
    ]
    items, inter, meta = read_dataset(out)
    assert meta.source == "pixelrec" and meta.implicit is True
    assert dict(zip(items["item_id"], items["title"], strict=True)) == {"a1": "Cat video", "a2": "中文, 标题"}
    assert items["image"].tolist() == ["images/a1.jpg", "images/a2.jpg"]
    assert (out / "images" / "a1.jpg").stat().st_ino == (src / "covers" / "a1.jpg").stat().st_ino  # hard link
    assert inter["click"].tolist() == [1, 1, 1, 1] and inter["user_id"].tolist() == ["u1", "u1", "u2", "u2"]
    assert "a3" not in set(inter["item_id"])
    assert validate_dataset(out).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]  # no staging folder left beside --out


def test_movielens(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    (src / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,"Toy Story (1995)",Adventure|Animation\n'
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Heat (1995),Action\n"
    )
    (src / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,2,5.0,964982224\n2,3,1.0,9649830\n"
        "2,1,n/a,964982300\n"
    )
    _covers(src / "posters", ["1", "2"])
    out = tmp_path / "ds"
    report = convert_movielens(src / "ratings.csv", src / "movies.csv", src / "posters", out, positive_threshold=4.0)
    assert report["items_without_cover"] == 1 and report["interactions_of_left_out_items"] == 1
    assert report["interactions_with_bad_rating"] == 1
    assert ["ratings.csv", "5", "1", "2", "n/a", "bad_rating"] in _left_out(out).values.tolist()
    items, inter, meta = read_dataset(out)
    assert meta.implicit is False and meta.extra == {"positive_threshold": 4.0}
    assert items.set_index("item_id")["title"].to_dict() == {
        "1": "Toy Story (1995)",
        "2": "American President, The (1995)",
    }
    assert "genres" in items.columns
    got = inter[["user_id", "item_id", "click"]].astype({"click": int}).values.tolist()
    assert got == [["1", "1", 1], ["1", "2", 0], ["2", "2", 1]]  # 3.5 < 4.0 is a real non-click
    assert validate_dataset(out).ok


def test_movielens_missing_column_is_named(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,name\n1,x\n")
    (tmp_path / "r.csv").write_text("userId,movieId,rating,timestamp\n")
    (tmp_path / "posters").mkdir()
    with pytest.raises(ConversionError, match=r"movies.csv: missing column\(s\) \['title', 'genres'\]"):
        convert_movielens(tmp_path / "r.csv", tmp_path / "movies.csv", tmp_path / "posters", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ inputs stay intact
def test_covers_inside_out_are_refused_and_kept(tmp_path, capsys):
    """The reported loss: ``--covers OUT/images --out OUT`` deleted one cover per try."""
    out = tmp_path / "OUT"
    inputs = _pixelrec_inputs(tmp_path / "src")
    out.mkdir()
    inputs["covers"] = inputs["covers"].rename(out / "images")
    before = _snapshot(tmp_path / "src", out)
    for _ in range(3):  # every retry used to cost one more cover
        assert main(_convert_args(inputs, out)) == 2
        err = capsys.readouterr().err
        assert f"--out {out} holds the input --covers {out / 'images'}" in err and "Traceback" not in err
    assert _snapshot(tmp_path / "src", out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT", "src"]


def test_input_tables_inside_out_are_refused_and_kept(tmp_path, capsys):
    """The reported loss: input CSVs named like the outputs inside ``--out``: both were gone, exit status 0."""
    out = tmp_path / "OUT"
    src = _pixelrec_inputs(tmp_path / "src")
    out.mkdir()
    inputs = {"interactions": out / "interactions.csv", "items": out / "items.csv", "covers": src["covers"]}
    src["interactions"].rename(inputs["interactions"])
    src["items"].rename(inputs["items"])
    before = _snapshot(out, src["covers"])
    assert main(_convert_args(inputs, out)) == 2
    err = capsys.readouterr().err
    assert f"--out {out} holds the input --interactions {inputs['interactions']}" in err
    assert main(_convert_args(inputs, out, "--overwrite")) == 2  # --overwrite never reaches an input either
    assert _snapshot(out, src["covers"]) == before


@pytest.mark.parametrize("where", ["inside_covers", "symlink_to_covers"])
def test_out_inside_or_linked_to_an_input_folder_is_refused(tmp_path, where):
    inputs = _pixelrec_inputs(tmp_path / "src")
    before = _snapshot(tmp_path / "src")
    if where == "inside_covers":
        out = inputs["covers"] / "ds"
        match = "lies inside the input --covers"
    else:
        out = tmp_path / "link"
        out.symlink_to(inputs["covers"], target_is_directory=True)
        match = "holds the input --covers"
    with pytest.raises(ConversionError, match=match):
        convert_pixelrec(inputs["interactions"], inputs["items"], inputs["covers"], out)
    assert _snapshot(tmp_path / "src") == before


def test_failed_run_leaves_no_half_dataset(tmp_path, capsys):
    """A run that fails part-way (a malformed row in the second chunk) leaves neither --out nor a staging folder."""
    rows = "".join(f"a1,u{n},{n}\n" for n in range(5))
    inputs = _pixelrec_inputs(tmp_path / "src", "item_id,user_id,timestamp\n" + rows + "a2,u9,9,extra,fields\n")
    before = _snapshot(tmp_path / "src")
    out = tmp_path / "ds"
    with pytest.raises(ConversionError, match=r"Pixel1M.csv: not a readable CSV file \(.*line 7"):
        convert_pixelrec(inputs["interactions"], inputs["items"], inputs["covers"], out, chunk_rows=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert _snapshot(tmp_path / "src") == before


def test_existing_output_needs_overwrite_and_survives_a_failed_rerun(tmp_path, capsys):
    inputs = _pixelrec_inputs(tmp_path / "src")
    out = tmp_path / "ds"
    assert main(_convert_args(inputs, out)) == 0
    first = _snapshot(out)
    assert main(_convert_args(inputs, out)) == 2
    assert "folder is not empty; choose a new folder, or pass --overwrite" in capsys.readouterr().err
    (inputs["interactions"]).write_text("item_id,user_id,timestamp\na1,u1,1.5\n")  # nothing valid left
    assert main(_convert_args(inputs, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "nothing left to write" in err and "a timestamp must be" in err  # the rule when timestamps were the cause
    assert _snapshot(out) == first  # the earlier dataset is untouched by the failed rerun
    (inputs["interactions"]).write_text("item_id,user_id,timestamp\n")  # a header only: no timestamp advice
    assert main(_convert_args(inputs, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "the file has no data rows" in err and "timestamp" not in err
    (inputs["interactions"]).write_text("item_id,user_id,timestamp\na2,u7,5\n")
    assert main(_convert_args(inputs, out, "--overwrite")) == 0
    assert read_dataset(out)[1]["user_id"].tolist() == ["u7"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(_convert_args(inputs, other, "--overwrite")) == 2
    assert "not an icg dataset (no meta.json); --overwrite does not replace it" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"


def test_a_full_disk_is_one_line_and_keeps_the_earlier_dataset(tmp_path, capsys, monkeypatch):
    inputs = _pixelrec_inputs(tmp_path / "src")
    out = tmp_path / "ds"
    assert main(_convert_args(inputs, out)) == 0
    first = _snapshot(out)

    def full(self, chunk):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.root / "interactions.parquet"))

    monkeypatch.setattr(InteractionsWriter, "write", full)
    assert main(_convert_args(inputs, out, "--overwrite")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    needed = inputs["interactions"].stat().st_size + inputs["items"].stat().st_size
    assert re.fullmatch(rf"icg data convert: {re.escape(str(tmp_path))}/\.ds\.partial-\w+/interactions\.parquet: no "
                        rf"space left on device \(it needed about {needed} B more, [\d.]+ [KMGT]?i?B is free there\); "
                        r"free some space .*", err), err  # fmt: skip
    assert _snapshot(out) == first and sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_a_second_conversion_is_refused_and_a_killed_ones_leftovers_are_settled(tmp_path, capsys, caplog):
    inputs = _pixelrec_inputs(tmp_path / "src")
    out = tmp_path / "ds"
    first = OutputLock(out, "icg data convert")  # another conversion, still writing --out
    first.acquire()
    try:
        assert main(_convert_args(inputs, out)) == 2
        err = capsys.readouterr().err
        assert f"{out}: another run writes this folder: icg data convert (pid {os.getpid()}" in err
    finally:
        first.release()
    assert not out.exists()
    assert main(_convert_args(inputs, out)) == 0
    dataset = _snapshot(out)
    # A conversion killed between the renames of its --overwrite: the earlier dataset aside, the new one staged.
    out.rename(old_copy(out))
    (tmp_path / ".ds.partial-abc123").mkdir()
    with caplog.at_level("WARNING", "icg.output_lock"):
        assert main(_convert_args(inputs, out)) == 2  # put back, so without --overwrite: refused as before
    assert "folder is not empty" in capsys.readouterr().err
    assert (
        f"{out}: put back the previous copy, which an interrupted --overwrite had left in {old_copy(out)}"
        in caplog.text
    )
    assert _snapshot(out) == dataset and sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_missing_input_is_named(tmp_path, capsys):
    inputs = _pixelrec_inputs(tmp_path / "src")
    inputs["covers"] = tmp_path / "nope"
    assert main(_convert_args(inputs, tmp_path / "ds")) == 2
    assert f"--covers {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ timestamps, encodings
def test_timestamps_follow_the_validate_rule(tmp_path, caplog):
    """ISO-8601 is converted; a fraction, exponent with a fraction, text or inf is left out with its row and value."""
    rows = [
        "a1,u1,2023-11-14T22:13:20Z",
        "a2,u1,1700000100",
        "a1,u2,1.7e9",
        "a2,u2,1700000000.5",
        "a1,u3,inf",
        "a2,u3,yesterday",
        "a1,u4,2023-11-14 22:13:20+08:00",
    ]
    inputs = _pixelrec_inputs(tmp_path / "src", "item_id,user_id,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "ds"
    report = convert_pixelrec(inputs["interactions"], inputs["items"], inputs["covers"], out)
    assert report["interactions_with_bad_timestamp"] == 3 and report["interactions_written"] == 4
    _, inter, _ = read_dataset(out)
    assert inter["timestamp"].tolist() == [1700000000, 1700000100, 1700000000, 1699971200]
    bad = _left_out(out).query("reason == 'bad_timestamp'")
    assert bad[["row", "value"]].values.tolist() == [["4", "1700000000.5"], ["5", "inf"], ["6", "yesterday"]]
    assert "Pixel1M.csv row 4 (line 5) value '1700000000.5'" in caplog.text
    assert validate_dataset(out).ok


def test_non_utf8_csv_names_the_file_and_encoding(tmp_path, capsys):
    inputs = _pixelrec_inputs(tmp_path / "src")
    inputs["items"].write_bytes(
        (ITEM_INFO_HEADER + "\na1,1,1,1,1,1,1,1,,猫的视频,d,g\na2,1,1,1,1,1,1,1,B,t,d,g\n").encode("gbk")
    )
    assert main(_convert_args(inputs, tmp_path / "ds")) == 2
    err = capsys.readouterr().err
    assert f"{inputs['items']}: cannot be read as utf-8 text" in err and "--encoding gbk" in err
    assert main(_convert_args(inputs, tmp_path / "ds", "--encoding", "gbk")) == 0
    items = read_dataset(tmp_path / "ds")[0]
    assert items.set_index("item_id")["title"].to_dict() == {"a1": "猫的视频", "a2": "B"}


def test_repeated_column_is_named(tmp_path, capsys):
    inputs = _pixelrec_inputs(tmp_path / "src", "item_id,user_id,timestamp,user_id\na1,u1,1,u2\n")
    assert main(_convert_args(inputs, tmp_path / "ds")) == 2
    err = capsys.readouterr().err
    assert "Pixel1M.csv: the header names 'user_id' at columns [2, 4]; keep one of each" in err
    assert not (tmp_path / "ds").exists()

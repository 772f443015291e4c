"""PixelRec and MovieLens converters on small files written in their published layouts."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from icg.data.convert_movielens import convert_movielens
from icg.data.convert_pixelrec import convert_pixelrec
from icg.data.schema import read_dataset
from icg.data.validation import validate_dataset

ITEM_INFO_HEADER = (
    "item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,barrage_number,"
    "title_en,title,description,tag"
)


def _covers(folder, ids):
    folder.mkdir(parents=True, exist_ok=True)
    for n, item in enumerate(ids):
        Image.new("RGB", (32, 18), (20 * n, 100, 200)).save(folder / f"{item}.jpg")


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
    assert report["items_without_cover_first"] == ["a3"]
    assert report["interactions_of_left_out_items"] == 1 and report["interactions_with_unknown_item"] == 1
    assert report["interactions_written"] == 4
    assert json.loads((out / "conversion_report.json").read_text()) == report
    items, inter, meta = read_dataset(out)
    assert meta.source == "pixelrec" and meta.implicit is True
    assert dict(zip(items["item_id"], items["title"], strict=True)) == {"a1": "Cat video", "a2": "中文, 标题"}
    assert items["image"].tolist() == ["images/a1.jpg", "images/a2.jpg"]
    assert (out / "images" / "a1.jpg").stat().st_ino == (src / "covers" / "a1.jpg").stat().st_ino  # hard link
    assert inter["click"].tolist() == [1, 1, 1, 1] and inter["user_id"].tolist() == ["u1", "u1", "u2", "u2"]
    assert "a3" not in set(inter["item_id"])
    assert validate_dataset(out).ok


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
    )
    _covers(src / "posters", ["1", "2"])
    out = tmp_path / "ds"
    report = convert_movielens(src / "ratings.csv", src / "movies.csv", src / "posters", out, positive_threshold=4.0)
    assert report["items_without_cover"] == 1 and report["interactions_of_left_out_items"] == 1
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
    (tmp_path / "posters").mkdir()
    with pytest.raises(ValueError, match=r"movies.csv: missing column\(s\) \['title', 'genres'\]"):
        convert_movielens(tmp_path / "r.csv", tmp_path / "movies.csv", tmp_path / "posters", tmp_path / "out")

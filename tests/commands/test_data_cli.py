"""``icg data ...`` through ``icg.cli.main``, exactly the path a user runs."""

from __future__ import annotations

import json

import pandas as pd
from PIL import Image

from icg.cli import main
from tests.helpers.data import make_dataset


def test_help_lists_subcommands(capsys):
    assert main(["data", "--help"]) == 0
    out = capsys.readouterr().out
    for command in ("synth", "validate", "stats", "convert"):
        assert command in out


def test_validate_clean_and_bad(tmp_path, capsys):
    make_dataset(tmp_path)
    assert main(["data", "validate", str(tmp_path)]) == 0
    assert "ok" in capsys.readouterr().out
    (tmp_path / "images" / "i03.png").unlink()
    items = pd.read_parquet(tmp_path / "items.parquet")
    items.loc[0, "title"] = ""
    items.to_parquet(tmp_path / "items.parquet", index=False)
    assert main(["data", "validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "missing image file: 1 row(s) in items.parquet; first: items.parquet row 4" in err
    assert "empty title: 1 row(s) in items.parquet; first: items.parquet row 1" in err


def test_validate_not_a_dataset(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path)]) == 2
    assert "meta.json" in capsys.readouterr().err


def test_stats(tmp_path, capsys):
    make_dataset(tmp_path, users=6, items=12, per_user=5)
    assert main(["data", "stats", str(tmp_path), "--holdout", "2", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["interactions"], stats["clicks"]) == (6, 12, 30, 30)
    assert (stats["train_interactions"], stats["val_interactions"], stats["test_interactions"]) == (6, 12, 12)
    assert main(["data", "stats", str(tmp_path)]) == 0
    assert "test_interactions" in capsys.readouterr().out


def test_stats_of_a_dataset_with_bad_rows_says_so(tmp_path, capsys):
    """The counts include bad rows: stats names them and exits 1, as validate does; a header-only table is refused."""
    make_dataset(tmp_path, users=6, items=12, per_user=5)
    path = tmp_path / "interactions.parquet"
    inter = pd.read_parquet(path)
    inter["timestamp"] = inter["timestamp"].astype("float64")
    inter.loc[3, "timestamp"] = 1601041187.5
    inter.to_parquet(path)
    assert main(["data", "stats", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "interactions" in out and "these counts include bad rows" in err and "1601041187.5" in err
    inter.head(0).to_parquet(path)
    assert main(["data", "stats", str(tmp_path)]) == 2
    assert "no data rows (a header only)" in capsys.readouterr().err


def test_convert_pixelrec(tmp_path, capsys):
    (tmp_path / "covers").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "covers" / "x.jpg")
    header = "item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,"
    header += "barrage_number,title_en,title,description,tag"
    (tmp_path / "item_info.csv").write_text(f"{header}\nx,1,1,1,1,1,1,1,A title,t,d,g\ny,1,1,1,1,1,1,1,B,t,d,g\n")
    (tmp_path / "p.csv").write_text("item_id,user_id,timestamp\nx,u,1\ny,u,2\n")
    args = ["data", "convert", "pixelrec", "--interactions", str(tmp_path / "p.csv")]
    args += [
        "--items",
        str(tmp_path / "item_info.csv"),
        "--covers",
        str(tmp_path / "covers"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items_without_cover"] == 1 and report["interactions_written"] == 1
    assert main(["data", "validate", str(tmp_path / "o")]) == 0


def test_convert_movielens_threshold(tmp_path, capsys):
    (tmp_path / "posters").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "posters" / "1.jpg")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,"A, B (1999)",Drama\n')
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n7,1,3.0,10\n8,1,2.5,11\n")
    args = ["data", "convert", "movielens", "--ratings", str(tmp_path / "ratings.csv"), "--movies"]
    args += [str(tmp_path / "movies.csv"), "--posters", str(tmp_path / "posters"), "--out", str(tmp_path / "o")]
    assert main([*args, "--positive-threshold", "3.0"]) == 0
    assert pd.read_parquet(tmp_path / "o" / "interactions.parquet")["click"].tolist() == [1, 0]


def test_synth_then_validate(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--users", "20", "--items", "30", "--image-size", "16"]) == 0
    assert main(["data", "validate", str(out)]) == 0


def test_synth_clicks_per_user_option(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["data", "synth", "--out", str(out), "--users", "8", "--items", "300", "--image-size", "16"]
    assert main([*args, "--clicks-per-user", "4", "6"]) == 0
    clicks = pd.read_parquet(out / "interactions.parquet").groupby("user_id").size()
    assert len(clicks) == 8 and clicks.between(4, 6).all()
    assert json.loads((out / "meta.json").read_text())["extra"]["clicks_per_user"] == [4, 6]
    capsys.readouterr()
    assert main([*args, "--overwrite", "--clicks-per-user", "7", "3"]) == 2
    assert "clicks_per_user must be (min, max) with 1 <= min <= max, got (7, 3)" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--clicks-per-user", "0", "3"]) == 2
    assert main([*args, "--overwrite", "--clicks-per-user", "3"]) == 2  # argparse: MIN and MAX both needed


def _to_csv(root, name):
    """Rewrite ``<root>/<name>.parquet`` as ``<name>.csv`` and return the frame."""
    frame = pd.read_parquet(root / f"{name}.parquet")
    (root / f"{name}.parquet").unlink()
    frame.to_csv(root / f"{name}.csv", index=False)
    return frame


def test_validate_names_a_non_utf8_table(tmp_path, capsys):
    make_dataset(tmp_path)
    items = _to_csv(tmp_path, "items")
    items.loc[0, "title"] = "猫的视频"
    (tmp_path / "items.csv").write_bytes(items.to_csv(index=False).encode("gbk"))
    assert main(["data", "validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'items.csv'}: not UTF-8 text" in err and "iconv -f gbk -t utf-8" in err


def test_validate_names_a_column_given_twice(tmp_path, capsys):
    make_dataset(tmp_path)
    inter = _to_csv(tmp_path, "interactions")
    lines = (tmp_path / "interactions.csv").read_text().splitlines()
    users = inter["user_id"].tolist()
    lines = [lines[0] + ",user_id"] + [f"{line},{user}" for line, user in zip(lines[1:], users, strict=True)]
    (tmp_path / "interactions.csv").write_text("\n".join(lines) + "\n")
    assert main(["data", "validate", str(tmp_path)]) == 2
    assert "interactions.csv: the header names 'user_id' at columns [1, 5]; keep one of each" in capsys.readouterr().err


def test_iso_timestamps_validate_and_read_as_the_same_seconds(tmp_path, capsys):
    from icg.data.schema import read_interaction_arrays

    make_dataset(tmp_path)
    seconds = pd.read_parquet(tmp_path / "interactions.parquet")
    iso = pd.to_datetime(seconds["timestamp"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    (tmp_path / "interactions.parquet").unlink()
    seconds.assign(timestamp=iso).to_csv(tmp_path / "interactions.csv", index=False)
    assert main(["data", "validate", str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith(": ok\n")
    assert read_interaction_arrays(tmp_path).timestamp.tolist() == seconds["timestamp"].tolist()

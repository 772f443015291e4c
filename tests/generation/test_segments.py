"""User segments (issue 21): ``icg users segment`` clusters an export's users into K centroid users, as a new export."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from icg.cli import main
from icg.generation import UserTable
from icg.generation.export import CONFIG, WEIGHTS
from icg.generation.segments import SEGMENTS_FILE
from tests.helpers.cli import run_cli
from tests.helpers.generation import write_tiny_export

USERS = [f"u{i:04d}" for i in range(8)]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(2)
    centres = torch.tensor([[3.0] * 8, [-3.0] * 8, [0.0] * 4 + [3.0] * 4])  # three clear groups of users
    embeddings = torch.cat([centres[[0, 0, 1, 1, 1, 2, 2, 0]] + 0.1 * torch.randn(8, 8), torch.randn(1, 8)])
    return write_tiny_export(tmp_path_factory.mktemp("seg") / "export", UserTable(USERS, embeddings))


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_segment_export_round_trip(export, tmp_path, capsys):
    before = digests(export)
    out = tmp_path / "segments"
    run_cli("users", "segment", "--export", export, "--k", "3", "--out", out, "--seed", "1")
    assert "8 user(s) in 3 segment(s) (2-3 each)" in capsys.readouterr().out
    assert digests(export) == before  # the input export is never written to
    source, table = UserTable.load(export), UserTable.load(out)
    assert table.user_ids == ["segment/0", "segment/1", "segment/2"]  # K centroid users
    assert torch.equal(table.embeddings[-1], source.embeddings[-1])  # the cold-start row kept, not clustered
    frame = pd.read_parquet(out / SEGMENTS_FILE)
    assert list(frame.columns) == ["user_id", "segment", "distance"]
    assert sorted(frame["user_id"]) == USERS and frame["user_id"].is_unique  # every user in exactly one segment
    groups = frame.groupby("segment")["user_id"].apply(lambda s: sorted(s)).to_dict()
    assert sorted(groups.values()) == [["u0000", "u0001", "u0007"], ["u0002", "u0003", "u0004"], ["u0005", "u0006"]]
    for segment, members in groups.items():  # a centroid is the mean of its users; distances are to it
        centroid = table.lookup([segment])[0][0]
        torch.testing.assert_close(centroid, source.lookup(members)[0].mean(0))
        rows = frame.set_index("user_id").loc[members, "distance"].to_numpy()
        expected = (source.lookup(members)[0] - centroid).norm(dim=1).numpy()
        np.testing.assert_allclose(rows, expected, rtol=1e-5)
    record = json.loads((out / CONFIG).read_text())
    assert record["segments"]["k"] == 3 and record["segments"]["seed"] == 1 and record["segments"]["users"] == 8
    assert record["segments"]["source"] == str(export.resolve()) and record["segments"]["inertia"] > 0
    assert record["users"]["count"] == 3
    assert (out / WEIGHTS).read_bytes() == (export / WEIGHTS).read_bytes()  # the same trained weights
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and "lock" not in p.name]  # no temp left


def _fails(capsys, words) -> str:
    assert main([str(w) for w in words]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_bad_segment_input_is_one_line_naming_the_option(export, tmp_path, capsys):
    words = ["users", "segment", "--export", export, "--out", tmp_path / "out"]
    assert _fails(capsys, [*words, "--k", "0"]) == (
        "icg users segment: --k must be an integer >= 1 (the number of segments), got 0"
    )
    assert _fails(capsys, [*words, "--k", "9"]) == (
        "icg users segment: --k 9: more segments than the 8 user(s) of the export; give --k <= 8"
    )
    missing = tmp_path / "nowhere"
    line = _fails(capsys, ["users", "segment", "--export", missing, "--k", "2", "--out", tmp_path / "o2"])
    assert line.startswith(f"icg users segment: --export: {missing} is not a folder")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    line = _fails(capsys, ["users", "segment", "--export", export, "--k", "2", "--out", taken])
    assert line == f"icg users segment: --out: {taken} exists and is not empty; give a new folder"
    line = _fails(capsys, ["users", "segment", "--export", export, "--k", "2", "--out", export])
    assert line.startswith("icg users segment: --out: ") and "is the input export" in line
    assert not (tmp_path / "out").exists() and (taken / "x").read_text() == "mine"

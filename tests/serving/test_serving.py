"""``icg serve``: the cover service's answers, fallbacks, image files, Host guard, export check and bad pool folders."""

from __future__ import annotations

import http.client
import json
import statistics
import time
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest

from icg.cli import main
from icg.serving.app import create_app
from icg.serving.pool import CoverPool, PoolError, check_export
from icg.study.server import running
from tests.helpers.serving import cover_of, serving, write_png, write_pool

POOL_ROWS = [
    ("i1", 0, None),  # i1: cold-start, segment a, and a third cover
    ("i1", 1, "a"),
    ("i1", 2, None),
    ("i2", 0, "a"),  # i2: segment a only (no cold-start cover)
    ("i3", 0, None),  # i3: cold-start only
    ("i3", 1, None),
]
PICKS = [("u1", "i1", 2, 0.7), ("u1", "i2", 0, None), ("u3", "i3", 1, 0.2)]
SEGMENTS = {"u1": "b", "u2": "a"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """An icg dataset's items table: i1, i2 (also in the pool) and i4 (not) with reference covers; i5 without."""
    root = tmp_path_factory.mktemp("data")
    items = ["i1", "i2", "i4", "i5"]
    for item in items[:3]:
        write_png(root / "images" / f"{item}.png", f"reference {item}")
    images = [f"images/{i}.png" for i in items]
    pd.DataFrame({"item_id": items, "title": items, "image": images}).to_parquet(root / "items.parquet")
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    return write_pool(tmp_path_factory.mktemp("pool") / "pool", POOL_ROWS, PICKS, SEGMENTS, fallback_users=["u3"])


@pytest.fixture(scope="module")
def url(pool, dataset):
    with running(create_app(CoverPool.load(pool, dataset))) as base:
        yield base


def get(base: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` sent exactly as written (no client-side normalization of ``..``)."""
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def ask(base: str, user: str, item: str) -> tuple[int, dict]:
    status, body = get(base, "/cover?" + urllib.parse.urlencode({"user": user, "item": item}))
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("user", "item", "source", "cover", "score", "note"),
    [
        ("u1", "i1", "pick", "/covers/i1/2.png", 0.7, None),
        ("u1", "i2", "pick", "/covers/i2/0.png", None, None),
        (
            "u3",
            "i3",
            "pick",
            "/covers/i3/1.png",
            0.2,
            "picked with the export's cold-start user (the user was unknown to the export)",
        ),  # fmt: skip
        (
            "u2",
            "i1",
            "segment",
            "/covers/i1/1.png",
            None,
            "user 'u2' has no pick for item 'i1': the cover of their segment 'a'",
        ),  # fmt: skip
        (
            "u2",
            "i3",
            "cold_start",
            "/covers/i3/0.png",
            None,
            "user 'u2' has no pick for item 'i3' and their segment 'a' no cover of it: the item's cold-start cover",
        ),
        (
            "u1",
            "i3",
            "cold_start",
            "/covers/i3/0.png",
            None,
            "user 'u1' has no pick for item 'i3' and their segment 'b' no cover of it: the item's cold-start cover",
        ),
        (
            "nobody",
            "i1",
            "cold_start",
            "/covers/i1/0.png",
            None,
            "user 'nobody' is not in the pool: the item's cold-start cover",
        ),  # fmt: skip
        (
            "nobody",
            "i2",
            "reference",
            "/reference/i2",
            None,
            "user 'nobody' is not in the pool; item 'i2' has no cold-start cover: the item's reference cover",
        ),
        ("u2", "i4", "reference", "/reference/i4", None, "item 'i4' is not in the pool: the item's reference cover"),
        (
            "nobody",
            "i4",
            "reference",
            "/reference/i4",
            None,
            "user 'nobody' is not in the pool; item 'i4' is not in the pool: the item's reference cover",
        ),
    ],
)
def test_each_fallback_level_answers_with_its_source_and_note(url, user, item, source, cover, score, note):
    status, body = ask(url, user, item)
    assert status == 200
    assert body == {"user": user, "item": item, "cover": cover, "score": score, "source": source, "note": note}


def test_an_item_known_nowhere_is_404_naming_it(url, pool, dataset):
    for item in ("i9", "i5"):  # i5: in the dataset, but its reference file is missing
        status, body = ask(url, "u1", item)
        assert status == 404
        assert body["detail"] == f"item {item!r} is in neither the pool {pool} nor the dataset {dataset}"
    without_dataset = CoverPool.load(pool)
    assert without_dataset.answer("u1", "i4") is None
    assert "no --data_root" in without_dataset.unknown_item("i4")


def test_missing_or_empty_query_parameters_are_400_naming_them(url):
    for query, names in (("", "user, item"), ("?user=u1", "item"), ("?item=i1&user=", "user")):
        status, body = get(url, f"/cover{query}")
        assert status == 400
        assert json.loads(body)["detail"] == (f"missing or empty query parameter(s) {names}: ask /cover?user=U&item=I")


def test_the_cover_and_reference_addresses_serve_the_files_bytes(url, pool, dataset):
    for user, item, file in (("u1", "i1", pool / cover_of("i1", 2)), ("u2", "i1", pool / cover_of("i1", 1)),
                             ("nobody", "i4", dataset / "images" / "i4.png")):  # fmt: skip
        status, body = get(url, ask(url, user, item)[1]["cover"])
        assert status == 200
        assert body == file.read_bytes()
    assert pool.joinpath(cover_of("i1", 2)).read_bytes() != pool.joinpath(cover_of("i1", 1)).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/covers/../generate.json",
        "/covers/%2e%2e/generate.json",
        "/covers/..%2Fpicks.parquet",
        "/covers/i1/../../generate.json",
        "/covers/" + "..%2F" * 8 + "etc/passwd",
        "/covers//etc/passwd",
        "/covers/i1",
        "/reference/..%2Fitems.parquet",
        "/reference/i5",
    ],
)
def test_no_address_reaches_a_file_outside_the_pool_covers_or_the_references(url, path):
    status, body = get(url, path)
    assert status == 404
    assert b"PAR1" not in body and b"export_weights" not in body and b"root:" not in body


def test_a_host_that_is_not_this_server_gets_400_and_no_data(url):
    status, body = get(url, "/cover?user=u1&item=i1", headers={"Host": "attacker.example"})
    assert status == 400 and b"covers" not in body
    assert get(url, "/cover?user=u1&item=i1", headers={"Host": "localhost:8000"})[0] == 200


def test_a_cover_outside_the_covers_folder_is_refused_at_start_up(tmp_path):
    root = write_pool(tmp_path / "pool", POOL_ROWS, PICKS)
    picks = pd.read_parquet(root / "picks.parquet")
    picks.loc[1, "cover"] = "../generate.json"
    picks.to_parquet(root / "picks.parquet")
    with pytest.raises(PoolError, match=r"picks.parquet row 2: cover '\.\./generate.json' is not a file inside"):
        CoverPool.load(root)


def test_a_pool_of_another_export_is_refused_naming_both(tmp_path):
    import torch

    from icg.generation import UserTable
    from icg.generation.export import export_fingerprint, read_config
    from tests.helpers.generation import write_tiny_export

    export = write_tiny_export(tmp_path / "export", UserTable(["u1", "u2"], torch.randn(3, 8)))
    weights = export_fingerprint(export, read_config(export))
    same = write_pool(tmp_path / "same", POOL_ROWS, PICKS, settings={"export_weights": weights})
    check_export(CoverPool.load(same), export)  # the export that made it: served
    other = write_pool(tmp_path / "other", POOL_ROWS, PICKS, settings={"export_weights": "f" * 32})
    with pytest.raises(PoolError) as refused:
        check_export(CoverPool.load(other), export)
    message = str(refused.value)
    assert str(other) in message and f"--export {export}" in message
    assert f"export_weights {'f' * 32}" in message and weights in message and "\n" not in message


def _fails(capsys, *words: str) -> str:
    """The one stderr line of a failed ``icg serve`` (exit status 2)."""
    assert main(["serve", *words, "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    return captured.err.strip()


def _pool_with(tmp_path: Path, change) -> Path:
    root = write_pool(tmp_path / "pool", POOL_ROWS, PICKS, SEGMENTS)
    change(root)
    return root


def _set(table: str, column: str, values) -> object:
    def change(root: Path) -> None:
        frame = pd.read_parquet(root / table)
        frame[column] = values
        frame.to_parquet(root / table, index=False)

    return change


def test_bad_pool_folders_are_one_line_naming_the_file(tmp_path, capsys):
    assert _fails(capsys, "--pool", str(tmp_path / "nowhere")) == (
        f"icg serve: --pool: {tmp_path / 'nowhere'} is not a folder (expected the pool folder `icg generate` wrote)"
    )
    root = _pool_with(tmp_path / "a", lambda r: (r / "picks.parquet").unlink())
    assert _fails(capsys, "--pool", str(root)).startswith(f"icg serve: --pool: {root} has no picks.parquet")
    root = _pool_with(tmp_path / "b", _set("pool.parquet", "slot", "first"))
    assert _fails(capsys, "--pool", str(root)) == (
        f"icg serve: {root / 'pool.parquet'}: column 'slot' holds large_string, expected integers"
    )
    root = _pool_with(tmp_path / "c", lambda r: pd.read_parquet(r / "picks.parquet").drop(columns="score").to_parquet(
        r / "picks.parquet"))  # fmt: skip
    assert _fails(capsys, "--pool", str(root)).startswith(
        f"icg serve: {root / 'picks.parquet'}: missing column(s) score; expected user_id, item_id, slot, cover, score"
    )
    root = _pool_with(tmp_path / "d", lambda r: (r / "segments.parquet").write_text("user_id,segment\nu1,a\n"))
    assert _fails(capsys, "--pool", str(root)).startswith(
        f"icg serve: {root / 'segments.parquet'}: not a readable parquet table"
    )
    root = _pool_with(tmp_path / "e", _set("picks.parquet", "user_id", ["u1", "u1", "u1"]))
    _set("picks.parquet", "item_id", ["i1", "i2", "i1"])(root)
    assert _fails(capsys, "--pool", str(root)) == (
        f"icg serve: {root / 'picks.parquet'} row 3: a second pick for user 'u1' and item 'i1' (one per pair)"
    )
    root = _pool_with(tmp_path / "f", lambda r: (r / "covers" / "i3" / "1.png").unlink())
    assert _fails(capsys, "--pool", str(root)) == (
        f"icg serve: {root / 'pool.parquet'} row 6: cover {root / 'covers/i3/1.png'} does not exist "
        "(1 of 6 cover files missing)"
    )
    root = _pool_with(tmp_path / "g", _set("pool.parquet", "item_id", ["i1", "", "i1", "i2", "i3", "i3"]))
    assert _fails(capsys, "--pool", str(root)) == f"icg serve: {root / 'pool.parquet'} row 2: item_id is empty"
    root = _pool_with(tmp_path / "h", lambda r: (r / "generate.json").write_text("{not json"))
    assert _fails(capsys, "--pool", str(root)).startswith(f"icg serve: {root / 'generate.json'}: not valid JSON")


def test_a_pool_of_another_export_is_one_line_through_the_command(tmp_path, capsys):
    root = write_pool(tmp_path / "pool", POOL_ROWS, PICKS)
    assert _fails(capsys, "--pool", str(root), "--export", str(tmp_path / "none")).startswith(
        f"icg serve: --export: {tmp_path / 'none'} is not a folder"
    )


def test_icg_serve_answers_on_loopback_and_stops_on_ctrl_c(pool, dataset):
    with serving(pool, "--data_root", str(dataset)) as (process, base):
        assert base.startswith("http://127.0.0.1:")
        status, body = ask(base, "u2", "i1")
        assert (status, body["source"], body["cover"]) == (200, "segment", "/covers/i1/1.png")
        status, health = get(base, "/healthz")
        assert json.loads(health) == {"status": "ok", "mode": "pool", "export_weights": "0" * 32, "users": 3,
                                      "items": 3, "picks": 3, "covers": 6, "references": 3}  # fmt: skip
    assert process.returncode == 130  # stopped by Ctrl-C, as `icg study serve` and `icg explore` report it


def test_back_to_back_requests_on_one_connection_wait_for_no_delayed_ack(url):
    """A reply is written in two pieces (head, body); without TCP_NODELAY on the server's connections the second
    waited for the client's delayed ACK, ~40 ms per request on Linux (``icg.study.server.bind``)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    seconds = []
    try:
        for _ in range(21):
            start = time.perf_counter()
            connection.request("GET", "/cover?user=u1&item=i1")
            connection.getresponse().read()
            seconds.append(time.perf_counter() - start)
    finally:
        connection.close()
    assert statistics.median(seconds) < 0.02

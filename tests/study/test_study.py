"""The blind pairwise study: manifest, design, SQLite store, results, simulated raters, the server and its errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from icg.cover_manifest import ManifestError, read_manifest, resolve_manifest, write_manifest_folder
from icg.lit.callbacks import save_png
from icg.study.design import StudyDesign, StudyInputError
from icg.study.results import bradley_terry, study_results
from icg.study.store import StudyDatabaseError, StudyStore
from tests.helpers.study import METHODS_BEST_FIRST, oracle_means, recoloured_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study_run(tiny_platform, tmp_path_factory) -> Path:
    """12 users x 2 items x 3 recolourings: 24 pairs, 72 comparisons."""
    return recoloured_run(tiny_platform, tmp_path_factory.mktemp("study") / "run")


def load(run: Path, platform: Path, db: Path, pairs_per_rater: int | None = None):
    from icg.study.screens import load_study

    return load_study(run, platform, db, seed=0, pairs_per_rater=pairs_per_rater)


def study(words: list[str], capsys) -> tuple[int, str, str]:
    from icg.cli import main

    code = main(["study", *map(str, words)])
    out, err = capsys.readouterr()
    return code, out, err


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT rater, comparison_id, left_method, right_method, choice FROM answers"
        ).fetchall()


# ------------------------------------------------------------------------------------------------ manifest + design
def test_manifest_round_trip_and_layouts(study_run):
    entries = read_manifest(study_run)  # the run folder resolves to covers/manifest.jsonl
    assert resolve_manifest(study_run) == study_run / "covers" / "manifest.jsonl"
    assert len(entries) == 12 * 2 * 3 and all(e.file.is_file() for e in entries)
    assert {e.method for e in entries} == set(METHODS_BEST_FIRST)
    assert read_manifest(study_run / "covers") == entries == read_manifest(study_run / "covers" / "manifest.jsonl")


def test_manifest_folder_is_replaced_whole(tmp_path):
    image = torch.rand(3, 8, 8)
    rows = [({"user_id": "u/1", "item_id": "i 1", "method": m}, image) for m in ("a", "b")]
    first = write_manifest_folder(tmp_path / "covers", rows, save_png)
    write_manifest_folder(tmp_path / "covers", rows[:1], save_png)
    assert [e.method for e in read_manifest(first)] == ["a"]
    assert not (tmp_path / "covers" / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["covers"]  # no temporary folder left behind
    assert read_manifest(first)[0].user_id == "u/1"  # ids stay exact; only file names are slugged


def test_bad_manifest_rows_are_one_line_naming_the_line(tmp_path):
    save_png(torch.rand(3, 8, 8), tmp_path / "x.png")
    lines = [
        {"user_id": "u", "item_id": "i", "method": "a", "file": "x.png"},
        {"user_id": "u", "item_id": "i", "method": "b", "file": "missing.png"},
        {"user_id": "u", "item_id": "i", "method": "a", "file": "x.png"},
        {"user_id": "", "item_id": "i", "method": "c", "file": "x.png"},
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n{not json\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "4 bad row(s)" in message
    assert "line 2: file 'missing.png' does not exist" in message and "line 3: duplicate" in message


def test_fewer_than_two_methods_is_refused(tmp_path, tiny_platform, capsys):
    save_png(torch.rand(3, 8, 8), tmp_path / "x.png")
    row = {"user_id": "u0000", "item_id": "i00000", "method": "icg", "file": "x.png"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(StudyInputError, match="covers of 1 method"):
        StudyDesign.from_manifest(tmp_path)
    code, _, err = study(
        ["serve", tmp_path, "--data_root", tiny_platform, "--db", tmp_path / "s.db", "--port", 0], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "at least two methods" in err
    assert not (tmp_path / "s.db").exists()  # nothing created for a study that cannot run


def test_design_orders_and_sides_are_per_rater_and_stable(study_run):
    design = StudyDesign.from_manifest(study_run)
    assert len(design.comparisons) == 24 * 3 and design.methods == sorted(METHODS_BEST_FIRST)
    assert all(c.method_a < c.method_b for c in design.comparisons)
    ids = [c.id for c in design.comparisons]
    alice, bob = design.order("alice"), design.order("bob")
    assert sorted(alice) == ids and alice != bob and alice == StudyDesign.from_manifest(study_run).order("alice")
    lefts = [design.sides("alice", cid)[0] == design.comparison(cid).method_a for cid in ids]
    assert 0.3 < np.mean(lefts) < 0.7  # both arrangements occur
    assert design.sides("alice", 5) == StudyDesign.from_manifest(study_run).sides("alice", 5)
    assert StudyDesign.from_manifest(study_run, seed=1).order("alice") != alice


# ------------------------------------------------------------------------------------------------ store
def test_store_is_wal_keeps_one_answer_per_rater_and_screen(study_run, tiny_platform, tmp_path):
    s = load(study_run, tiny_platform, tmp_path / "s.db")
    with sqlite3.connect(tmp_path / "s.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    first = s.queue("alice")[0]
    assert s.answer("alice", first, "left") is True
    assert s.answer("alice", first, "right") is False  # a second answer to the same screen is ignored
    assert rows(tmp_path / "s.db") == [("alice", first, *s.design.sides("alice", first), "left")]
    assert s.progress("alice")[:2] == (s.queue("alice")[1], 1)
    with pytest.raises(StudyInputError, match="choice"):
        s.answer("alice", s.queue("alice")[1], "both")


def test_a_database_of_another_study_is_refused(study_run, tiny_platform, tmp_path, capsys):
    load(study_run, tiny_platform, tmp_path / "s.db").answer("alice", 1, "none")
    load(study_run, tiny_platform, tmp_path / "s.db")  # the same study reopens
    other = recoloured_run(tiny_platform, tmp_path / "other", users=3, items_per_user=1)
    with pytest.raises(StudyDatabaseError, match="another study"):
        load(other, tiny_platform, tmp_path / "s.db")
    code, _, err = study(["simulate", other, "--data_root", tiny_platform, "--db", tmp_path / "s.db"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Refusing to mix" in err and "--db" in err
    assert len(rows(tmp_path / "s.db")) == 1  # untouched
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StudyDatabaseError, match="not an SQLite database"):
        load(study_run, tiny_platform, tmp_path / "junk.db")
    with sqlite3.connect(tmp_path / "plain.db") as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(StudyDatabaseError, match="not an icg study"):
        load(study_run, tiny_platform, tmp_path / "plain.db")


# ------------------------------------------------------------------------------------------------ results
def test_bradley_terry_matches_the_closed_form_for_two_methods():
    points = np.array([[0.0, 30.0], [10.0, 0.0]])
    scores = bradley_terry(points, prior=0.5)
    assert scores[0] - scores[1] == pytest.approx(np.log(30.5 / 10.5), abs=1e-8)
    assert scores.sum() == pytest.approx(0.0, abs=1e-12)
    # three methods generated from known strengths: the fit recovers them (large counts, prior negligible)
    truth = np.array([1.0, 0.0, -1.0])
    p = 1 / (1 + np.exp(-(truth[:, None] - truth[None, :])))
    fitted = bradley_terry(1e6 * p * (1 - np.eye(3)), prior=0.5)
    np.testing.assert_allclose(fitted, truth, atol=1e-4)
    batch = bradley_terry(np.stack([points, points[::-1, ::-1]]))  # vectorized over a leading dimension
    np.testing.assert_allclose(batch[0], scores) and np.testing.assert_allclose(batch[1], scores[::-1])


def test_results_count_ties_as_halves_and_resample_raters(study_run, tiny_platform, tmp_path):
    s = load(study_run, tiny_platform, tmp_path / "s.db")
    c = s.design.comparisons[0]
    for rater, pick in (("r1", c.method_b), ("r2", c.method_b), ("r3", None)):
        left, right = s.design.sides(rater, c.id)
        s.answer(rater, c.id, "none" if pick is None else ("left" if left == pick else "right"))
    result = study_results(tmp_path / "s.db", bootstrap_samples=300, seed=1)
    pair = next(p for p in result["pairs"] if (p["a"], p["b"]) == (c.method_a, c.method_b))
    assert (pair["answers"], pair["a_wins"], pair["b_wins"], pair["no_preference"]) == (3, 0, 2, 1)
    assert pair["a_win_rate"] == pytest.approx(0.5 / 3)
    assert 0.0 <= pair["ci_low"] <= pair["a_win_rate"] <= pair["ci_high"] <= 0.5
    assert result["study"]["raters"] == 3 and result["study"]["no_preference_share"] == pytest.approx(1 / 3)
    assert result["bradley_terry"][c.method_b]["rank"] < result["bradley_terry"][c.method_a]["rank"]
    single = load(study_run, tiny_platform, tmp_path / "one.db")
    with pytest.raises(StudyDatabaseError, match="no answers yet"):
        study_results(tmp_path / "one.db")
    single.answer("solo", single.queue("solo")[0], "left")
    lone = study_results(tmp_path / "one.db")
    assert sum(p["answers"] for p in lone["pairs"]) == 1
    assert all(entry["ci_low"] is None for entry in [*lone["pairs"], *lone["bradley_terry"].values()])  # 1 rater


# ------------------------------------------------------------------------------------------------ simulated raters
def test_simulated_study_ranks_methods_as_the_oracle_does(study_run, tiny_platform, tmp_path, capsys):
    means = oracle_means(tiny_platform, study_run)
    assert sorted(means, key=means.get, reverse=True) == list(METHODS_BEST_FIRST)  # the order by construction
    db = tmp_path / "sim.db"
    code, out, _ = study(["simulate", study_run, "--data_root", tiny_platform, "--db", db, "--raters", 8], capsys)
    assert code == 0 and "576 answers stored" in out
    code, out, _ = study(["results", db, "--out", tmp_path / "results", "--bootstrap", 500], capsys)
    assert code == 0 and "| 1 | recolour_towards |" in out
    result = json.loads((tmp_path / "results" / "study_results.json").read_text())
    assert result["ranking"] == list(METHODS_BEST_FIRST)
    assert result["study"]["answers"] == 8 * 72 and result["study"]["raters"] == 8
    bt = result["bradley_terry"]
    assert bt["recolour_towards"]["ci_low"] > bt["recolour_none"]["ci_high"]  # separated beyond the rater bootstrap
    assert (tmp_path / "results" / "study_results.md").read_text().startswith("# Blind pairwise study")
    code, out, _ = study(["simulate", study_run, "--data_root", tiny_platform, "--db", db, "--raters", 8], capsys)
    assert code == 0 and "0 answers stored" in out  # the same raters resume: nothing answered twice


def test_simulation_without_an_oracle_is_one_line(study_run, tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    code, _, err = study(["simulate", study_run, "--data_root", empty, "--db", tmp_path / "s.db"], capsys)
    assert code == 2 and err.count("\n") == 1 and "synthetic platform" in err


# ------------------------------------------------------------------------------------------------ the server
def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def session(url: str, rater: str):
    """A client that joined as ``rater`` with the link ``/?rater=`` (it holds the cookie)."""
    from icg.study.simulate import rater_session

    return rater_session(url, rater, 30)


def open_json(client, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a POST of ``body``, through ``client`` (an opener)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with client.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        try:
            return err.code, json.loads(text)
        except json.JSONDecodeError:
            return err.code, {"text": text}  # the guard's plain-text refusals


def post_form(client, url: str, fields: dict, headers: dict | None = None) -> tuple[int, str]:
    """(status, body) of a form POST (what the rating page sends); redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    data = urllib.parse.urlencode(fields).encode()
    kind = {"Content-Type": "application/x-www-form-urlencoded"}
    request = urllib.request.Request(url, data, {**kind, **(headers or {})})
    handlers = [h for h in getattr(client, "handlers", []) if isinstance(h, urllib.request.HTTPCookieProcessor)]
    try:
        with urllib.request.build_opener(*handlers, NoRedirect()).open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_pages_never_name_a_method(study_run, tiny_platform, tmp_path):
    from icg.study.app import create_app
    from icg.study.server import running

    s = load(study_run, tiny_platform, tmp_path / "s.db")
    with running(create_app(s)) as url:
        alice = session(url, "alice")
        page = alice.open(f"{url}/rate", timeout=30).read().decode()
        screen = open_json(alice, f"{url}/api/next")[1]
        images = [alice.open(url + path, timeout=30).read() for path in (screen["left"], screen["right"])]
        with pytest.raises(urllib.error.HTTPError) as start:
            urllib.request.urlopen(f"{url}/?rater=bad%20id", timeout=30)
        assert "/rate" not in urllib.request.urlopen(f"{url}/rate", timeout=30).url  # no cookie: the start page
    assert start.value.code == 400
    assert "rater id &#39;bad id&#39;: use 1-64 letters" in start.value.read().decode()  # the start page says why
    assert "/cover/" in page and "User u00" in page
    for method in METHODS_BEST_FIRST:
        assert method not in page and method not in json.dumps(screen)
    left, right = s.design.sides("alice", screen["comparison_id"])
    assert images[0] == s.design.cover(screen["comparison_id"], left).file.read_bytes()
    assert images[1] == s.design.cover(screen["comparison_id"], right).file.read_bytes()


# ------------------------------------------------------------------------------------------------ who may ask
def test_a_host_that_is_not_this_server_gets_400_and_no_data(study_run, tiny_platform, tmp_path):
    from icg.study.app import create_app
    from icg.study.server import running

    s = load(study_run, tiny_platform, tmp_path / "s.db")
    with running(create_app(s, allowed_hosts=["study.lab"])) as url:
        alice, port = session(url, "alice"), url.rsplit(":", 1)[1]
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", f"127.0.0.2:{port}"):
            status, body = open_json(alice, f"{url}/api/next", headers={"Host": host})
            assert status == 400 and "comparison_id" not in body and "--allowed_hosts" in body["text"], host
            assert open_json(alice, f"{url}/healthz", headers={"Host": host})[0] == 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "study.lab", f"study.lab:{port}"):
            status, body = open_json(alice, f"{url}/api/next", headers={"Host": host})
            assert status == 200 and "comparison_id" in body, host


def test_posts_from_another_site_are_refused_and_store_nothing(study_run, tiny_platform, tmp_path):
    from icg.study.app import create_app
    from icg.study.server import running

    db = tmp_path / "s.db"
    s = load(study_run, tiny_platform, db)
    with running(create_app(s)) as url:
        alice, nobody = session(url, "alice"), urllib.request.build_opener()
        shown = open_json(alice, f"{url}/api/next")[1]["comparison_id"]
        form = {"comparison_id": shown, "choice": "left"}
        # the request: another site's form, ?rater= in the address, no cookie
        status, body = post_form(nobody, f"{url}/answer?rater=frank", form, {"Origin": "http://evil.example"})
        assert status == 403 and "Origin 'http://evil.example' is not this server" in body
        # even with the rater's cookie (a browser that sends it), or by Referer alone, or from a sandboxed frame
        for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"},
                        {"Origin": "null"}, {"Origin": f"http://localhost:{url.rsplit(':', 1)[1]}"}):  # fmt: skip
            assert post_form(alice, f"{url}/answer", form, headers)[0] == 403, headers
            assert open_json(alice, f"{url}/api/answer", form, headers)[0] == 403, headers
        assert post_form(nobody, f"{url}/start", {"rater": "mallory"}, {"Origin": "http://evil.example"})[0] == 403
        assert rows(db) == []
        # the rater's own page: same origin (Origin as a browser sends it), stored
        assert post_form(alice, f"{url}/answer", form, {"Origin": url, "Referer": f"{url}/rate"})[0] == 303
    assert [(r, c) for r, c, *_ in rows(db)] == [("alice", shown)]


def test_the_rater_is_the_cookie_never_the_address_or_the_body(study_run, tiny_platform, tmp_path):
    from icg.study.app import create_app
    from icg.study.server import running

    db = tmp_path / "s.db"
    s = load(study_run, tiny_platform, db)
    with running(create_app(s)) as url:
        frank, alice, nobody = session(url, "frank"), session(url, "alice"), urllib.request.build_opener()
        for client in (frank, alice):  # both are shown their first screen
            open_json(client, f"{url}/api/next")
        first = s.queue("frank")[0]
        form = {"comparison_id": first, "choice": "left", "rater": "frank"}
        status, body = post_form(nobody, f"{url}/answer?rater=frank", form)
        assert status == 400 and "no rater" in body
        status, body = open_json(nobody, f"{url}/api/answer?rater=frank", form)
        assert status == 400 and "no rater" in body["detail"]
        assert open_json(nobody, f"{url}/api/next?rater=frank")[0] == 400
        # alice's cookie with frank's name in the address and the body: alice answers (her own screen) or nothing
        mine = s.queue("alice")[0]
        assert open_json(alice, f"{url}/api/answer?rater=frank", {**form, "comparison_id": mine})[0] == 200
    assert [(r, c) for r, c, *_ in rows(db)] == [("alice", mine)]


def test_only_the_screen_shown_can_be_answered(study_run, tiny_platform, tmp_path):
    from icg.study.app import create_app
    from icg.study.server import running

    db = tmp_path / "s.db"
    s = load(study_run, tiny_platform, db)
    with running(create_app(s)) as url:
        bob = session(url, "bob")  # the link shows /rate: the first screen is shown
        queue = s.queue("bob")
        for cid in queue[1:4]:  # in bob's queue, never shown
            status, body = open_json(bob, f"{url}/api/answer", {"comparison_id": cid, "choice": "left"})
            assert status == 409 and f"comparison {cid} was never shown to rater 'bob'" in body["detail"]
            assert f"comparison {queue[0]}" in body["detail"]
            assert post_form(bob, f"{url}/answer", {"comparison_id": cid, "choice": "right"})[0] == 409
        assert rows(db) == []
        assert open_json(bob, f"{url}/api/answer", {"comparison_id": queue[0], "choice": "none"})[1]["stored"]
        assert open_json(bob, f"{url}/api/answer", {"comparison_id": queue[1], "choice": "none"})[0] == 409
        assert open_json(bob, f"{url}/api/next")[1]["comparison_id"] == queue[1]  # now shown: answerable
        assert open_json(bob, f"{url}/api/answer", {"comparison_id": queue[1], "choice": "left"})[1]["stored"]
    assert [(r, c) for r, c, *_ in rows(db)] == [("bob", queue[0]), ("bob", queue[1])]


def test_guard_names_and_a_request_without_host():
    import asyncio

    from icg.study.guard import RequestGuard, allowed_hosts, host_name, parse_allowed_hosts

    assert [host_name(h) for h in ("[::1]:8000", "LocalHost:80", "::1", "example.org", "[::1]")] == [
        "::1", "localhost", "::1", "example.org", "::1"]  # fmt: skip
    names, added = allowed_hosts("0.0.0.0", parse_allowed_hosts(" Lab.example , 10.0.0.5,"))
    assert names == {"localhost", "127.0.0.1", "::1", "0.0.0.0", "lab.example", "10.0.0.5"}
    assert added == {"lab.example", "10.0.0.5"}
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    guard = RequestGuard(app, "127.0.0.1")
    scope = {"type": "http", "method": "GET", "path": "/api/next", "headers": [], "scheme": "http"}
    asyncio.run(guard(scope, receive, send))  # HTTP/1.0 without a Host header
    assert reached == [] and sent[0]["status"] == 400 and b"no Host header" in sent[1]["body"]
    ok = {**scope, "method": "POST", "headers": [(b"host", b"127.0.0.1:8000")]}
    asyncio.run(guard(ok, receive, send))  # a program's POST: neither Origin nor Referer
    assert reached == ["/api/next"]
    cross = [(b"host", b"127.0.0.1:8000"), (b"sec-fetch-site", b"cross-site")]
    embedded = {**scope, "path": "/cover/a.png", "headers": [*cross, (b"sec-fetch-mode", b"no-cors")]}
    asyncio.run(guard(embedded, receive, send))  # another site's <img src=...>
    assert reached == ["/api/next"] and sent[-2]["status"] == 403 and b"another site" in sent[-1]["body"]
    link = {**scope, "path": "/", "headers": [*cross, (b"sec-fetch-mode", b"navigate")]}
    asyncio.run(guard(link, receive, send))  # a link from another site opens the start page
    assert reached == ["/api/next", "/"]


def _tamper(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as connection:
        for statement in statements:
            connection.execute(statement)


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        (["UPDATE study_meta SET value = 'two' WHERE key = 'version'"], "version 'two'; this icg reads versions 1, 2"),
        (["UPDATE study_meta SET value = '9' WHERE key = 'version'"], "version '9'"),
        (["UPDATE study_meta SET value = 'x' WHERE key = 'seed'"], "seed 'x' is not a whole number"),
        (["UPDATE study_meta SET value = '1' WHERE key = 'seed'"], "holds another study"),
        (["UPDATE study_meta SET value = 'abc' WHERE key = 'fingerprint'"], "holds another study"),
        (["DELETE FROM study_meta WHERE key = 'fingerprint'"], "no covers fingerprint"),
        (["UPDATE study_meta SET value = '[\"a\", ' WHERE key = 'methods'"], "is not a JSON list of method names"),
        (["UPDATE study_meta SET value = '[\"a\", \"b\"]' WHERE key = 'methods'"], 'method list ["a", "b"] is not'),
        (["UPDATE comparisons SET method_a = 'zzz' WHERE id = 3"], "comparison row 3 is ("),
        (["DELETE FROM comparisons WHERE id = 72"], "comparisons table has 71 rows, not 72"),
        (["DROP INDEX answers_by_rater"], "without its 'answers_by_rater'"),
        (["DROP TABLE served"], "without its 'served'"),
        (["CREATE TABLE notes (x)"], "other tables ['notes']"),
        (["DROP TABLE answers", "CREATE TABLE answers (id, rater, comparison_id)"], "'answers' is not"),
    ],
)
def test_a_tampered_database_is_one_line_at_start_up(study_run, tiny_platform, tmp_path, capsys, statements, message):
    db = tmp_path / "s.db"
    load(study_run, tiny_platform, db).store.close()
    _tamper(db, *statements)
    with pytest.raises(StudyDatabaseError) as err:
        load(study_run, tiny_platform, db)
    assert message in str(err.value) and str(err.value).startswith(str(db)) and "\n" not in str(err.value)
    code, _, err = study(["simulate", study_run, "--data_root", tiny_platform, "--db", db, "--raters", 1], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"icg study simulate: {db}: ") and message in err


def test_results_of_a_tampered_database_is_one_line(study_run, tiny_platform, tmp_path, capsys):
    db = tmp_path / "s.db"
    load(study_run, tiny_platform, db).answer("alice", 1, "left")
    _tamper(db, "UPDATE study_meta SET value = 'not json' WHERE key = 'methods'")
    code, _, err = study(["results", db], capsys)
    assert code == 2 and err.count("\n") == 1 and "methods 'not json' is not a JSON list" in err


def test_a_version_1_database_gains_the_served_table_and_keeps_its_answers(study_run, tiny_platform, tmp_path):
    db = tmp_path / "s.db"
    load(study_run, tiny_platform, db).answer("alice", 1, "left")
    _tamper(db, "DROP TABLE served", "UPDATE study_meta SET value = '1' WHERE key = 'version'")
    assert StudyStore.open_existing(db).meta()["version"] == "1"  # results read it as it is
    s = load(study_run, tiny_platform, db)
    assert s.store.meta()["version"] == "2" and len(rows(db)) == 1
    s.show("alice")
    assert s.store.was_served("alice", s.progress("alice")[0])


def test_twenty_concurrent_raters_lose_no_answer(study_run, tiny_platform, tmp_path):
    from icg.study.app import create_app
    from icg.study.server import running
    from icg.study.simulate import OracleJudge, simulate_over_http

    s = load(study_run, tiny_platform, tmp_path / "s.db", pairs_per_rater=6)
    with running(create_app(s)) as url:
        stored = simulate_over_http(url, OracleJudge(tiny_platform), raters=20, workers=20)
    answers = rows(tmp_path / "s.db")
    assert stored == len(answers) == 20 * 6
    assert len({(rater, cid) for rater, cid, *_ in answers}) == 120
    for rater in {a[0] for a in answers}:
        assert sorted(cid for r, cid, *_ in answers if r == rater) == sorted(s.queue(rater))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(run: Path, platform: Path, db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    words = ["serve", run, "--data_root", platform, "--db", db, "--port", port]
    process = subprocess.Popen([sys.executable, "-m", "icg.study", *map(str, words)], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _get_json(f"http://127.0.0.1:{port}/healthz")
            return process
        except OSError:
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the study server did not start")


def test_a_killed_server_loses_nothing_and_raters_resume(study_run, tiny_platform, tmp_path, capsys):
    db, port = tmp_path / "s.db", _free_port()
    server = _serve(study_run, tiny_platform, db, port)
    url = f"http://127.0.0.1:{port}"
    try:
        seen, carol = [], session(url, "carol")
        for _ in range(7):
            screen = open_json(carol, f"{url}/api/next")[1]
            answer = open_json(carol, f"{url}/api/answer", {"comparison_id": screen["comparison_id"], "choice": "left"})
            assert answer == (200, {"stored": True, "answered": len(seen) + 1})
            seen.append(screen["comparison_id"])
        # the port is taken now: a second server says so in one line and suggests --port
        code, _, err = study(["serve", study_run, "--data_root", tiny_platform, "--db", db, "--port", port], capsys)
        assert code == 2 and err.count("\n") == 1 and f"port {port}" in err and "--port" in err
    finally:
        server.send_signal(signal.SIGKILL)  # no shutdown, no checkpoint
        server.wait(30)
    assert len(rows(db)) == 7
    server = _serve(study_run, tiny_platform, db, port)
    try:
        screen = open_json(session(url, "carol"), f"{url}/api/next")[1]
        assert screen["answered"] == 7 and screen["comparison_id"] not in seen
    finally:
        server.terminate()
        server.wait(30)


# ------------------------------------------------------------------------------------------------ evaluation side
def test_evaluation_writes_every_held_out_cover_with_a_manifest(tiny_platform, tmp_path):
    from icg.data.datamodule import ICGDataModule
    from icg.evaluation.covers import write_held_out_covers

    dm = ICGDataModule(str(tiny_platform), image_size=32)
    dm.setup()
    pairs = [(0, 3), (1, 3), (2, 7)]
    covers = {"reference": None, **{m: {p: torch.rand(3, 32, 32) for p in pairs} for m in ("title_only", "icg")}}
    manifest = write_held_out_covers(tmp_path / "covers", dm, pairs, covers)
    entries = read_manifest(tmp_path)
    assert manifest == tmp_path / "covers" / "manifest.jsonl" and len(entries) == 2 * 3
    first = entries[0]
    assert (first.user_id, first.item_id, first.method) == (dm.user_ids[0], dm.catalogue.item_ids[3], "title_only")
    assert first.title == dm.catalogue.titles[3]
    stored = torch.from_numpy(np.asarray(__import__("PIL.Image").Image.open(first.file), dtype=np.float32) / 255)
    torch.testing.assert_close(stored.permute(2, 0, 1), covers["title_only"][(0, 3)], atol=1 / 255, rtol=0)
    assert len(StudyDesign.from_manifest(tmp_path).comparisons) == 3  # one per pair: title_only vs icg


def test_user_appeal_row_in_the_evaluation_report(tiny_platform, tmp_path):
    from icg.evaluation.report import format_markdown, write_report
    from icg.study.results import attach_user_appeal
    from tests.helpers.evaluation import fake_report

    rows = [({"user_id": f"u000{k}", "item_id": "i00001", "method": m}, torch.rand(3, 8, 8)) for k in range(3)
            for m in ("title_only", "icg")]  # fmt: skip
    manifest = write_manifest_folder(tmp_path / "run" / "covers", rows, save_png)
    s = load(tmp_path / "run", tiny_platform, tmp_path / "s.db")
    for rater in ("r1", "r2"):
        for cid in s.queue(rater):
            left, _ = s.design.sides(rater, cid)
            s.answer(rater, cid, "left" if left == "icg" else "right")  # everyone prefers icg

    report, grid = fake_report(tmp_path)
    attach_user_appeal(report, None)
    assert "study database" in report["unavailable"]["user_appeal"]
    report["cover_manifest"] = str(manifest)
    attach_user_appeal(report, tmp_path / "s.db")
    assert report["methods"]["icg"]["user_appeal"] > 0 > report["methods"]["title_only"]["user_appeal"]
    assert report["user_appeal"]["same_covers"] is True and report["user_appeal"]["answers"] == 6
    write_report(report, tmp_path / "out", grid=grid, tensorboard=False)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["methods"]["icg"]["user_appeal"] == report["methods"]["icg"]["user_appeal"]
    row = next(line for line in format_markdown(report).splitlines() if "| user_appeal" in line)
    assert row.startswith("| user appeal | user_appeal ↑ | -1.2") and "| 1.2" in row  # title_only, icg columns
    save_png(torch.rand(3, 8, 8), next((tmp_path / "run" / "covers" / "icg").iterdir()))  # other covers now
    attach_user_appeal(report, tmp_path / "s.db")
    assert report["user_appeal"]["same_covers"] is False


@pytest.mark.slow
def test_a_study_over_an_evaluation_run_comes_back_as_its_user_appeal_row(
    tiny_platform,
    tiny_stage1_ckpt,
    tiny_stage2_ckpt,
    tiny_methods,
    tmp_path,
    capsys,
):
    from icg.evaluation.run import evaluate
    from icg.evaluation.settings import DataSettings, EvaluatorSettings, RunSettings, SampleSettings, ScoringSettings
    from icg.study.results import study_results

    settings = dict(rewards=tiny_stage2_ckpt, data=DataSettings(image_size=32, eval_candidates=10),
                    sample=SampleSettings(num_users=4, grid_users=2, grid_items=2, downstream_users=2,
                                          downstream_negatives=1),
                    evaluator=EvaluatorSettings(epochs=1), scoring=ScoringSettings(bootstrap_samples=50),
                    run=RunSettings(batch_size=4, tensorboard=False))  # fmt: skip
    first = evaluate(tiny_platform, tiny_stage1_ckpt, tiny_methods, tmp_path / "run", **settings)
    assert "user_appeal" in first["unavailable"]
    db = tmp_path / "study.db"
    code, out, _ = study(
        ["simulate", tmp_path / "run", "--data_root", tiny_platform, "--db", db, "--raters", 3], capsys
    )
    assert code == 0 and f"{3 * 3 * first['sample']['held_out_pairs']} answers stored" in out  # 3 method pairs each
    again = evaluate(
        tiny_platform, tiny_stage1_ckpt, tiny_methods, tmp_path / "again", study=study_results(db), **settings
    )
    assert again["user_appeal"]["same_covers"] is True  # regenerated covers are byte-identical to the rated ones
    assert again["user_appeal"]["raters"] == 3 and "user_appeal" not in again["unavailable"]
    scores = [again["methods"][m]["user_appeal"] for m in ("title_only", "icg_no_user", "icg")]
    assert all(isinstance(v, float) for v in scores) and sum(scores) == pytest.approx(0.0, abs=1e-9)

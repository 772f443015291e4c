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
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from icg.cover_manifest import ManifestError, read_manifest, resolve_manifest, write_manifest_folder
from icg.lit.callbacks import save_png
from icg.study.design import StudyDesign, StudyInputError
from icg.study.results import bradley_terry, study_results
from icg.study.store import StudyDatabaseError
from tests.study_fixtures import METHODS_BEST_FIRST, oracle_means, recoloured_run
from tests.test_evaluation import tiny_methods  # noqa: F401  (a fixture: the tiny title-only, no-user and ICG)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_run(tiny_platform, tmp_path_factory) -> Path:
    """12 users x 2 items x 3 recolourings: 24 pairs, 72 comparisons."""
    return recoloured_run(tiny_platform, tmp_path_factory.mktemp("study") / "run")


def load(run: Path, platform: Path, db: Path, pairs_per_rater: int | None = None):
    from icg.study.commands import load_study

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


def test_pages_never_name_a_method(study_run, tiny_platform, tmp_path):
    from icg.study.app import create_app
    from icg.study.server import running

    s = load(study_run, tiny_platform, tmp_path / "s.db")
    with running(create_app(s)) as url:
        page = urllib.request.urlopen(f"{url}/rate?rater=alice", timeout=30).read().decode()
        screen = _get_json(f"{url}/api/next?rater=alice")
        images = [urllib.request.urlopen(url + path, timeout=30).read() for path in (screen["left"], screen["right"])]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/rate?rater=bad%20id", timeout=30)
        with pytest.raises(urllib.error.HTTPError) as start:
            urllib.request.urlopen(f"{url}/?rater=bad%20id", timeout=30)
    assert err.value.code == 400 and start.value.code == 400
    assert "rater id &#39;bad id&#39;: use 1-64 letters" in start.value.read().decode()  # the start page says why
    assert "/cover/" in page and "User u00" in page
    for method in METHODS_BEST_FIRST:
        assert method not in page and method not in json.dumps(screen)
    left, right = s.design.sides("alice", screen["comparison_id"])
    assert images[0] == s.design.cover(screen["comparison_id"], left).file.read_bytes()
    assert images[1] == s.design.cover(screen["comparison_id"], right).file.read_bytes()


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
        seen = []
        for _ in range(7):
            screen = _get_json(f"{url}/api/next?rater=carol")
            body = json.dumps({"rater": "carol", "comparison_id": screen["comparison_id"], "choice": "left"}).encode()
            request = urllib.request.Request(f"{url}/api/answer", body, {"Content-Type": "application/json"})
            assert json.loads(urllib.request.urlopen(request, timeout=30).read())["stored"] is True
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
        screen = _get_json(f"{url}/api/next?rater=carol")
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
    from tests.test_evaluation import _fake_report

    rows = [({"user_id": f"u000{k}", "item_id": "i00001", "method": m}, torch.rand(3, 8, 8)) for k in range(3)
            for m in ("title_only", "icg")]  # fmt: skip
    manifest = write_manifest_folder(tmp_path / "run" / "covers", rows, save_png)
    s = load(tmp_path / "run", tiny_platform, tmp_path / "s.db")
    for rater in ("r1", "r2"):
        for cid in s.queue(rater):
            left, _ = s.design.sides(rater, cid)
            s.answer(rater, cid, "left" if left == "icg" else "right")  # everyone prefers icg

    report, grid = _fake_report(tmp_path)
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
    tiny_methods,  # noqa: F811
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

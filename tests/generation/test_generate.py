"""``icg generate``: covers for a pairs file, batched, resumable, collision-free, on Lightning's predict loop.

Fast tests run the command in-process on one rank (``icg.commands.generate.generate``, what ``icg generate`` calls);
the slow ones run it as a user does, in subprocesses: two DDP ranks against one process, and a kill -9 mid-run.
"""

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icg.cli import main
from icg.commands.generate import generate
from icg.cover_manifest import read_manifest
from icg.errors import UserError
from icg.generation import CoverGenerator, UserTable
from icg.generation.cover_folder import SETTINGS, CoverFolder, OutputFolderError, ShardWriter, cover_file
from icg.generation.export import ExportError
from icg.generation.pairs import read_pairs
from icg.output_lock import OutputLock, lock_path
from tests.helpers.cli import REPO, run_cli
from tests.helpers.generation import pairs_csv, write_tiny_export

KNOWN = [f"u{i:04d}" for i in range(0, 30, 2)]  # half of the tiny platform's users; the others get the fallback


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    return write_tiny_export(tmp_path_factory.mktemp("gen") / "export", UserTable(KNOWN, torch.randn(16, 8)))


@pytest.fixture()
def pairs(tiny_platform, tmp_path) -> Path:
    return pairs_csv(tiny_platform, tmp_path / "pairs.csv", rows=8, users=["u0000", "u0001", "u0002"])


def run(export, pairs, out, **kwargs):
    return generate(str(export), str(pairs), str(out), progress_bar=False, **kwargs)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_writes_the_generators_covers_and_a_study_readable_manifest(export, pairs, tiny_platform, tmp_path):
    out = tmp_path / "out"
    summary = run(export, pairs, out, data_root=str(tiny_platform), batch_size=8)
    found, _ = read_pairs(pairs, tiny_platform)
    unknown = sum(p.user_id not in KNOWN for p in found)
    items = len({p.item_id for p in read_pairs(pairs, tiny_platform)[0]})
    expected = {"manifest": str(out / "manifest.jsonl"), "covers": 8, "made": 8, "kept": 0, "skipped": 0,
                "mode": "pairs", "covers_made": 8, "mllm_calls": items}  # fmt: skip  # one batch: each item once
    assert summary.pop("seconds") > 0 and summary.pop("cpu_seconds") > 0
    assert summary == expected | {"fallback": unknown}
    entries = read_manifest(out)  # what `icg study serve` reads
    assert [(e.user_id, e.item_id, e.method) for e in entries] == [(p.user_id, p.item_id, "icg") for p in found]
    # The same covers as the notebook path, pixel for pixel (same batch of 8, same per-pair seeds).
    gen = CoverGenerator.from_pretrained(export)
    covers = gen([p.user_id for p in found], [p.title for p in found], [p.image for p in found],
                 item_ids=[p.item_id for p in found])  # fmt: skip
    for entry, image, seed, fallback in zip(entries, covers.images, covers.seeds, covers.fallback, strict=True):
        assert np.array_equal(pixels(entry.file), np.asarray(image))
        assert entry.extra["seed"] == seed and entry.extra["fallback"] == fallback
        assert entry.title and entry.reference.is_file() and "scores" not in entry.extra
    assert covers.fallback.count(True) == unknown > 0  # the odd users are unknown to the export


def test_a_rerun_resumes_and_redoes_only_what_is_missing_or_incomplete(export, pairs, tiny_platform, tmp_path):
    out = tmp_path / "out"
    run(export, pairs, out, data_root=str(tiny_platform), batch_size=3)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    before = {r["file"]: (out / r["file"]).read_bytes() for r in rows}
    (out / rows[0]["file"]).unlink()  # gone
    (out / rows[1]["file"]).write_bytes(b"\x89PNG half")  # not the size its line records
    # A killed rank's shard: one finished line (kept), then a torn one (ignored).
    (out / "manifest.rank1.jsonl").write_text(json.dumps(rows[2]) + "\n" + json.dumps(rows[3])[:25])
    summary = run(export, pairs, out, data_root=str(tiny_platform), batch_size=3)
    assert (summary["made"], summary["kept"], summary["covers"]) == (2, 6, 8)
    after = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["user_id"], r["item_id"]) for r in after] == [(r["user_id"], r["item_id"]) for r in rows]
    assert {r["file"]: (out / r["file"]).read_bytes() for r in after} == before  # remade identically
    assert not list(out.glob("manifest.rank*")) and not list(out.rglob("*.tmp"))
    assert run(export, pairs, out, data_root=str(tiny_platform))["made"] == 0  # nothing left: nothing runs
    more = pairs_csv(tiny_platform, pairs.with_name("more.csv"), rows=10, users=["u0000", "u0001", "u0002"])
    summary = run(export, more, out, data_root=str(tiny_platform))  # the platform asks for two more covers
    assert (summary["made"], summary["kept"], summary["covers"]) == (2, 8, 10)


def test_other_settings_are_refused_unless_overwrite(export, pairs, tiny_platform, tmp_path):
    out = tmp_path / "out"
    run(export, pairs, out, data_root=str(tiny_platform))
    (out / "notes.txt").write_text("mine")
    old = {r["file"] for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    with pytest.raises(OutputFolderError, match=r"another run \(seed 5 -> 6\).*--overwrite true"):
        run(export, pairs, out, data_root=str(tiny_platform), seed=6)
    with pytest.raises(OutputFolderError, match="num_steps 3 -> 2"):
        run(export, pairs, out, data_root=str(tiny_platform), num_steps=2)
    other = tmp_path / "other_export"  # the same export plus a tensor file (e.g. a LoRA): other covers
    shutil.copytree(export, other)
    (other / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
    with pytest.raises(OutputFolderError, match="export_weights"):
        run(other, pairs, out, data_root=str(tiny_platform))
    summary = run(export, pairs, out, data_root=str(tiny_platform), seed=6, overwrite=True)
    assert summary["made"] == 8 and json.loads((out / SETTINGS).read_text())["seed"] == 6
    new = {r["file"] for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert new == old and (out / "notes.txt").read_text() == "mine"  # same names (same ids), other covers
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.jsonl").write_text('{"user_id": "a"}\n')
    with pytest.raises(OutputFolderError, match="did not write"):
        run(export, pairs, foreign, data_root=str(tiny_platform), overwrite=True)
    assert (foreign / "manifest.jsonl").read_text() == '{"user_id": "a"}\n'


def test_ids_that_differ_only_in_unsafe_characters_get_distinct_files(export, tiny_platform, tmp_path):
    assert cover_file("a/b", "x", "icg") != cover_file("a_b", "x", "icg") != cover_file("a:b", "x", "icg")
    assert cover_file("A", "x", "icg").lower() != cover_file("a", "x", "icg").lower()  # case-insensitive disks too
    image = sorted((tiny_platform / "images").glob("*.png"))[0]
    rows = [{"user_id": u, "item_id": "new 1", "title": "Red star", "image": str(image)} for u in ("a/b", "a_b", "A?b")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(export, tmp_path / "pairs.jsonl", tmp_path / "out")  # title + image columns: no dataset needed
    entries = read_manifest(tmp_path / "out")
    assert len({e.file for e in entries}) == 3 and [e.user_id for e in entries] == ["a/b", "a_b", "A?b"]


def test_bad_rows_are_named_or_skipped_and_written_down(export, tiny_platform, tmp_path):
    image = sorted((tiny_platform / "images").glob("*.png"))[0]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [
        "user_id,item_id,title,image",
        "u0000,i00001,,",  # from the dataset
        "u0000,nope,,",  # unknown item
        f"u0002,new,A title,{tmp_path / 'missing.png'}",  # missing image
        "u0002,new2,A title,broken.png",  # unreadable image (relative to the pairs file)
        ",i00002,,",  # empty user
        "u0000,i00001,,",  # duplicate
        f"u0004,new3,Blue heart,{image}",
    ]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"pairs.csv: 5 bad row\(s\): pairs.csv row 2 \(line 3\): unknown item 'nope'"):
        run(export, tmp_path / "pairs.csv", tmp_path / "out", data_root=str(tiny_platform))
    assert not (tmp_path / "out").exists()  # nothing was written
    summary = run(export, tmp_path / "pairs.csv", tmp_path / "out", data_root=str(tiny_platform),
                  on_bad_record="skip")  # fmt: skip
    assert (summary["covers"], summary["skipped"]) == (2, 5)
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [s["row"] for s in skipped] == [2, 3, 4, 5, 6]
    assert [s["reason"].split(" ")[0] for s in skipped] == ["unknown", "missing", "unreadable", "empty", "duplicate"]
    with pytest.raises(UserError, match="no title/image in the row and no --data_root"):
        run(export, tmp_path / "pairs.csv", tmp_path / "out2")


def test_an_incomplete_export_is_named_before_anything_is_written(export, pairs, tiny_platform, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(export, broken)
    (broken / "conditioner.safetensors").unlink()
    with pytest.raises(ExportError, match="--export: .* lacks conditioner.safetensors"):
        run(broken, pairs, tmp_path / "out", data_root=str(tiny_platform))
    assert not (tmp_path / "out").exists()


def test_scores_only_with_a_reward_bundle(export, pairs, tiny_platform, tiny_stage2_ckpt, tmp_path):
    with pytest.raises(UserError, match="--score true needs --rewards_ckpt"):
        run(export, pairs, tmp_path / "out", data_root=str(tiny_platform), score=True)
    run(export, pairs, tmp_path / "out", data_root=str(tiny_platform), score=True, rewards_ckpt=str(tiny_stage2_ckpt))
    scores = [e.extra["scores"] for e in read_manifest(tmp_path / "out")]
    assert len(scores) == 8 and all(set(s) >= {"preference", "total"} for s in scores)
    assert all(np.isfinite(list(s.values())).all() for s in scores)


def test_rank_shards_merge_into_one_manifest_in_pairs_order(tmp_path):
    folder = CoverFolder(tmp_path, {"seed": 0})
    image = torch.rand(3, 8, 8)
    for rank, users in ((0, ["u1", "u3"]), (1, ["u2"])):
        shard = ShardWriter(folder, rank, "icg")
        for user in users:
            shard.write(image, {"user_id": user, "item_id": "i", "seed": 1})
        shard.close()
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"user_id": "u0", "item_id": "i", "file": "gone.png"}) + "\n")
    merged = folder.finalize([("u1", "i"), ("u2", "i"), ("u3", "i")])
    assert list(merged) == [("u1", "i"), ("u2", "i"), ("u3", "i")]  # pairs order; a line without its cover dropped
    assert [e.user_id for e in read_manifest(tmp_path)] == ["u1", "u2", "u3"] and not list(tmp_path.glob("manifest.r*"))


def test_icg_generate_through_the_cli(export, pairs, tiny_platform, tmp_path, capsys):
    run_cli("generate", "--export", export, "--pairs", pairs, "--data_root", tiny_platform, "--out", tmp_path / "out",
            "--progress_bar", "false", "--batch_size", "4")  # fmt: skip
    assert "8 covers (8 made now, 0 kept from before)" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "out")) == 8


def test_user_guidance_and_best_of_n_go_into_the_covers_the_manifest_and_the_settings(
    tiny_platform, tiny_stage1_ckpt, pairs, tmp_path
):
    from icg.generation.picking import BestOf, ClickScorer

    torch.manual_seed(1)
    export = write_tiny_export(tmp_path / "export", UserTable(KNOWN, torch.randn(16, 8)),
                               provenance={"preference_ckpt": str(tiny_stage1_ckpt)})  # fmt: skip
    out = tmp_path / "out"
    run(export, pairs, out, data_root=str(tiny_platform), user_guidance=2.0, candidates=3)  # the recorded stage 1
    settings = json.loads((out / SETTINGS).read_text())
    assert (settings["user_guidance"], settings["candidates"]) == (2.0, 3)
    assert settings["preference_ckpt"] == str(tiny_stage1_ckpt.resolve())
    entries = read_manifest(out)
    found, _ = read_pairs(pairs, tiny_platform)
    gen = CoverGenerator.from_pretrained(export)
    picked = gen([p.user_id for p in found], [p.title for p in found], [p.image for p in found],
                 item_ids=[p.item_id for p in found], user_guidance=2.0,
                 best_of=BestOf(ClickScorer.from_checkpoint(tiny_stage1_ckpt), 3))  # fmt: skip
    for entry, image, candidate, score in zip(entries, picked.images, picked.candidate, picked.score, strict=True):
        assert np.array_equal(pixels(entry.file), np.asarray(image))
        assert (entry.extra["candidates"], entry.extra["candidate"]) == (3, candidate)
        assert entry.extra["candidate_score"] == pytest.approx(score, abs=1e-6)
    plain = run(export, pairs, tmp_path / "plain", data_root=str(tiny_platform))
    assert "candidates" not in read_manifest(tmp_path / "plain")[0].extra
    assert not {"user_guidance", "candidates"} & set(json.loads((tmp_path / "plain" / SETTINGS).read_text()))
    # off is the run as before: the same folder resumes (nothing made again), whatever the flags say
    again = run(export, pairs, tmp_path / "plain", data_root=str(tiny_platform), user_guidance=1.0, candidates=1)
    assert (plain["made"], again["made"], again["kept"]) == (8, 0, 8)
    assert any(not np.array_equal(pixels(a.file), pixels(b.file))
               for a, b in zip(entries, read_manifest(tmp_path / "plain"), strict=True))  # fmt: skip


def _fails(capsys, words) -> str:
    """``icg generate ...`` exits 2 with one ``icg generate:`` line and no traceback; returns the line."""
    assert main([str(w) for w in words]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_bad_user_guidance_and_candidates_are_one_line_naming_the_flag(export, pairs, tiny_platform, tmp_path,
                                                                      capsys):  # fmt: skip
    words = generate_words(export, pairs, tiny_platform, tmp_path / "out")
    line = _fails(capsys, [*words, "--user_guidance", "-1"])
    assert line == ("icg generate: --user_guidance must be a finite number >= 0 (1: the cover as trained, 0: the "
                    "cold-start user's, > 1: more of the user), got -1.0")  # fmt: skip
    assert "user_guidance" in _fails(capsys, [*words, "--user_guidance", "nan"])  # the parser's line, or ours
    line = _fails(capsys, [*words, "--candidates", "0"])
    assert line == "icg generate: --candidates must be >= 1 (1: no picking), got 0"
    line = _fails(capsys, [*words, "--candidates", "2"])  # this export records no stage-1 checkpoint
    assert line.startswith("icg generate: --candidates 2 needs the stage-1 click model to pick with") and (
        line.endswith("records none; pass --preference_ckpt PATH"))  # fmt: skip
    missing = tmp_path / "stage1.ckpt"
    line = _fails(capsys, [*words, "--candidates", "2", "--preference_ckpt", missing])
    assert line == (f"icg generate: --preference_ckpt: {missing} does not exist (the stage-1 checkpoint that picks "
                    "among --candidates 2)")  # fmt: skip
    moved = tmp_path / "moved"
    shutil.copytree(export, moved)
    config = json.loads((moved / "icg_config.json").read_text())
    config["provenance"] = {"preference_ckpt": str(missing)}  # trained elsewhere: the recorded path is not here
    (moved / "icg_config.json").write_text(json.dumps(config))
    line = _fails(capsys, [*generate_words(moved, pairs, tiny_platform, tmp_path / "out"), "--candidates", "2"])
    assert line == (f"icg generate: --preference_ckpt: not given, and the stage-1 checkpoint --export {moved} records, "
                    f"{missing}, does not exist here; pass --preference_ckpt PATH")  # fmt: skip
    assert not (tmp_path / "out").exists()  # nothing was written


def generate_words(export, pairs, tiny_platform, out) -> list[str]:
    return [str(w) for w in ("generate", "--export", export, "--pairs", pairs, "--data_root", tiny_platform, "--out",
                             out, "--progress_bar", "false", "--batch_size", "2")]  # fmt: skip


def test_a_second_run_into_the_same_out_is_refused_naming_the_first(export, pairs, tiny_platform, tmp_path, capsys):
    out = tmp_path / "out"
    first = OutputLock(out, "icg generate --out runs/covers")  # the first run, holding --out (as another process)
    first.acquire()
    try:
        assert main(generate_words(export, pairs, tiny_platform, out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"icg generate: {out}: another run writes this folder: icg generate --out runs/covers (pid " in err
        assert f"pid {os.getpid()} on {socket.gethostname()}, started " in err and str(lock_path(out)) in err
        assert not out.exists()  # the refused run wrote nothing
    finally:
        first.release()
    assert main(generate_words(export, pairs, tiny_platform, out)) == 0  # the folder is free again: a normal run
    assert len(read_manifest(out)) == 8 and not lock_path(out).exists()


def test_a_stale_lock_of_a_killed_run_is_taken_over(export, pairs, tiny_platform, tmp_path, caplog):
    out = tmp_path / "out"
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    out.parent.mkdir(exist_ok=True)
    lock_path(out).write_text(json.dumps({"pid": killed.pid, "host": socket.gethostname(), "command": "icg generate",
                                          "started": "2026-01-01T00:00:00+00:00"}))  # fmt: skip
    with caplog.at_level("WARNING", "icg.output_lock"):
        summary = run(export, pairs, out, data_root=str(tiny_platform))
    assert summary["covers"] == 8 and f"process {killed.pid} is gone" in caplog.text
    assert not lock_path(out).exists()


def test_a_full_disk_is_one_line_leaves_no_half_cover_and_the_rerun_resumes(export, pairs, tiny_platform, tmp_path,
                                                                             capsys, monkeypatch):  # fmt: skip
    from icg.generation import cover_folder

    out, real_write, real_fdopen = tmp_path / "out", cover_folder.write_atomic, os.fdopen
    covers = []

    class HalfThenFull:  # the disk fills up halfway through a cover's bytes
        def __init__(self, fd, mode):
            self.file = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def fills_up_at_the_fifth_cover(path, data):
        if path.suffix == ".png":
            covers.append(path)
            if len(covers) == 5:
                monkeypatch.setattr(cover_folder.os, "fdopen", HalfThenFull)
        real_write(path, data)

    monkeypatch.setattr(cover_folder, "write_atomic", fills_up_at_the_fifth_cover)
    assert main(generate_words(export, pairs, tiny_platform, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"icg generate: {re.escape(str(out))}: no space left on device \(it needed about [\d.]+ KiB "
                        r"more, [\d.]+ [KMGT]?i?B is free there\); free some space .*", err), err  # fmt: skip
    assert not list(out.rglob("*.tmp")) and not lock_path(out).exists()  # no half cover, the lock released
    monkeypatch.undo()
    assert all(Image.open(p).verify() is None for p in covers[:4])
    summary = run(export, pairs, out, data_root=str(tiny_platform), batch_size=2)
    assert summary["covers"] == 8 and summary["kept"] == 4  # the covers made before the disk filled up are kept


# ------------------------------------------------------------------------------------------------ as a user runs it
def icg_subprocess(*words, wait=True, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "icg.cli", *map(str, words)]
    if not wait:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_ddp_ranks_make_every_cover_once_and_as_one_process_does(export, tiny_platform, tmp_path):
    pairs = pairs_csv(tiny_platform, tmp_path / "pairs.csv", rows=13)
    common = ["generate", "--export", export, "--pairs", pairs, "--data_root", tiny_platform, "--batch_size", "4",
              "--accelerator", "cpu", "--progress_bar", "false"]  # fmt: skip
    icg_subprocess(*common, "--out", tmp_path / "one")
    icg_subprocess(*common, "--out", tmp_path / "two", "--devices", "2")
    one, two = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    keys = [(e.user_id, e.item_id, e.extra["seed"]) for e in one]
    assert [(e.user_id, e.item_id, e.extra["seed"]) for e in two] == keys
    assert len(two) == 13 and not list((tmp_path / "two").glob("manifest.rank*"))
    # Ranks batch other pairs together than one process does; covers agree to the last 8-bit level.
    diffs = [np.abs(pixels(a.file).astype(int) - pixels(b.file).astype(int)) for a, b in zip(one, two, strict=True)]
    assert max(d.max() for d in diffs) <= 1 and sum(int((d > 0).sum()) for d in diffs) <= 13 * 32 * 32 * 3 // 100


@pytest.mark.slow
def test_a_kill_mid_run_leaves_no_half_cover_and_the_rerun_finishes(export, tiny_platform, tmp_path):
    pairs = pairs_csv(tiny_platform, tmp_path / "pairs.csv", rows=60)
    out = tmp_path / "out"
    common = ["generate", "--export", export, "--pairs", pairs, "--data_root", tiny_platform, "--batch_size", "2",
              "--progress_bar", "false"]  # fmt: skip
    process = icg_subprocess(*common, "--out", out, wait=False)
    deadline = time.monotonic() + 300
    while len(list(out.glob("covers/*/*.png"))) < 6:  # killed while it writes
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = list(out.glob("covers/*/*.png"))
    assert 6 <= len(written) < 60
    for path in written:  # every cover in place is whole
        Image.open(path).verify()
    assert not (out / "manifest.jsonl").exists()  # merged only at the end; the shard holds what is done
    result = icg_subprocess(*common, "--out", out)
    assert "60 covers (" in result.stdout and "kept from before" in result.stdout
    kept = int(result.stdout.split(" made now, ")[1].split(" kept")[0])
    assert kept >= len(written) - 2  # at most the batch being written when killed is made again
    entries = read_manifest(out)
    assert len(entries) == 60 and len({e.file for e in entries}) == 60
    assert not list(out.rglob("*.tmp")) and not list(out.glob("manifest.rank*"))


def test_steps_other_than_the_adapters_training_steps_are_warned_about(export, pairs, tiny_platform, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="icg.commands.generate"):
        run(export, pairs, tmp_path / "trained", data_root=str(tiny_platform))  # the export's 3 steps: no warning
        assert not caplog.records
        run(export, pairs, tmp_path / "fewer", data_root=str(tiny_platform), num_steps=2)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["--num_steps 2"]
    assert "trained at 3 steps" in caplog.records[0].getMessage()

"""``icg export`` + ``CoverGenerator``: a stage-3 checkpoint becomes a folder that alone makes covers (issue 12)."""

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch

from icg.cli import main
from icg.errors import UserError
from icg.generation import CoverGenerator, UserTable
from icg.generation.export import CONFIG, EXPORT_FILES, USERS_IDS, ExportError
from icg.output_lock import OutputLock, old_copy
from tests.helpers.cli import TINY, only_ckpt, run_cli
from tests.helpers.generation import tiny_generator, write_tiny_export


@pytest.fixture(scope="module")
def stage3_ckpt(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage3")
    run_cli("fit", "--config", TINY / "stage3_alignment.yaml", "--data.root", tiny_platform,
            "--model.init_args.preference_ckpt", tiny_stage1_ckpt, "--model.init_args.rewards_ckpt", tiny_stage2_ckpt,
            "--model.init_args.guidance_scale", "2.0", "--model.init_args.strength", "0.5",
            "--trainer.default_root_dir", out)  # fmt: skip
    return only_ckpt(out)


@pytest.fixture(scope="module")
def exported(stage3_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "icg"
    run_cli("export", "--stage3_ckpt", stage3_ckpt, "--out", folder)
    return folder


def test_export_folder_is_self_contained(exported, stage3_ckpt, tiny_platform, tiny_stage1_ckpt):
    assert sorted(p.name for p in exported.iterdir()) == sorted(EXPORT_FILES)
    config = json.loads((exported / CONFIG).read_text())
    assert config["sampler"] == {
        "num_steps": 4,
        "guidance_scale": 2.0,
        "strength": 0.5,
        "image_size": 32,
        "seed": 0,
        "user_guidance": 1.0,
    }
    assert config["users"]["count"] == len(json.loads((exported / USERS_IDS).read_text())) == 30
    assert config["provenance"]["stage3_ckpt"] == str(stage3_ckpt.resolve())
    # Nothing of stage 1 or 2 is needed to generate: hide both and load.
    hidden = tiny_stage1_ckpt.with_suffix(".hidden")
    shutil.move(tiny_stage1_ckpt, hidden)
    try:
        gen = CoverGenerator.from_pretrained(exported)
        users = json.loads((exported / USERS_IDS).read_text())[:2]
        refs = sorted((tiny_platform / "images").glob("*.png"))[:2]
        covers = gen(users, ["Red star on a dark backdrop", "Blue circle, striped"], refs, seed=3)
    finally:
        shutil.move(hidden, tiny_stage1_ckpt)
    assert len(covers.images) == 2 and covers.images[0].size == (32, 32)
    assert covers.fallback == [False, False]
    again = gen(users[::-1], ["Blue circle, striped", "Red star on a dark backdrop"], refs[::-1], seed=3)
    assert list(again.images[1].getdata()) == list(covers.images[0].getdata())  # per pair, whatever the order


def test_unknown_user_gets_the_fallback_and_says_so(exported, tiny_platform, caplog):
    gen = CoverGenerator.from_pretrained(exported)
    refs = sorted((tiny_platform / "images").glob("*.png"))[:1]
    with caplog.at_level("WARNING"):
        covers = gen(["someone-new"], ["A title"], refs, output_type="pt")
    assert covers.fallback == [True] and "someone-new" in caplog.text
    assert covers.images.shape == (1, 3, 32, 32)


def test_the_user_table_maps_another_vocabulary_onto_its_rows():
    table = UserTable(["a", "b", "c"], torch.arange(8.0).reshape(4, 2))
    rows = table.index_map(["c", "new", "a"])
    assert rows.tolist() == [2, -1, 0]  # -1: unknown, which selects the fallback (last) row
    assert torch.equal(table.embeddings[rows], table.lookup(["c", "new", "a"])[0])
    assert UserTable.of_ids(["x", "y"]).index_map(["y", "z"]).tolist() == [1, -1] and "x" in UserTable.of_ids(["x"])


def one_line_error(capsys, words, pattern):
    """The command fails with exit status 2 and one line on stderr matching ``pattern`` (no traceback)."""
    assert main([str(w) for w in words]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err


def test_export_refuses_other_stages_and_incomplete_folders(exported, stage3_ckpt, tiny_stage1_ckpt, tmp_path,
                                                             capsys):  # fmt: skip
    one_line_error(capsys, ["export", "--stage3_ckpt", tiny_stage1_ckpt, "--out", tmp_path / "x"],
                   "stage3_ckpt: .* 'preference' stage.*'alignment' stage checkpoint")  # fmt: skip
    assert not (tmp_path / "x").exists()
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "negative.safetensors").unlink()
    with pytest.raises(ExportError, match="lacks negative.safetensors"):
        CoverGenerator.from_pretrained(broken)
    cut = tmp_path / "cut"
    shutil.copytree(exported, cut)
    for name in ("conditioner.safetensors", "users.safetensors"):  # a copy cut short: the file named, no traceback
        (cut / name).write_bytes((exported / name).read_bytes()[:100])
        with pytest.raises(UserError, match=f"export {cut}: {cut / name} is not a readable safetensors file"):
            CoverGenerator.from_pretrained(cut)
        shutil.copy(exported / name, cut / name)
    one_line_error(capsys, ["export", "--stage3_ckpt", stage3_ckpt, "--out", exported],
                   "exists and is not empty.*--overwrite")  # fmt: skip
    with pytest.raises(UserError, match="tiny one built from config"):
        CoverGenerator.from_pretrained(exported, mllm=str(tmp_path))


def test_overwrite_replaces_an_export_and_never_a_foreign_folder(stage3_ckpt, exported, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    before = (copy / "conditioner.safetensors").read_bytes()
    run_cli("export", "--stage3_ckpt", stage3_ckpt, "--out", copy, "--overwrite", "true")
    assert (copy / "conditioner.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".copy*"))  # no temporary folder left behind
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    one_line_error(capsys, ["export", "--stage3_ckpt", stage3_ckpt, "--out", foreign, "--overwrite", "true"],
                   "not an icg export")  # fmt: skip
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_second_export_into_the_same_out_is_refused_at_once(stage3_ckpt, tmp_path, capsys):
    out = tmp_path / "x"
    first = OutputLock(out, "icg export")  # another export, still writing
    first.acquire()
    try:
        one_line_error(capsys, ["export", "--stage3_ckpt", stage3_ckpt, "--out", out],
                       rf"^icg export: {re.escape(str(out))}: another run writes this folder: icg export \(pid "
                       rf"{os.getpid()} on {re.escape(socket.gethostname())}, started ")  # fmt: skip
    finally:
        first.release()
    assert not out.exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(stage3_ckpt, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full(tensors, filename, *args, **kwargs):  # what safetensors raises on ENOSPC
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')  # fmt: skip

    monkeypatch.setattr("icg.generation.export.save_file", full)
    out = tmp_path / "x"
    one_line_error(capsys, ["export", "--stage3_ckpt", stage3_ckpt, "--out", out],
                   rf"^icg export: {re.escape(str(out))}: no space left on device \(it needed about [\d.]+ KiB more, "
                   r"[\d.]+ [KMGT]?i?B is free there\)")  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # no export, no temporary folder, no lock


class Killed(BaseException):
    """The process dies here: nothing after it runs (no rename back, no clean-up)."""


def test_an_overwrite_killed_between_its_renames_loses_nothing(tmp_path, monkeypatch, caplog):
    folder = write_tiny_export(tmp_path / "export", UserTable(["a", "b"], torch.randn(3, 8)))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    replace, rmtree, dead = os.replace, shutil.rmtree, []

    def dies_at_the_second_rename(src, dst):
        if dead or Path(src).name.endswith(".tmp"):
            dead.append(src)
            raise Killed
        replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_at_the_second_rename)
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: None if dead else rmtree(path, *a, **k))
    with pytest.raises(Killed):
        tiny_generator(UserTable(["c"], torch.randn(2, 8))).save_pretrained(folder, overwrite=True)
    monkeypatch.undo()
    assert not folder.exists() and {p.name: p.read_bytes() for p in old_copy(folder).iterdir()} == before
    assert len(list(tmp_path.glob(".export.*.tmp"))) == 1  # the killed run's complete new export, never renamed

    # The next run (here one without --overwrite) puts the previous export back, says where it was, and refuses.
    with caplog.at_level("WARNING", "icg.output_lock"), pytest.raises(ExportError, match="exists and is not empty"):
        write_tiny_export(folder, UserTable(["c"], torch.randn(2, 8)))
    assert f"put back the previous copy, which an interrupted --overwrite had left in {old_copy(folder)}" in caplog.text
    assert "removed 1 temporary folder(s) of a killed run" in caplog.text
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    tiny_generator(UserTable(["c"], torch.randn(2, 8))).save_pretrained(folder, overwrite=True)
    assert UserTable.load(folder).user_ids == ["c"] and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_export_onto_another_base_model_folder(stage3_ckpt, tmp_path, capsys):
    """base_model= replaces the recorded diffusion folder; a tiny (folderless) base refuses with the key named."""
    one_line_error(capsys, ["export", "--stage3_ckpt", stage3_ckpt, "--out", tmp_path / "e", "--base_model", "/x"],
                   "base_model=.*tiny one built from config")  # fmt: skip
    assert torch.load(stage3_ckpt, weights_only=True)["icg"]["diffusion"]["path"] is None


def test_a_moved_base_model_folder_is_named_with_the_option_that_fixes_it(tiny_export_on_base, tmp_path, capsys):
    """An export (or checkpoint) whose recorded base model folder is gone: one line naming it and --base_model."""
    config = json.loads((tiny_export_on_base / CONFIG).read_text())
    recorded = config["diffusion"]["path"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(recorded, moved)
    copy = tmp_path / "export"
    shutil.copytree(tiny_export_on_base, copy)
    config["diffusion"]["path"] = str(tmp_path / "gone")
    (copy / CONFIG).write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"the base model folder it records, {tmp_path / 'gone'}, does not exist.*"
                                        "--base_model"):  # fmt: skip
        CoverGenerator.from_pretrained(copy)
    assert CoverGenerator.from_pretrained(copy, base_model=str(moved)).source.path == str(moved)


@pytest.mark.parametrize("tamper", ["nan", "int64", "shape"])
def test_a_tampered_stage3_checkpoint_is_refused_naming_the_tensor(stage3_ckpt, tmp_path, capsys, tamper):
    raw = torch.load(stage3_ckpt, map_location="cpu", weights_only=True)
    key = sorted(k for k in raw["state_dict"] if k.startswith("conditioner.adapter."))[0]
    value = raw["state_dict"][key]
    raw["state_dict"][key] = {"nan": torch.full_like(value, float("nan")), "int64": value.round().long(),
                              "shape": torch.zeros(*value.shape, 2)}[tamper]  # fmt: skip
    bad = tmp_path / "stage3.ckpt"
    torch.save(raw, bad)
    reason = {"nan": "holds NaN", "int64": "is torch.int64", "shape": "has shape"}[tamper]
    one_line_error(capsys, ["export", "--stage3_ckpt", bad, "--out", tmp_path / "e"],
                   rf"stage3_ckpt: {re.escape(str(bad))}: tensor '{re.escape(key)}' {reason}")  # fmt: skip
    assert not (tmp_path / "e").exists()

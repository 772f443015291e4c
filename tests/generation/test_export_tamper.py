"""Tampered or damaged exports and checkpoints are refused in one line, exit 2; ids are kept exactly (issue 23).

Every case edits a copy of a tiny export (or checkpoint) the way a bad copy, a hand edit or a wrong tool would, then
runs ``icg generate`` (or ``icg export``) through ``icg.cli.main``: the message names the file and the tensor or key.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from icg.cli import main
from icg.cover_manifest import read_manifest
from icg.diffusion.source import DiffusionSource
from icg.generation import CoverGenerator, UserTable
from icg.generation.export import CONFIG, NEGATIVE, WEIGHTS, ExportError, with_paths
from icg.generation.users import USERS_IDS, USERS_WEIGHTS
from tests.helpers.generation import write_tiny_export

USERS = ["u0", "  spaced  ", "spaced", "u3"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    return write_tiny_export(tmp_path_factory.mktemp("tamper") / "export", UserTable(USERS, 2 * torch.randn(5, 8)))


@pytest.fixture(scope="module")
def pairs(tiny_platform, tmp_path_factory) -> Path:
    """Self-contained rows (title + image), one per user, the spaced ones as written."""
    image = sorted((tiny_platform / "images").glob("*.png"))[0]
    path = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    rows = ["user_id,item_id,title,image"] + [f'"{u}",i1,"Red star on a dark backdrop",{image}' for u in USERS]
    path.write_text("\n".join(rows) + "\n")
    return path


def _edit_tensors(name: str, edit):
    def apply(folder: Path) -> None:
        tensors = load_file(str(folder / name))
        edit(tensors)
        save_file(tensors, str(folder / name))

    return apply


def _edit_json(name: str, edit):
    def apply(folder: Path) -> None:
        value = json.loads((folder / name).read_text())
        edit(value)
        (folder / name).write_text(json.dumps(value))

    return apply


def _first(tensors: dict) -> str:
    return sorted(k for k in tensors if k.startswith("adapter."))[0]


def _reshape(t):
    key = _first(t)
    t[key] = torch.zeros(*t[key].shape[:-1], t[key].shape[-1] + 1)


def _drop(t):
    del t[_first(t)]


def _as_int(t):
    key = _first(t)
    t[key] = t[key].round().to(torch.int64)


def _nan(t):
    key = _first(t)
    t[key] = torch.full_like(t[key], float("nan"))


def _users_rows(t):
    t["embeddings"] = t["embeddings"][:3]


def _users_nan(t):
    t["embeddings"][1, 0] = float("nan")


def _negative_nan(t):
    t["encoder_hidden_states"] = torch.full_like(t["encoder_hidden_states"], float("inf"))


def _sampler(key, value):
    return _edit_json(CONFIG, lambda c: c["sampler"].__setitem__(key, value))


# (edit, the file it must name, what the message must say)
CASES = {
    "wrong shape": (_edit_tensors(WEIGHTS, _reshape), WEIGHTS, r"tensor 'adapter\.[\w.]+' has shape \(.*\), expected"),
    "extra tensor": (
        _edit_tensors(WEIGHTS, lambda t: t.__setitem__("adapter.sneaky", torch.zeros(2))),
        WEIGHTS,
        r"holds unexpected tensor\(s\) \['adapter\.sneaky'\]",
    ),  # fmt: skip
    "missing tensor": (_edit_tensors(WEIGHTS, _drop), WEIGHTS, r"lacks tensor\(s\) \['adapter\."),
    "int64 weights": (_edit_tensors(WEIGHTS, _as_int), WEIGHTS, r"tensor 'adapter\.[\w.]+' is torch\.int64"),
    "NaN weights": (_edit_tensors(WEIGHTS, _nan), WEIGHTS, r"tensor 'adapter\.[\w.]+' holds NaN"),
    "table rows": (
        _edit_tensors(USERS_WEIGHTS, _users_rows),
        USERS_WEIGHTS,
        r"'embeddings' has shape \(3, 8\), expected \(5, D\): 4 users",
    ),  # fmt: skip
    "NaN user": (_edit_tensors(USERS_WEIGHTS, _users_nan), USERS_WEIGHTS, r"NaN .*row 1, user '  spaced  '"),
    "extra user tensor": (
        _edit_tensors(USERS_WEIGHTS, lambda t: t.__setitem__("more", torch.zeros(1))),
        USERS_WEIGHTS,
        r"holds tensor\(s\) \['more'\]",
    ),  # fmt: skip
    "duplicate id": (
        _edit_json(USERS_IDS, lambda ids: ids.__setitem__(3, "u0")),
        USERS_IDS,
        r"names user 'u0' twice \(entries 0 and 3\)",
    ),  # fmt: skip
    "users.count": (
        _edit_json(CONFIG, lambda c: c["users"].__setitem__("count", 200)),
        CONFIG,
        r"users\.count=200, but .*users\.json names 4 users",
    ),  # fmt: skip
    "num_steps -5": (_sampler("num_steps", -5), CONFIG, r"sampler\.num_steps=-5: expected an integer >= 1"),
    "strength 1.5": (_sampler("strength", 1.5), CONFIG, r"sampler\.strength=1\.5: expected a number in \(0, 1\]"),
    "image_size 0": (_sampler("image_size", 0), CONFIG, r"sampler\.image_size=0"),
    "unknown setting": (_sampler("steps", 3), CONFIG, r"sampler\.steps: not a sampler setting"),
    "inf negative": (_edit_tensors(NEGATIVE, _negative_nan), NEGATIVE, r"'encoder_hidden_states' holds NaN"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tampered_export_is_one_line_exit_2(case, export, pairs, tmp_path, capsys):
    edit, file, pattern = CASES[case]
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    edit(copy)
    assert main(["generate", "--export", str(copy), "--pairs", str(pairs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("icg generate: ") and str(copy / file) in err and re.search(pattern, err), err
    assert not (tmp_path / "out" / "covers").exists() or not any((tmp_path / "out" / "covers").iterdir())
    with pytest.raises(ExportError, match=pattern):  # the library refuses it alike
        CoverGenerator.from_pretrained(copy)


def test_the_untouched_export_loads_as_before(export, pairs, tmp_path):
    """The checks refuse nothing a writer writes: a copy loads, and the same covers come out."""
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    a, b = CoverGenerator.from_pretrained(export), CoverGenerator.from_pretrained(copy)
    for (k, x), (_, y) in zip(a.conditioner.state_dict().items(), b.conditioner.state_dict().items(), strict=True):
        assert torch.equal(x, y), k
    assert torch.equal(a.users.embeddings, b.users.embeddings) and a.users.user_ids == USERS


def test_a_forged_stage_tag_is_refused_in_one_line(tiny_stage1_ckpt, tmp_path, capsys):
    """A stage-1 checkpoint re-tagged 'alignment' is not taken for a stage-3 one (was: a KeyError traceback)."""
    raw = torch.load(tiny_stage1_ckpt, map_location="cpu", weights_only=True)
    raw["icg"]["stage"] = "alignment"
    forged = tmp_path / "forged.ckpt"
    torch.save(raw, forged)
    assert main(["export", "--stage3_ckpt", str(forged), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(rf"stage3_ckpt: {re.escape(str(forged))} is tagged an 'alignment' stage checkpoint but holds no "
                     r"'conditioner\.\*' weights", err), err  # fmt: skip
    assert not (tmp_path / "e").exists()


def test_ids_are_kept_exactly_as_written(export, pairs, tmp_path):
    """'  spaced  ' gets its own embedding row (not 'spaced''s, not the fallback), through icg generate and alike."""
    out = tmp_path / "out"
    assert main(["generate", "--export", str(export), "--pairs", str(pairs), "--out", str(out)]) == 0
    entries = {e.user_id: e for e in read_manifest(out)}
    assert sorted(entries) == sorted(USERS)
    assert not any(e.extra["fallback"] for e in entries.values())
    spaced, plain = (np.asarray(Image.open(entries[u].file).convert("RGB")) for u in ("  spaced  ", "spaced"))
    assert not np.array_equal(spaced, plain)  # another user's embedding would draw the same cover
    gen = CoverGenerator.from_pretrained(export)
    image = sorted(Path(entries["u0"].reference).parent.glob("*.png"))[0]
    covers = gen(["  spaced  "], ["Red star on a dark backdrop"], [image], item_ids=["i1"])
    assert covers.fallback == [False] and np.array_equal(np.asarray(covers.images[0]), spaced)


def test_blank_ids_are_still_bad_rows(export, tiny_platform, tmp_path, capsys):
    image = sorted((tiny_platform / "images").glob("*.png"))[0]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"user_id": "   ", "item_id": "i1", "title": "t", "image": str(image)}) + "\n")
    assert main(["generate", "--export", str(export), "--pairs", str(pairs), "--out", str(tmp_path / "o")]) == 2
    assert "empty user_id" in capsys.readouterr().err


def test_base_model_replaces_a_title_encoder_path_recorded_relative(tmp_path):
    """A config's ``title_prompt: {path: weights/sd15}`` names the base model folder training resolved to
    ``/.../weights/sd15``; ``--base_model`` moves both, whatever folder the export runs in."""
    title = {"class_path": "x.Prompt", "init_args": {"path": "weights/sd15"}}
    spec = {"class_path": "x.Conditioner", "init_args": {"title_prompt": title}}
    source = DiffusionSource(path="/cluster/train/weights/sd15")
    new = tmp_path / "here" / "sd15"
    new.mkdir(parents=True)
    out, moved = with_paths(spec, source, base_model=str(new))
    assert moved.path == str(new) == out["init_args"]["title_prompt"]["init_args"]["path"]
    other = json.loads(json.dumps(spec))
    other["init_args"]["title_prompt"]["init_args"]["path"] = "/elsewhere/clip"  # another folder: kept
    out, _ = with_paths(other, source, base_model=str(new))
    assert out["init_args"]["title_prompt"]["init_args"]["path"] == "/elsewhere/clip"


def test_fold_in_user_lists_are_taken_exactly(tmp_path, monkeypatch):
    """``--users`` / ``--users_file`` pass ids on as written (no stripping); blank entries are refused."""
    from icg.commands import users
    from icg.generation import fold_in

    seen = []
    monkeypatch.setattr(fold_in, "fold_in_export", lambda export, root, ckpt, users, *a, **k: seen.append(users))
    users.fold_in("e", "d", users="u1,  spaced  ,u2", out="o")
    listed = tmp_path / "users.txt"
    listed.write_text("u1\n  spaced  \n\nu2\n")
    users.fold_in("e", "d", users_file=str(listed), out="o")
    assert seen == [["u1", "  spaced  ", "u2"]] * 2
    with pytest.raises(fold_in.FoldInError, match=r"--users: entry 2 is blank \(' '\)"):
        users.fold_in("e", "d", users="u1, ,u2", out="o")
    listed.write_text("u1\n   \n")
    with pytest.raises(fold_in.FoldInError, match=r"line 2 is blank"):
        users.fold_in("e", "d", users_file=str(listed), out="o")

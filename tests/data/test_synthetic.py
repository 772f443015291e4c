"""The synthetic platform generator (icg.data.synthetic): determinism, on-disk format, titles, covers, truth."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from icg.data.schema import DatasetMeta, read_dataset, write_dataset
from icg.data.synthetic import (
    BACKGROUNDS,
    CLICKS_PER_USER,
    PALETTE,
    SHAPES,
    STYLES,
    CoverAttributes,
    drawn_covers,
    generate_platform,
    item_attributes,
    read_truth,
    render_cover,
    title_vocabulary,
)

SMALL = {"users": 12, "items": 40, "seed": 3, "image_size": 32}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    return generate_platform(tmp_path_factory.mktemp("synth") / "platform", **SMALL)


def _folder_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(platform, tmp_path):
    again = generate_platform(tmp_path / "again", **SMALL)
    first, second = _folder_bytes(platform), _folder_bytes(again)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    other = _folder_bytes(generate_platform(tmp_path / "other", **{**SMALL, "seed": 4}))
    assert other["items.parquet"] != first["items.parquet"]
    assert other["interactions.parquet"] != first["interactions.parquet"]


def test_dataset_is_readable_and_well_formed(platform):
    items, interactions, meta = read_dataset(platform)
    assert meta.source == "synthetic" and meta.implicit is True
    assert {k: meta.extra[k] for k in SMALL} == SMALL
    assert list(items.item_id) == [f"i{k:05d}" for k in range(SMALL["items"])]
    assert set(interactions.user_id) <= {f"u{k:04d}" for k in range(SMALL["users"])}
    assert set(interactions.item_id) <= set(items.item_id)
    assert (interactions.click == 1).all(), "implicit data holds positives only"
    assert interactions.timestamp.dtype == np.int64
    assert not interactions.duplicated(["user_id", "item_id"]).any()
    per_user = interactions.groupby("user_id")
    assert per_user.timestamp.apply(lambda t: t.is_monotonic_increasing and t.is_unique).all()
    _assert_clicks_within(platform, CLICKS_PER_USER, SMALL["items"])
    for path in items.image:
        with Image.open(platform / path) as image:
            assert image.size == (SMALL["image_size"],) * 2 and image.mode == "RGB"


def _assert_clicks_within(root, clicks_per_user, items):
    """Each user's clicks lie in the quota range, fewer only when the user was shown the whole catalogue."""
    _, interactions, _ = read_dataset(root)
    low, high = clicks_per_user
    shown = np.bincount(load_file(str(root / "truth" / "tables.safetensors"))["impression_user"].numpy())
    for user, clicks in interactions.groupby("user_id").size().items():
        assert clicks <= high and (clicks >= low or shown[int(user[1:])] == items), (user, clicks)
    return interactions.groupby("user_id").size()


def test_clicks_per_user_is_honoured(tmp_path):
    # 300 items at a mean click probability of 0.2: a user shown everything has ~60 clicks, so 5-15 is always reached
    roomy = generate_platform(tmp_path / "roomy", **{**SMALL, "items": 300, "clicks_per_user": (5, 15)})
    counts = _assert_clicks_within(roomy, (5, 15), 300)
    assert counts.min() >= 5 and counts.max() <= 15 and counts.nunique() > 1
    assert read_dataset(roomy)[2].extra["clicks_per_user"] == [5, 15]
    exact_root = generate_platform(tmp_path / "exact", **{**SMALL, "clicks_per_user": (3, 3)})
    exact = _assert_clicks_within(exact_root, (3, 3), SMALL["items"])
    assert (exact == 3).all()
    # a quota the 40-item catalogue cannot give: every user is shown all items and keeps the clicks they made
    scarce = generate_platform(tmp_path / "scarce", **{**SMALL, "clicks_per_user": (35, 40)})
    shown = np.bincount(load_file(str(scarce / "truth" / "tables.safetensors"))["impression_user"].numpy())
    assert (shown == SMALL["items"]).all()
    _assert_clicks_within(scarce, (35, 40), SMALL["items"])


@pytest.mark.parametrize("bad", [(0, 5), (6, 5), (-1, -1), (5,), (1, 2, 3)])
def test_bad_clicks_per_user_is_rejected(tmp_path, bad):
    with pytest.raises(ValueError, match="clicks_per_user"):
        generate_platform(tmp_path / "x", **{**SMALL, "clicks_per_user": bad})
    assert not (tmp_path / "x").exists()


def test_titles_name_the_cover_attributes_with_variety(platform):
    items, _, _ = read_dataset(platform)
    truth = {row["item_id"]: row for row in read_truth(platform)["items"]}
    for item_id, title in zip(items.item_id, items.title, strict=True):
        words = title.lower()
        assert truth[item_id]["colour"] in words and truth[item_id]["shape"] in words, title
    # variety: the titles do not all share one template (first word and punctuation differ)
    assert len({title.split()[0] for title in items.title}) >= 4


def test_truth_files_are_safetensors_and_json(platform):
    truth_dir = platform / "truth"
    assert sorted(p.name for p in truth_dir.iterdir()) == ["oracle.safetensors", "tables.safetensors", "truth.json"]
    info = json.loads((truth_dir / "truth.json").read_text())
    assert len(info["users"]) == SMALL["users"] and len(info["items"]) == SMALL["items"]
    for user in info["users"]:
        assert set(user["likes"]).isdisjoint(user["dislikes"]) and user["brightness"] in BACKGROUNDS
    _, interactions, meta = read_dataset(platform)
    assert meta.extra["clicks"] == len(interactions)


def test_covers_are_renderable_from_the_truth(platform):
    truth = read_truth(platform)
    for item_id in ("i00000", "i00007"):
        pixels = np.asarray(Image.open(platform / "images" / f"{item_id}.png"))
        np.testing.assert_array_equal(render_cover(item_attributes(truth, item_id), SMALL["image_size"]), pixels)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("style", STYLES)
def test_every_shape_and_style_draws_an_object_of_its_colour(shape, style):
    cover = render_cover(CoverAttributes("blue", shape, "light", style, noise_seed=1), 32).astype(float) / 255
    blue = np.asarray(dict(PALETTE)["blue"])
    near_blue = (np.abs(cover - blue).max(-1) < 0.1).mean()
    assert 0.03 < near_blue < 0.7, f"{shape}/{style}: {near_blue:.3f} of the pixels are the object's colour"


def test_refuses_to_overwrite_unless_asked(platform, tmp_path):
    with pytest.raises(FileExistsError, match="not empty"):
        generate_platform(platform, **SMALL)
    other = tmp_path / "real"
    write_dataset(
        other,
        pd.DataFrame({"item_id": ["a"], "title": ["t"], "image": ["images/a.png"]}),
        pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "click": [1], "timestamp": [0]}),
        DatasetMeta(source="pixelrec", implicit=True),
    )
    with pytest.raises(FileExistsError, match="not a synthetic platform"):
        generate_platform(other, overwrite=True, **SMALL)
    replaced = generate_platform(tmp_path / "copy", **SMALL)
    (replaced / "images" / "stale.png").write_bytes(b"")
    generate_platform(replaced, overwrite=True, **SMALL)
    assert not (replaced / "images" / "stale.png").exists()


@pytest.mark.parametrize(("key", "value"), [("users", 0), ("items", 1), ("image_size", 8)])
def test_bad_sizes_are_rejected_by_name(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        generate_platform(tmp_path / "x", **{**SMALL, key: value})


def test_drawn_covers_are_new_items_of_the_platforms_world(platform):
    titles, covers = drawn_covers(6, np.random.default_rng(0), image_size=24)
    assert covers.shape == (6, 3, 24, 24) and 0.0 <= covers.min() and covers.max() <= 1.0
    again, same = drawn_covers(6, np.random.default_rng(0), image_size=24)
    assert again == titles and torch.equal(same, covers)
    vocabulary = set(title_vocabulary())
    for title in titles + list(read_dataset(platform)[0]["title"]):
        words = set(re.findall(r"[a-z]+", title.lower()))
        assert words <= vocabulary, words - vocabulary
        assert len(words & {name for name, _ in PALETTE}) == 1 and len(words & set(SHAPES)) == 1

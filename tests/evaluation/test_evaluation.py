"""Evaluation: metrics match reference computations, the report and gallery are written, and a tiny end-to-end run."""

import json
import math
import re

import numpy as np
import pytest
import torch

from icg.evaluation.metrics import (
    bootstrap_lift,
    cosine_to_history,
    mean_pairwise_dissimilarity,
    ssim_to,
    title_match_accuracy,
)
from icg.evaluation.report import METRICS, format_markdown, write_report
from tests.helpers.evaluation import fake_report


def test_ssim_of_identical_images_is_one_and_of_different_ones_less():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(ssim_to(images, images.clone()), torch.ones(3))
    noisy = (images + 0.3 * torch.randn_like(images)).clamp(0, 1)
    assert (ssim_to(noisy, images) < 0.9).all()
    # small covers are upsampled to the SSIM window; different sizes are brought to the reference's
    assert ssim_to(images[:, :, ::2, ::2], images).shape == (3,)


def test_diversity_is_zero_for_copies_and_positive_otherwise():
    image = torch.rand(1, 3, 16, 16)
    assert mean_pairwise_dissimilarity(image.repeat(4, 1, 1, 1)) == pytest.approx(0.0, abs=1e-5)
    assert mean_pairwise_dissimilarity(torch.rand(4, 3, 16, 16)) > 0.5
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_dissimilarity(image)


def test_title_match_accuracy_matches_a_hand_computed_value():
    titles = ["a", "b", "c", "d"]
    # score = 1 for the own title, 0 otherwise, except image 3 which prefers every title equally (ties)
    own = {0: "a", 1: "b", 2: "c"}

    def score(images, ts):
        return torch.tensor([1.0 if own.get(k) == t else 0.0 for k, t in enumerate(ts)])

    acc = title_match_accuracy(score, torch.zeros(4, 3, 4, 4), titles, num_rounds=20, seed=3)
    # reference: images 0-2 win every comparison they take part in, image 3 ties every one
    rng, wins, kept = np.random.default_rng(3), 0.0, 0
    for _ in range(20):
        for k, j in enumerate(rng.permutation(4)):
            if j != k:
                wins, kept = wins + (0.5 if k == 3 else 1.0), kept + 1
    assert acc == pytest.approx(wins / kept)
    assert 3.4 / 4 < acc < 3.6 / 4
    perfect = title_match_accuracy(
        lambda images, ts: torch.tensor([1.0 if t == titles[k] else 0.0 for k, t in enumerate(ts)]),
        torch.zeros(4, 3, 4, 4),
        titles,
    )
    assert perfect == 1.0


def test_cosine_to_history_uses_masked_mean():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    history = torch.tensor([[[1.0, 0.0], [0.0, 5.0]], [[1.0, 0.0], [1.0, 0.0]]])
    mask = torch.tensor([[True, False], [False, False]])
    out = cosine_to_history(features, history, mask)
    assert out[0] == pytest.approx(1.0)
    assert math.isnan(out[1])


def test_bootstrap_lift_point_estimate_and_interval():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(40), 2)
    base = rng.uniform(0.2, 0.4, size=80)
    treat = base * 1.2 + rng.normal(0, 0.02, size=80)
    result = bootstrap_lift(treat, base, users, num_samples=1000, seed=1)
    assert result["value"] == pytest.approx(treat.mean() / base.mean() - 1)
    assert result["ci_low"] <= result["value"] <= result["ci_high"]
    assert 0.1 < result["ci_low"] and result["ci_high"] < 0.3
    assert result["num_groups"] == 40
    assert bootstrap_lift(treat, base, users, num_samples=1000, seed=1) == result  # seeded
    with pytest.raises(ValueError, match="must match"):
        bootstrap_lift(treat, base[:-1], users)


def test_report_files_have_required_keys_and_mark_unavailable(tmp_path):
    report, grid = fake_report(tmp_path)
    files = write_report(report, tmp_path, grid=grid, tensorboard=True)
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data) >= {"stage1", "methods", "lift", "relevance_drop", "minutes", "files"}
    assert set(data["stage1"]) >= {"auc", "gauc", "oracle_auc", "popularity_auc"}
    assert set(data["lift"]) >= {"true_click_prob", "ci_low", "ci_high"}
    assert data["methods"]["icg"]["clip_title"] is None and "clip_title" in data["unavailable"]
    markdown = (tmp_path / "report.md").read_text()
    clip_row = next(line for line in markdown.splitlines() if "| clip_title" in line)
    assert clip_row.count("unavailable") == 3  # two methods + the reference covers
    assert "- clip_title: no CLIP weights" in markdown
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert files["gallery"].endswith("gallery.html")


def test_gallery_references_existing_images(tmp_path):
    report, grid = fake_report(tmp_path)
    write_report(report, tmp_path, grid=grid, tensorboard=False)
    page = (tmp_path / "gallery.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3 + 2 * 3 * 2  # one reference per item + users x items x 2 methods
    assert all((tmp_path / s).is_file() for s in sources)
    assert page.count("<tr>") == 2 + 2  # two header rows + one row per user
    assert "title &lt;0&gt;" in page  # titles are escaped


def test_user_appeal_row_comes_from_a_studys_results(tmp_path):
    """The evaluation takes a study's results (the study reads its database; icg.evaluation never imports it)."""
    from icg.cover_manifest import write_manifest_folder
    from icg.evaluation.report import attach_user_appeal
    from icg.lit.callbacks import save_png

    report, _ = fake_report(tmp_path)
    attach_user_appeal(report, None)
    assert "study database" in report["unavailable"]["user_appeal"]
    rows = [({"user_id": "u1", "item_id": "i1", "method": m}, torch.rand(3, 8, 8)) for m in ("title_only", "icg")]
    report["cover_manifest"] = str(write_manifest_folder(tmp_path / "covers", rows, save_png))
    study = {
        "study": {"db": "s.db", "fingerprint": "another study's covers", "answers": 4, "raters": 2},
        "bradley_terry": {"icg": {"score": 0.5}},
        "pairs": [],
    }
    attach_user_appeal(report, study)
    assert report["methods"]["icg"]["user_appeal"] == 0.5 and report["methods"]["title_only"]["user_appeal"] is None
    assert report["user_appeal"]["study_db"] == "s.db" and report["user_appeal"]["same_covers"] is False


def test_markdown_formats_nan_as_unavailable():
    report, _ = fake_report(None)
    report["methods"]["icg"]["aesthetic"] = float("nan")
    row = next(line for line in format_markdown(report).splitlines() if "| aesthetic" in line)
    assert "unavailable" in row


# ------------------------------------------------------------------------------------------ tiny end-to-end run
def test_methods_share_per_pair_noise_and_differ_by_user(tiny_platform, tiny_methods):
    from icg.data.datamodule import ICGDataModule
    from icg.evaluation.sample import pairs_batch

    dm = ICGDataModule(str(tiny_platform), image_size=32)
    dm.setup()
    batch = pairs_batch(dm, [(0, 0), (1, 0)])
    icg, no_user = tiny_methods["icg"](batch), tiny_methods["icg_no_user"](batch)
    assert icg.shape == (2, 3, 32, 32) and 0 <= float(icg.min()) and float(icg.max()) <= 1
    assert not torch.allclose(icg, no_user)  # the user embedding changes the cover
    torch.testing.assert_close(tiny_methods["icg"](pairs_batch(dm, [(1, 0)])), icg[1:], rtol=0, atol=1e-5)
    base = tiny_methods["title_only"](batch)
    torch.testing.assert_close(tiny_methods["title_only"](pairs_batch(dm, [(1, 0)])), base[1:], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_evaluate_end_to_end_on_tiny_models(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tiny_methods, tmp_path):
    from icg.evaluation.lpips import LPIPS
    from icg.evaluation.run import evaluate
    from icg.evaluation.settings import DataSettings, EvaluatorSettings, RunSettings, SampleSettings, ScoringSettings
    from tests.helpers.lpips import save_backbone

    save_backbone(tmp_path / "alexnet.pth")
    report = evaluate(
        tiny_platform,
        tiny_stage1_ckpt,
        tiny_methods,
        tmp_path,
        rewards=tiny_stage2_ckpt,
        data=DataSettings(image_size=32, eval_candidates=10),
        sample=SampleSettings(num_users=6, grid_users=2, grid_items=2, downstream_users=3, downstream_negatives=2),
        evaluator=EvaluatorSettings(epochs=1),
        scoring=ScoringSettings(lpips=LPIPS(tmp_path / "alexnet.pth"), bootstrap_samples=200),
        run=RunSettings(batch_size=4),
    )
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["methods"]) == {"title_only", "icg_no_user", "icg"}
    for row in data["methods"].values():
        assert set(row) == set(METRICS)
        for key in ("aesthetic", "relevance", "true_click_prob", "evaluator_click_prob", "ssim_reference",
                    "lpips_reference", "downstream_auc", "diversity", "title_match_acc",
                    "history_similarity"):  # fmt: skip
            assert isinstance(row[key], float), (key, row[key])
        for key in ("imagereward", "clip_title", "clip_reference"):
            assert row[key] is None and key in data["unavailable"]
    lift = data["lift"]
    assert lift["ci_low"] <= lift["true_click_prob"] <= lift["ci_high"]
    assert isinstance(data["relevance_drop"], float)
    assert data["reference_covers"]["ssim_reference"] == pytest.approx(1.0, abs=1e-4)
    assert data["reference_covers"]["lpips_reference"] == pytest.approx(0.0, abs=1e-6)
    assert data["reference_covers"]["diversity"] == pytest.approx(0.0, abs=1e-4)  # one cover for every user
    assert set(data["stage1"]) >= {"auc", "gauc", "oracle_auc", "popularity_auc"}
    assert data["sample"]["held_out_pairs"] == 6 and data["minutes"] > 0
    page = (tmp_path / "gallery.html").read_text()
    assert all((tmp_path / s).is_file() for s in re.findall(r'<img src="([^"]+)"', page))
    assert report["methods"]["icg"] == data["methods"]["icg"]
    # the user-swap test: ICG's covers depend on the user; the cold-start user for everyone makes identical covers
    swap = data["user_swap"]
    for set_name in ("held_out", "candidates"):
        icg, no_user = swap[set_name]["icg"], swap[set_name]["icg_no_user"]
        assert icg["comparisons"] == 4 * icg["pairs"] and icg["distance"]["user_rmse"] > 1e-3
        assert icg["oracle"]["ties"] < 1 and isinstance(icg["agreement"]["stage1"], float)
        assert no_user["oracle"]["ties"] == 1.0 and no_user["distance"]["user_rmse"] < 1e-4
        assert no_user["distance"]["seed_rmse"] > 1e-3  # another seed moves the cover
        assert f"user_swap/{set_name}/icg_no_user/agreement/stage1" in data["unavailable"]
    assert swap["held_out"]["icg"]["pairs"] == 6
    assert all(isinstance(r, float) for r in swap["agreement"]["stage1"]["per_user"].values())
    assert "The same item for different users" in page and page.count("gallery/swap_i") == 6 * (1 + 4 * 2)
    assert "User-swap test" in (tmp_path / "report.md").read_text()
    from icg.cover_manifest import read_manifest

    covers = read_manifest(data["cover_manifest"])  # every held-out pair's cover per method, for `icg study`
    assert len(covers) == 3 * 6 and {e.method for e in covers} == {"title_only", "icg_no_user", "icg"}
    assert data["methods"]["icg"]["user_appeal"] is None and "user_appeal" in data["unavailable"]


# ------------------------------------------------------------------------------------------ `icg evaluate` CLI path
def read_png(path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def gallery_cells(folder) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """(row, column) -> method -> cover, from the gallery's ``u<row>_i<column>_<method>.png`` files."""
    cells: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for path in sorted(folder.glob("u*_i*_*.png")):
        row, col, method = re.fullmatch(r"u(\d+)_i(\d+)_(.+)\.png", path.name).groups()
        cells.setdefault((int(row), int(col)), {})[method] = read_png(path)
    return cells


def closest(cover: torch.Tensor, candidates: torch.Tensor) -> tuple[int, float]:
    """Index of the candidate nearest to ``cover`` (max abs pixel difference) and that difference."""
    diff = (candidates - cover).abs().flatten(1).amax(1)
    return int(diff.argmin()), float(diff.min())


@pytest.mark.slow  # ~30 s: two tiny stage-3 fits, then the evaluation
def test_icg_evaluate_cli_on_tiny_chained_checkpoints(tiny_evaluation, tiny_platform, tiny_stage3_ckpt,
                                                      tiny_no_user_ckpt, tiny_base_model):  # fmt: skip
    """``icg evaluate`` (evaluate_checkpoints and its checkpoint loading) end to end: report, printed table, and a
    gallery whose covers are those of the checkpoints it was given, method by method.

    The gallery's pairs are recovered from its pictures alone: a column's item is the dataset cover its reference
    picture shows, a row's user the one whose ICG cover of that item the row shows."""
    from icg.data.datamodule import ICGDataModule
    from icg.evaluation.methods import AlignmentMethod, TitleOnlyMethod
    from icg.evaluation.sample import pairs_batch

    out, printed = tiny_evaluation
    data = json.loads((out / "report.json").read_text())
    assert list(data["methods"]) == ["title_only", "personalized_prompt", "icg_no_user", "icg_other_mllm", "icg"]
    assert data["sample"]["held_out_pairs"] == 6 and data["sample"]["grid"] == [4, 4]
    assert data["sample"]["downstream_users"] == 3
    for row in data["methods"].values():
        for key in (
            "aesthetic",
            "relevance",
            "true_click_prob",
            "true_click_prob_candidates",
            "lpips_reference",
            "downstream_auc",
        ):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row[key])
    assert data["reference_covers"]["lpips_reference"] == pytest.approx(0.0, abs=1e-6)  # --lpips_backbone was used
    assert "lpips_reference" not in data["unavailable"] and "clip_title" in data["unavailable"]
    assert data["lift"]["treatment"] == "icg" and data["lift"]["baseline"] == "title_only"
    assert printed.strip() == format_markdown(data).strip()  # the CLI prints the report's table

    icg = AlignmentMethod.from_checkpoint(tiny_stage3_ckpt)
    dm = ICGDataModule(str(tiny_platform), image_size=icg.image_size)
    dm.setup()
    cells = gallery_cells(out / "gallery")
    rows, cols = (1 + max(k[i] for k in cells) for i in (0, 1))
    assert (rows, cols) == (4, 4) and all(len(cells[(r, c)]) >= 3 for r in range(rows) for c in range(cols))
    pool = pairs_batch(dm, [(0, i) for i in range(dm.num_items)])["image"]
    items = []
    for c in range(cols):
        item, diff = closest(cells[(0, c)]["reference"], pool)
        assert diff <= 1 / 255, f"column {c}: its reference picture is no dataset cover ({diff})"
        items.append(item)
    every_user = pairs_batch(dm, [(u, i) for i in items for u in range(dm.num_users)])
    icg_covers = icg(every_user).view(cols, dm.num_users, *pool.shape[1:])
    users = []
    for r in range(rows):
        found = [closest(cells[(r, c)]["icg"], icg_covers[c]) for c in range(cols)]
        assert len({u for u, _ in found}) == 1 and max(d for _, d in found) <= 1 / 255, f"row {r}: {found}"
        users.append(found[0][0])
    assert len(set(users)) == rows
    batch = pairs_batch(dm, [(u, i) for u in users for i in items])
    expected = {
        "icg": icg(batch),
        "icg_no_user": AlignmentMethod.from_checkpoint(tiny_no_user_ckpt, config_key="no_user_ckpt")(batch),
        "icg_other_mllm": AlignmentMethod.from_checkpoint(tiny_no_user_ckpt, "own", "other_mllm_ckpt")(batch),
        "title_only": TitleOnlyMethod.from_folder(
            tiny_base_model, num_steps=icg.num_steps, image_size=icg.image_size, seed=icg.seed
        )(batch),
    }
    assert not torch.allclose(expected["icg"], expected["icg_no_user"], atol=2 / 255)  # the methods are told apart
    for name, covers in expected.items():
        for k, cover in enumerate(covers):
            r, c = divmod(k, cols)
            torch.testing.assert_close(cells[(r, c)][name], cover, rtol=0, atol=1 / 255, msg=f"{name} cover {k}")


def test_icg_evaluate_names_the_argument_of_a_wrong_stage_checkpoint(tiny_stage1_ckpt, tiny_base_model, tmp_path,
                                                                     capsys):  # fmt: skip
    from icg.cli import main

    words = ["evaluate", "--data_root", str(tmp_path), "--stage1_ckpt", str(tiny_stage1_ckpt), "--stage3_ckpt",
             str(tiny_stage1_ckpt), "--base_model", str(tiny_base_model), "--out_dir", str(tmp_path)]  # fmt: skip
    try:  # raised, or printed as one line with a non-zero exit (icg.cli.main's error printing)
        code, message = main(words), ""
    except (Exception, SystemExit) as err:  # noqa: BLE001
        code, message = getattr(err, "code", 1), str(err)
    assert code != 0
    message += capsys.readouterr().err
    assert re.search(r"stage3_ckpt.*'preference' stage", message), message


def test_ablations_trained_in_another_mode_run_in_icgs(tiny_platform, tiny_stage1_ckpt, tiny_stage3_ckpt,
                                                       tiny_no_user_ckpt, tiny_base_model, tmp_path,
                                                       monkeypatch):  # fmt: skip
    """A reference-guided ablation beside an ICG trained from pure noise makes its covers from pure noise too: every
    method in the table runs in ICG's mode, whatever mode each checkpoint was trained in."""
    import icg.evaluation.run as run

    ckpt = torch.load(tiny_no_user_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["strength"] == 1.0
    ckpt["hyper_parameters"]["strength"] = 0.5  # the same ablation, as if trained reference-guided
    guided = tmp_path / "no_user_guided.ckpt"
    torch.save(ckpt, guided)
    seen = {}
    monkeypatch.setattr(run, "evaluate", lambda data_root, stage1_ckpt, methods, *a, **k: seen.update(methods))
    run.evaluate_checkpoints(str(tiny_platform), str(tiny_stage1_ckpt), str(tiny_stage3_ckpt), str(tiny_base_model),
                             str(tmp_path / "out"), no_user_ckpt=str(guided), no_meta_ckpt=str(guided),
                             other_mllm_ckpt=str(guided))  # fmt: skip
    assert run.AlignmentMethod.from_checkpoint(guided).mode_strength == 0.5
    assert {name: getattr(m, "mode_strength", m.strength) for name, m in seen.items()} == dict.fromkeys(
        ["title_only", "personalized_prompt", "icg_no_user", "icg_no_meta", "icg_other_mllm", "icg"], 1.0
    )

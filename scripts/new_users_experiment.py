"""New users without retraining, measured on the synthetic platform (docs/generation.md has the figures).

ICG (Bian et al., EMNLP 2025) personalizes covers with the stage-1 user embedding. A user who joins after training
has clicks but no embedding; ``icg users fold-in`` fits one from those clicks with the click model's item tower
frozen. This script measures what that buys, on users that stages 1-3 never saw:

1. ``prepare``: ``icg data synth`` (the demo's platform, 200 users x 300 items), then three datasets beside it:
   ``runs/demo/data`` = the platform without the held-out users' interactions (what stages 1-3 train on),
   ``history/`` = the platform without each held-out user's last 3 clicks (the click log a fold-in reads),
   and ``pairs.csv`` = those last clicks (user_id, item_id): the covers to measure.
2. ``train``: the demo's stand-in base model and stages 1-3 (``lightning_configs/demo``), run in the work folder so
   the demo configs' ``runs/demo/...`` paths land there; then ``icg export``.
3. ``measure``: ``icg users fold-in`` into a copy of the export; ``icg generate`` of ``pairs.csv`` with the fold-in
   export (the users' own embeddings) and with the plain export (the users are unknown: the cold-start fallback);
   title-only covers from the base model; the oracle's true click probability of every cover for its user, the
   same for the trained users' own test clicks (known users, the reference), and the stage-1 model's GAUC on the
   held-out clicks with each embedding. Writes ``results.json`` and prints it.

    python scripts/new_users_experiment.py --workdir runs/new_users --seed 0 all     # 20-26 min on 2 shared cores

Every step is the ``icg`` command a user would type, run as a subprocess from the work folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "lightning_configs" / "demo"
STAGE1 = Path("runs/demo/stage1/checkpoints/last.ckpt")
STAGE3 = Path("runs/demo/stage3/checkpoints/last.ckpt")
EXPORT = Path("runs/demo/export")
FOLDED = Path("runs/demo/export_folded")
BASE_MODEL = Path("runs/demo/base_model")
HOLDOUT = 3  # = data.holdout of the demo configs

log = logging.getLogger("new_users")


def icg(*words: str, workdir: Path) -> None:
    """One ``icg`` command as a user types it, run from the work folder (the demo configs' paths are relative)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    began = time.time()
    log.info("$ icg %s", " ".join(words))
    subprocess.run([sys.executable, "-m", "icg.cli", *words], cwd=workdir, env=env, check=True)
    log.info("  %.0f s", time.time() - began)


# ------------------------------------------------------------------------------------------------ prepare
def write_subset(source: Path, target: Path, interactions: pd.DataFrame) -> None:
    """A dataset folder with ``source``'s items and covers (hard links) and the given interactions."""
    from icg.data.schema import read_dataset, read_meta, write_dataset

    items, _, _ = read_dataset(source)
    (target / "images").mkdir(parents=True, exist_ok=True)
    for image in items["image"]:
        dest = target / image
        if not dest.exists():
            os.link(source / image, dest)
    write_dataset(target, items, interactions, read_meta(source))


def prepare(workdir: Path, held_out_users: int, seed: int) -> None:
    from icg.data.schema import read_dataset

    full = workdir / "full"
    icg("data", "synth", "--out", "full", "--seed", str(seed), workdir=workdir)
    items, interactions, _ = read_dataset(full)
    users = sorted(interactions["user_id"].unique())
    rng = np.random.default_rng(seed)
    held = sorted(rng.choice(users, size=held_out_users, replace=False).tolist())
    is_held = interactions["user_id"].isin(held)
    write_subset(full, workdir / "runs" / "demo" / "data", interactions[~is_held])
    ordered = interactions[is_held].sort_values(["user_id", "timestamp", "item_id"])
    last = ordered.groupby("user_id").tail(HOLDOUT)
    history = interactions.drop(index=last.index)
    write_subset(full, workdir / "history", history)
    last[["user_id", "item_id"]].to_csv(workdir / "pairs.csv", index=False)
    (workdir / "held_out_users.txt").write_text("\n".join(held) + "\n")
    log.info("held out %d users (%d clicks for fold-in, %d pairs to measure)", len(held),
             int(history["user_id"].isin(held).sum()), len(last))  # fmt: skip


# ------------------------------------------------------------------------------------------------ train
def train(workdir: Path, seed: int) -> None:
    seeded = ["--seed_everything", str(seed), "--data.seed", str(seed)]
    model_seed = ["--model.init_args.seed", str(seed)]
    for config, extra in (
        ("base_model.yaml", []),
        ("stage1_preference.yaml", []),
        ("stage2_rewards.yaml", model_seed),
        ("stage3_alignment.yaml", model_seed),
    ):
        icg("fit", "--config", str(CONFIGS / config), *seeded, *extra, workdir=workdir)
    icg("export", "--stage3_ckpt", str(STAGE3), "--out", str(EXPORT), "--overwrite", "true", workdir=workdir)


# ------------------------------------------------------------------------------------------------ measure
def load_pixels(path: str | Path):
    import torch
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def oracle_probs(oracle, rows: list[dict], files: list[Path]) -> np.ndarray:
    """True click probability of each cover for its own user."""
    import torch

    images = torch.stack([load_pixels(f) for f in files])
    with torch.no_grad():
        return oracle(images, oracle.user_index([r["user_id"] for r in rows])).double().numpy()


def generated(workdir: Path, out: str) -> tuple[list[dict], list[Path]]:
    rows = [json.loads(line) for line in (workdir / out / "manifest.jsonl").read_text().splitlines()]
    return rows, [workdir / out / r["file"] for r in rows]


def title_only_probs(workdir: Path, oracle, pairs: pd.DataFrame, settings: dict) -> np.ndarray:
    """The base model prompted with the title alone, same seeds, steps and mode as ICG (the paper's baseline)."""
    import torch

    from icg.evaluation.methods import TitleOnlyMethod
    from icg.generation.generator import reference_batch

    method = TitleOnlyMethod.from_folder(workdir / BASE_MODEL, num_steps=settings["num_steps"],
                                         image_size=settings["image_size"], guidance_scale=settings["guidance_scale"],
                                         strength=settings["strength"], seed=settings["seed"])  # fmt: skip
    probs = []
    for start in range(0, len(pairs), 16):
        chunk = pairs.iloc[start : start + 16]
        references = reference_batch([workdir / "full" / p for p in chunk["image"]], settings["image_size"])
        batch = {"user_id": list(chunk["user_id"]), "item_id": list(chunk["item_id"]), "title": list(chunk["title"])}
        batch["image"] = references
        with torch.no_grad():
            images = method(batch)
            probs.append(oracle(images, oracle.user_index(batch["user_id"])).double().numpy())
    return np.concatenate(probs)


def click_model_gauc(workdir: Path, held: list[str], eval_pairs: pd.DataFrame, seed: int) -> dict[str, float]:
    """GAUC of the stage-1 model on each held-out user's last clicks vs 20 items they never clicked, with the user's
    fold-in embedding and with the fallback; the oracle's on the same candidates is the ceiling."""
    import torch

    from icg.data.oracle import Oracle
    from icg.data.schema import read_dataset
    from icg.generation.fold_in import Stage1, item_vectors
    from icg.generation.users import UserTable

    items, interactions, _ = read_dataset(workdir / "full")
    stage1 = Stage1.load(workdir / STAGE1)
    vectors, item_logit, _ = item_vectors(stage1.model, [str(workdir / "full" / p) for p in items["image"]],
                                          list(items["title"]), stage1.image_size)  # fmt: skip
    index = {item: i for i, item in enumerate(items["item_id"])}
    table = UserTable.load(workdir / FOLDED)
    oracle = Oracle.from_dataset(workdir / "full")
    covers = torch.stack([load_pixels(workdir / "full" / p) for p in items["image"]])
    truth = oracle.probability_matrix(covers).double().numpy()  # U x I
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {"fold_in": [], "fallback": [], "oracle": []}
    for user in held:
        clicked = {index[i] for i in interactions.loc[interactions["user_id"] == user, "item_id"]}
        positives = [index[i] for i in eval_pairs.loc[eval_pairs["user_id"] == user, "item_id"]]
        pool = np.array(sorted(set(range(len(items))) - clicked))
        candidates = np.concatenate([positives, rng.choice(pool, size=20, replace=False)])
        labels = np.r_[np.ones(len(positives)), np.zeros(20)]
        embeddings = {"fold_in": table.lookup([user])[0][0], "fallback": table.fallback(1)[0]}
        for name, e in embeddings.items():
            logits = (vectors[candidates] @ e + item_logit[candidates]).double().numpy()
            scores[name].append(_auc(logits, labels))
        scores["oracle"].append(_auc(truth[oracle.user_index([user])[0].item(), candidates], labels))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def measure(workdir: Path, seed: int) -> dict:
    from icg.data.oracle import Oracle
    from icg.data.schema import read_dataset
    from icg.evaluation.metrics import bootstrap_lift

    held = (workdir / "held_out_users.txt").read_text().split()
    icg("users", "fold-in", "--export", str(EXPORT), "--data_root", "history", "--users_file", "held_out_users.txt",
        "--out", str(FOLDED), workdir=workdir)  # fmt: skip
    # Known users for reference: as many trained users, their own last clicks (stage 1's test split).
    _, train_interactions, _ = read_dataset(workdir / "runs" / "demo" / "data")
    trained = sorted(train_interactions["user_id"].unique())
    chosen = sorted(np.random.default_rng(seed + 1).choice(trained, size=len(held), replace=False).tolist())
    known = train_interactions[train_interactions["user_id"].isin(chosen)].sort_values(["user_id", "timestamp"])
    known.groupby("user_id").tail(HOLDOUT)[["user_id", "item_id"]].to_csv(workdir / "pairs_known.csv", index=False)
    runs = {
        "icg_fold_in": (FOLDED, "pairs.csv"),
        "icg_fallback": (EXPORT, "pairs.csv"),
        "icg_known_users": (EXPORT, "pairs_known.csv"),
    }
    for method, (export, pairs) in runs.items():
        icg("generate", "--export", str(export), "--pairs", pairs, "--data_root", "full", "--out", f"covers/{method}",
            "--method", method, "--progress_bar", "false", workdir=workdir)  # fmt: skip
    oracle = Oracle.from_dataset(workdir / "full")
    items, _, _ = read_dataset(workdir / "full")
    pairs = pd.read_csv(workdir / "pairs.csv", dtype=str).merge(items, on="item_id", how="left")
    probs = {}
    for method in runs:
        rows, files = generated(workdir, f"covers/{method}")
        probs[method] = oracle_probs(oracle, rows, files)
        assert method == "icg_known_users" or [(r["user_id"], r["item_id"]) for r in rows] == list(
            zip(pairs["user_id"], pairs["item_id"], strict=True)
        )
    settings = json.loads((workdir / "covers/icg_fold_in/generate.json").read_text())
    probs["title_only"] = title_only_probs(workdir, oracle, pairs, settings)
    probs["reference_covers"] = oracle_probs(
        oracle, pairs.to_dict("records"), [workdir / "full" / p for p in pairs["image"]]
    )
    held_users = list(pairs["user_id"])
    results = {
        "held_out_users": len(held),
        "pairs": len(pairs),
        "true_click_prob": {m: float(p.mean()) for m, p in probs.items()},
        "lift_fold_in_over_fallback": bootstrap_lift(probs["icg_fold_in"], probs["icg_fallback"], held_users),
        "lift_fold_in_over_title_only": bootstrap_lift(probs["icg_fold_in"], probs["title_only"], held_users),
        "lift_fallback_over_title_only": bootstrap_lift(probs["icg_fallback"], probs["title_only"], held_users),
        "click_model_gauc": click_model_gauc(workdir, held, pd.read_csv(workdir / "pairs.csv", dtype=str), seed),
        "fold_in": json.loads((workdir / FOLDED / "icg_config.json").read_text())["provenance"]["fold_in"],
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    sys.stdout.write(json.dumps(results, indent=1) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["prepare", "train", "measure", "all"])
    parser.add_argument("--workdir", type=Path, default=Path("runs/new_users"))
    parser.add_argument("--held_out_users", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.step in ("prepare", "all"):
        prepare(workdir, args.held_out_users, args.seed)
    if args.step in ("train", "all"):
        train(workdir, args.seed)
    if args.step in ("measure", "all"):
        measure(workdir, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

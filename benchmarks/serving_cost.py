"""What serving ICG to a whole platform costs: covers made per 1,000 (user, item) pairs against the click probability
and the personal gain kept, for user segments, pools with a pick, and few-step sampling (issue 21).

ICG (Bian et al., EMNLP 2025) makes one cover per (user, item). A platform can instead make one cover per (user
segment, item) -- k-means over the stage-1 user embeddings the generator conditions on, the centroid as the segment's
"user" (``icg users segment``, whose ``cluster_users`` this calls) -- and optionally a pool of N seeds per segment
from which the stage-1 click model picks one per user (``icg generate --pool``). This measures, on the demo platform
with its oracle (the platform's true click model, ``icg.data.oracle``), for every setting:

* ``covers_per_1000``: covers generated per 1,000 served (user, item) pairs;
* ``p``: the oracle's mean click probability of the cover each pair gets;
* ``gain_kept``: (p - p of the cold-start cover) / (p of per-user ICG - p of the cold-start cover), the share of
  per-user ICG's personal gain the setting keeps (the cold-start cover: ICG with the cold-start user embedding, one
  cover per item, what every user gets without personalization); ill-conditioned where that gain is small;
* ``p_vs_per_user``: p / p of per-user ICG;
* ``title_match``: the covers the pairs get recognised as their own item's against other items' titles by the
  stage-2 relevance reward (``title_match_accuracy``, the evaluation's ``title_match_acc``; 0.5 is chance): a pick
  must not buy clicks with covers that stop depicting the item;

over the served pairs = every platform user x ``--items`` items (seeded sample of the catalogue), at every step count
given a stage-3 checkpoint (``--stage3 STEPS=PATH``; a checkpoint trained at that many steps). Settings:

* ``per_user`` (one cover per pair) and ``per_user_best_of_N`` (N seeds per pair, the click model keeps one);
* ``cold_start`` (one cover per item) and ``cold_pool_N_pick`` (N cold-start seeds per item, picked per user: the
  pool + pick baseline a platform has without ICG's users);
* ``segments_K`` (each user gets their segment's cover) and ``segments_K_pool_N_pick`` (the item's K x N segment
  covers, the click model picks per user).

Covers/s is measured per step count in the same run (one process, CPU unless ``--device``); the picks use the stage-1
model (the platform's), never the oracle. Run from a finished demo (``make demo``)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serving_cost.py --run runs/demo \\
        --stage3 10=runs/demo/stage3/checkpoints/last.ckpt --json benchmarks/results/serving_cost.json

Figures and the Pixel1M / Pixel8M projection: docs/performance.md ("Serving cost").
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.data.oracle import Oracle
from icg.evaluation.metrics import title_match_accuracy
from icg.generation.generator import CoverGenerator, reference_batch
from icg.generation.seeds import candidate_seeds
from icg.generation.segments import cluster_users
from icg.models.preference import PreferenceModel
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import load_reward_bundle


def make_covers(gen: CoverGenerator, embeddings: torch.Tensor, members: list[str], items: list[int], catalogue,
                references: torch.Tensor, slot: int, batch: int, steps: int) -> torch.Tensor:  # fmt: skip
    """One cover per (member embedding, item) at pool slot ``slot`` (slot 0: the pair's own seed)."""
    out = []
    for start in range(0, len(members), batch):
        sl = slice(start, start + batch)
        item_rows = items[sl]
        titles = [catalogue.title[i] for i in item_rows]
        seeds = candidate_seeds(gen.seeds(members[sl], [catalogue.item_id[i] for i in item_rows]), slot)
        refs = references[item_rows]
        cond = gen.conditioning(embeddings[sl], titles, refs)
        out.append(gen.sample(cond, seeds, refs, num_steps=steps).float().cpu())
    return torch.cat(out)


class Picker:
    """The stage-1 click model picking among an item's covers per user (images encoded once, as the evaluation's
    pool + pick does)."""

    def __init__(self, path: str, user_ids: list[str]) -> None:
        self.model, ids = PreferenceModel.from_checkpoint(path, "preference_ckpt")
        index = {u: k for k, u in enumerate(ids)}
        self.rows = torch.tensor([index.get(u, -1) for u in user_ids])

    @torch.no_grad()
    def pick(self, covers: torch.Tensor, users: torch.Tensor, title: str) -> torch.Tensor:
        """Per user (indices into the served users), the index of the cover (of ``covers``, N x 3 x H x W) it picks."""
        features = self.model.encode_images(covers)
        n = len(covers)
        rows = self.rows[users].repeat_interleave(n)
        logits = self.model.score_features(features.repeat(len(users), 1), rows, titles=[title] * (len(users) * n))
        return logits.view(len(users), n).argmax(1)


def run_steps(steps: int, ckpt: str, args, catalogue, items: list[int], oracle: Oracle) -> dict:
    gen = CoverGenerator.from_checkpoint(ckpt, base_model=f"{args.run}/base_model", device=args.device)
    if gen.settings.num_steps != steps:
        print(f"  note: {ckpt} was trained at {gen.settings.num_steps} steps; sampled at {steps}")
    users = list(gen.users.user_ids)
    table = gen.users.embeddings
    user_emb, cold_emb = table[:-1], table[-1:]
    references = reference_batch([f"{args.run}/data/{p}" for p in catalogue.image], gen.image_size)
    oracle_rows = oracle.user_index(users)
    picker = Picker(f"{args.run}/stage1/checkpoints/last.ckpt", users)
    num_users, num_items = len(users), len(items)
    pairs = num_users * num_items
    every = torch.arange(num_users)
    rows: dict[str, dict] = {}

    def truth(covers: torch.Tensor) -> torch.Tensor:  # served users x covers, the oracle's click probability
        return oracle.probability_matrix(covers)[oracle_rows]

    relevance = load_reward_bundle(f"{args.run}/stage2/checkpoints/last.ckpt").rewards["relevance"]
    item_titles = [catalogue.title[i] for i in items for _ in range(num_users)]  # item-major, as the pairs' covers

    def record(name: str, covers_made: int, p_pairs: np.ndarray, covers: torch.Tensor) -> None:
        """``p_pairs`` items x users; ``covers`` the (items x users) covers the pairs get, item-major."""
        match = title_match_accuracy(lambda x, t: relevance(x, RewardContext(titles=list(t))), covers, item_titles)
        rows[name] = {"covers_per_1000": 1000 * covers_made / pairs, "p": float(p_pairs.mean()), "title_match": match}

    # per user: one cover per (user, item); candidates 0..N-1 for best of N
    started = time.perf_counter()
    per_user = [make_covers(gen, user_emb.repeat(num_items, 1), users * num_items,
                            [i for i in items for _ in users], catalogue, references, slot, args.batch, steps)
                for slot in range(max(args.pools))]  # fmt: skip
    seconds = time.perf_counter() - started
    covers_per_s = pairs * len(per_user) / seconds
    p_slots = np.stack([np.stack([truth(c[k * num_users : (k + 1) * num_users])[every, every].numpy()
                                  for k in range(num_items)]) for c in per_user])  # fmt: skip  # slot x item x user
    record("per_user", pairs, p_slots[0], per_user[0])
    for n in args.pools:
        if n > 1:
            slot = np.array([[picker.pick(torch.stack([per_user[s][k * num_users + u] for s in range(n)]),
                                          torch.tensor([u]), catalogue.title[items[k]]).item()
                              for u in range(num_users)] for k in range(num_items)])  # fmt: skip
            picked = np.take_along_axis(p_slots, slot[None], 0)[0]
            covers = torch.stack([per_user[slot[k, u]][k * num_users + u]
                                  for k in range(num_items) for u in range(num_users)])  # fmt: skip
            record(f"per_user_best_of_{n}", pairs * n, picked, covers)

    def segment_settings(name: str, emb: torch.Tensor, labels: np.ndarray) -> None:
        """Covers per (member, item, slot) for the members ``emb``; each user's own member, then the picks."""
        members = [f"{name}/{j}" for j in range(len(emb))]
        pools = {}
        for k, item in enumerate(items):
            covers = [make_covers(gen, emb, members, [item] * len(emb), catalogue, references, slot, args.batch, steps)
                      for slot in range(max(args.pools))]  # fmt: skip
            pools[k] = torch.cat(covers)  # slot-major: slot * members + member
        own = torch.from_numpy(labels)
        p_own = np.stack([truth(pools[k][: len(emb)])[every, own].numpy() for k in pools])
        record(name, num_items * len(emb), p_own, torch.cat([pools[k][own] for k in pools]))
        for n in args.pools:
            if n * len(emb) < 2:
                continue
            chosen, covers = [], []
            for k, item in enumerate(items):
                pool = pools[k][: n * len(emb)]
                picks = picker.pick(pool, every, catalogue.title[item])
                chosen.append(truth(pool)[every, picks].numpy())
                covers.append(pool[picks])
            record(f"{name}_pool_{n}_pick", num_items * n * len(emb), np.stack(chosen), torch.cat(covers))

    segment_settings("cold_start", cold_emb, np.zeros(num_users, dtype=np.int64))
    for k in args.ks:
        if k >= num_users:
            continue
        segments = cluster_users(gen.users, k, seed=args.seed)  # what `icg users segment` writes
        segment_settings(f"segments_{k}", torch.as_tensor(segments.centroids).float(), segments.labels)

    p_user, p_cold = rows["per_user"]["p"], rows["cold_start"]["p"]
    for row in rows.values():  # the gain is ill-conditioned where per-user ICG barely beats the cold-start cover
        row["gain_kept"] = (row["p"] - p_cold) / (p_user - p_cold) if p_user != p_cold else None
        row["p_vs_per_user"] = row["p"] / p_user
    return {"steps": steps, "checkpoint": ckpt, "trained_steps": gen.settings.num_steps, "covers_per_s": covers_per_s,
            "users": num_users, "items": num_items, "settings": rows}  # fmt: skip


# Published SD 1.5 speed, 512 px, batch 1, 50 steps, on an A100 80G SXM: diffusers with torch 2.1, SDPA, compiled,
# channels last, 1.058 s per image (47.29 it/s; github.com/fal-ai/stable-diffusion-benchmarks, README table).
SD15_SECONDS_PER_IMAGE, SD15_STEPS = 1.058, 50
PLATFORMS = {"Pixel1M": (1_001_822, 100_541), "Pixel8M": (8_900_000, 407_000)}  # users, items (docs/performance.md)
CANDIDATES_PER_USER = 100  # covers a refresh shows each user


def projection(k: int | None, pool: int, steps: int) -> dict[str, float]:
    """PROJECTED GPU-hours per refresh on each platform: per user (``k`` None) = users x 100 covers; K segments x N
    pool seeds = at most K x N covers per item (every segment shown every item: Pixel1M shows each item ~1,000 users).
    Per-image time scales with the step count from the published 50-step time (UNet-bound: a lower bound at few
    steps, where the VAE decode and text encoder weigh more)."""
    seconds = SD15_SECONDS_PER_IMAGE * steps / SD15_STEPS
    hours = {}
    for name, (users, items) in PLATFORMS.items():
        covers = users * CANDIDATES_PER_USER if k is None else min(k * pool, users) * items
        hours[name] = covers * seconds / 3600
    return hours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo", help="a finished demo folder (data, base_model, stage1)")
    parser.add_argument("--stage3", action="append", default=[], help="STEPS=CHECKPOINT (repeatable)")
    parser.add_argument("--items", type=int, default=8, help="catalogue items served to every user")
    parser.add_argument("--ks", default="1,4,16,64", help="segment counts")
    parser.add_argument("--pools", default="1,4", help="pool seeds per member")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    args.pools = sorted(int(n) for n in args.pools.split(","))
    if not args.stage3:
        args.stage3 = [f"10={args.run}/stage3/checkpoints/last.ckpt"]
    torch.manual_seed(args.seed)
    catalogue = pd.read_parquet(f"{args.run}/data/items.parquet")
    items = sorted(np.random.default_rng(args.seed).choice(len(catalogue), args.items, replace=False).tolist())
    oracle = Oracle.from_dataset(f"{args.run}/data")
    results = []
    for spec in args.stage3:
        steps, ckpt = spec.split("=", 1)
        print(f"steps {steps}: {ckpt}", flush=True)
        result = run_steps(int(steps), ckpt, args, catalogue, items, oracle)
        results.append(result)
        print(f"  {result['covers_per_s']:.1f} covers/s; {result['users']} users x {result['items']} items")
        print(
            f"  {'setting':<28} {'covers/1000 pairs':>18} {'p':>7} {'gain kept':>10} {'p / per user':>13} "
            f"{'title-match':>12}"
        )
        for name, row in result["settings"].items():
            kept = "" if row["gain_kept"] is None else f"{100 * row['gain_kept']:.0f} %"
            print(
                f"  {name:<28} {row['covers_per_1000']:>18.1f} {row['p']:>7.3f} {kept:>10} "
                f"{row['p_vs_per_user']:>13.2f} {row['title_match']:>12.3f}",
                flush=True,
            )
    print("PROJECTION (not measured): GPU-hours per refresh, SD 1.5 on an A100 at the published per-image time")
    for label, k, pool, steps in [("per user, 50 steps", None, 1, 50), ("per user, 10 steps", None, 1, 10),
                                  ("per user, 4 steps", None, 1, 4)] + [
                                  (f"{k} segments, pool {n}, {s} steps", k, n, s)
                                  for k in (16, 64) for n in (1, 4) for s in (4, 10)]:  # fmt: skip
        hours = projection(k, pool, steps)
        print(f"  {label:<30} " + "  ".join(f"{name} {h:>10,.1f}" for name, h in hours.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                "device": args.device, "items": items, "seed": args.seed}  # fmt: skip
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

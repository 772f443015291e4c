"""``icg generate`` on Lightning's predict loop: covers for a pairs file on one process or many (DDP, SLURM).

ICG (Bian et al., EMNLP 2025) is exported once and then makes covers for the pairs a platform is about to show. Scaling
out is Lightning's job: ``CoverGeneration`` is a thin, inference-only LightningModule around a
:class:`~icg.generation.CoverGenerator`; the pairs' DataLoader is sharded by Lightning's distributed sampler for
predict (one shard per rank, no pair twice); ``CoverFolderWriter`` writes each rank's covers and manifest lines as
they come and, once every rank is done, rank 0 merges the shards into one ``manifest.jsonl``
(``icg.generation.cover_folder``).

Nothing trains here: the module has no registered parameters (the generator is a plain attribute moved to the rank's
device at the start), so DDP does not wrap it and nothing is broadcast between ranks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from icg.generation.cover_folder import CoverFolder, FolderState, ShardWriter
from icg.generation.generator import CoverGenerator
from icg.generation.picking import BestOf
from icg.generation.pools import PoolCover, PoolShardWriter
from icg.generation.users import UserTable
from icg.models.rewards.base import RewardContext

log = logging.getLogger(__name__)


class CoverGeneration(LightningModule):
    """Inference only: ``predict_step`` turns a batch of pairs into covers (and reward scores when given a bundle).

    Args:
        generator: the trained ICG (``CoverGenerator.from_pretrained(export)``).
        seed: base of the per-pair seeds (None: the export's).
        num_steps: DDIM steps (None: the export's).
        guidance_scale: classifier-free guidance (None: the export's).
        strength: 1 from pure noise, < 1 reference-guided (None: the export's).
        rewards: a stage-2 reward bundle to score every cover with (None: no scores).
        reward_users: the user vocabulary the bundle's preference reward indexes (stage 1's ids).
        user_guidance: from the cold-start user's prediction towards the user's (None: the export's).
        best_of: draw N covers per pair and keep the one the stage-1 click model likes best (None: one cover).
        pool_batch: covers sampled together from one item's pool (``icg.generation.pools``: a batch is one item).
    """

    def __init__(
        self,
        generator: CoverGenerator,
        seed: int | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        rewards: torch.nn.Module | None = None,
        reward_users: Sequence[str] = (),
        user_guidance: float | None = None,
        best_of: BestOf | None = None,
        pool_batch: int = 8,
    ) -> None:
        super().__init__()
        self.pool_batch = pool_batch
        self.generator = generator
        self.seed, self.num_steps, self.guidance_scale, self.strength = seed, num_steps, guidance_scale, strength
        self.user_guidance, self.best_of = user_guidance, best_of  # the scorer is no nn.Module: never wrapped
        # Not registered: frozen, loaded on every rank from its own file; Lightning must neither wrap nor sync it.
        self.frozen: dict[str, Any] = {"rewards": rewards} if rewards is not None else {}
        self.reward_users = UserTable.of_ids(reward_users)  # the bundle's user vocabulary, embeddings aside

    def on_predict_start(self) -> None:
        self.generator.to(self.device)
        if "rewards" in self.frozen:
            self.frozen["rewards"].to(self.device)
        if self.best_of is not None:
            self.best_of.scorer.to(self.device)

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Covers for a batch of the pairs DataLoader; each is a function of its (user, item, seed) only."""
        if batch.get("pool"):
            return self.predict_pool(batch)
        gen = self.generator
        users, items, titles = list(batch["user_id"]), list(batch["item_id"]), list(batch["title"])
        references = batch["image"].to(self.device)
        user_emb, known = gen.users.lookup(users)
        seeds = gen.seeds(users, items, self.seed)
        keys = list(zip(items, titles, batch["reference"], strict=True))  # the MLLM reads each item of the batch once
        cond, negative = gen.pair_conditioning(user_emb, titles, references, self.user_guidance, keys)
        sampling = {"num_steps": self.num_steps, "guidance_scale": self.guidance_scale, "strength": self.strength,
                    "user_guidance": self.user_guidance, "user_negative": negative}  # fmt: skip
        picked = {}
        if self.best_of is not None:
            best = gen.pick(cond, seeds, references, self.best_of, users, titles, **sampling)
            images, picked = best.images, {"candidate": best.index.tolist(), "candidate_score": best.scores.tolist()}
        else:
            images = gen.sample(cond, seeds, references, **sampling)
        return {
            "images": images.cpu(),
            "user_id": users,
            "item_id": items,
            "title": titles,
            "reference": list(batch["reference"]),
            "seed": seeds,
            "fallback": [not k for k in known],
            "scores": self.score(images, titles, users, references),
            "picked": picked,
        }

    def predict_pool(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One item's pool covers (``icg.generation.pools.PoolDataset``): the MLLM reads the item once, then each
        member (a segment's centroid, or the cold-start user for a member of segment None) is drawn from its seed."""
        gen = self.generator
        title, segments, seeds = batch["title"], list(batch["segment"]), [int(s) for s in batch["seed"]]
        reference = batch["image"].to(self.device)[None]
        features = gen.item_features([title], reference)
        ids = [s if s is not None else "" for s in segments]
        emb, known = gen.users.lookup(ids)
        cold = torch.tensor([s is None or not k for s, k in zip(segments, known, strict=True)], device=emb.device)
        emb = torch.where(cold[:, None], gen.users.fallback(len(ids)), emb)  # segment None: the cold-start user
        sampling = {"num_steps": self.num_steps, "guidance_scale": self.guidance_scale, "strength": self.strength,
                    "user_guidance": self.user_guidance}  # fmt: skip
        guided = (gen.settings.user_guidance if self.user_guidance is None else self.user_guidance) != 1
        images = []
        for start in range(0, len(ids), self.pool_batch):
            rows = slice(start, start + self.pool_batch)
            m = len(ids[rows])
            shared, titles, refs = features.expand(m, -1, -1), [title] * m, reference.expand(m, -1, -1, -1)
            cond = gen.conditioning(emb[rows], titles, refs, shared)
            negative = gen.fallback_conditioning(titles, refs, shared) if guided else None
            images.append(gen.sample(cond, seeds[rows], refs, user_negative=negative, **sampling).cpu())
        return {"pool": True, "images": torch.cat(images), "item_id": batch["item_id"], "segment": segments,
                "slot": [int(s) for s in batch["slot"]], "seed": seeds}  # fmt: skip

    def score(self, images: Tensor, titles: list[str], users: list[str], references: Tensor) -> dict[str, Tensor]:
        """Raw reward scores per cover (and the bundle's weighted total); empty without a bundle."""
        bundle = self.frozen.get("rewards")
        if bundle is None:
            return {}
        user_idx = self.reward_users.index_map(users).to(images.device)
        rewards = bundle(images, RewardContext(titles=titles, user_idx=user_idx, reference=references))
        return {name: raw.float().cpu() for name, raw in rewards.raw.items()} | {"total": rewards.total.float().cpu()}


class CoverFolderWriter(BasePredictionWriter):
    """Writes every predicted cover into an ``icg generate`` folder; rank 0 merges the manifest at the end.

    Args:
        folder: the output folder (its settings already checked by ``CoverFolder.inspect`` on every rank).
        state: what ``inspect`` found (an earlier run to replace, or the finished covers).
        method: the manifest's ``method`` of every cover.
        order: every (user, item) of the pairs file, in order: the merged manifest's order.
        skipped: the pairs-file rows left out (written down by rank 0).
        skip_report: where to write them (None: ``<out>/skipped.jsonl``).
        pool: a segments or pool run: pool covers go to ``pool.rank<R>.jsonl`` and the end (picks, manifest) is
            ``icg.generation.pools.PoolRun.finish``'s, after the loop (rank 0).
    """

    def __init__(
        self,
        folder: CoverFolder,
        state: FolderState,
        method: str,
        order: Sequence[tuple[str, str]] = (),
        skipped: Sequence[dict] = (),
        skip_report: str | Path | None = None,
        pool: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.pool = pool
        self.pool_shard: PoolShardWriter | None = None
        self.mllm_calls = 0  # rows the MLLM read, summed over the ranks
        self.covers_made = 0  # cover files written, summed over the ranks
        self.folder, self.state, self.method = folder, state, method
        self.order, self.skipped = list(order), list(skipped)
        self.current = set(self.order)
        self.skip_report = Path(skip_report) if skip_report is not None else None
        self.shard: ShardWriter | None = None
        self.merged: dict[tuple[str, str], bool] = {}  # rank 0: (user, item) -> fallback, over the merged manifest
        self.seconds = 0.0  # from every rank ready to the merged manifest: what the covers cost, start-up excluded
        self.cpu_seconds = 0.0  # CPU time of that span, summed over the ranks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.folder.prepare(self.state, self.skipped, self.skip_report)
        trainer.strategy.barrier("icg-generate-prepared")  # no rank writes a cover before the folder is ready
        if self.pool:
            self.pool_shard = PoolShardWriter(self.folder, trainer.global_rank, self.method)
        else:
            self.shard = ShardWriter(self.folder, trainer.global_rank, self.method)
        self._made, self._mllm = 0, pl_module.generator.mllm_calls
        self._started, self._cpu = time.perf_counter(), time.process_time()

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._made += len(prediction["images"])
        if prediction.get("pool"):
            for i, image in enumerate(prediction["images"]):
                cover = PoolCover(prediction["item_id"], prediction["slot"][i], prediction["segment"][i],
                                  prediction["seed"][i])  # fmt: skip
                self.pool_shard.write(image, cover)
            self.pool_shard.flush()
            return
        for i, image in enumerate(prediction["images"]):
            row = {
                "user_id": prediction["user_id"][i],
                "item_id": prediction["item_id"][i],
                "seed": int(prediction["seed"][i]),
                "title": prediction["title"][i],
                "reference": prediction["reference"][i],
                "fallback": bool(prediction["fallback"][i]),
            }
            if prediction["scores"]:
                row["scores"] = {name: float(value[i]) for name, value in prediction["scores"].items()}
            picked = prediction["picked"]
            if picked:  # best of N: how many were drawn, which was kept, its click probability
                row |= {"candidates": pl_module.best_of.candidates, "candidate": int(picked["candidate"][i]),
                        "candidate_score": float(picked["candidate_score"][i])}  # fmt: skip
            self.shard.write(image, row)
        self.shard.flush()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """After the loop on every rank (also one whose shard was empty): close, wait for all, rank 0 merges."""
        for shard in (self.shard, self.pool_shard):
            if shard is not None:
                shard.close()
        own = time.process_time() - self._cpu
        counts = [own, float(pl_module.generator.mllm_calls - self._mllm), float(self._made)]
        total = torch.tensor(counts, dtype=torch.float64, device=pl_module.device)
        total = trainer.strategy.reduce(total, reduce_op="sum")  # also the barrier before merging
        self.cpu_seconds, self.mllm_calls, self.covers_made = float(total[0]), int(total[1]), int(total[2])
        if trainer.is_global_zero and not self.pool:  # a pool run ends in PoolRun.finish, after the loop
            self.merged = self.folder.finalize(self.order)
            self.cpu_seconds += time.process_time() - self._cpu - own  # and rank 0's wait and merge
        self.seconds = time.perf_counter() - self._started


def generation_trainer(accelerator: str, devices: int, num_nodes: int, callbacks: list, progress_bar: bool = True):
    """The Trainer of ``icg generate``: predict only, no logger or checkpoints; DDP across more than one device.

    Under SLURM a preempted generation needs no checkpoint (it resumes from its folder), so Lightning's requeue
    handler, which would save one, stays off; ``generate.sbatch`` requeues from its batch shell instead.
    """
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    return Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy="ddp" if devices * num_nodes > 1 else "auto", logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=progress_bar, callbacks=callbacks, plugins=plugins,
    )  # fmt: skip

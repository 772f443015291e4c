"""Multi-node training on a real SLURM installation (``make test-slurm``, needs root and Debian's slurm-wlm).

A session fixture installs SLURM if needed (``scripts/slurm/install.sh``), starts the local cluster
(``scripts/slurm/cluster_up.sh``: two hosts as network namespaces, or one node with two tasks where namespaces cannot
be made) and always stops it again (``cluster_down.sh``). The tests then check the path a user takes on a cluster:
``srun`` places ranks on both nodes, gloo all-reduces across them with Lightning's SLURM rendezvous, the stage-1
sbatch template trains with DDP and writes one set of logs and checkpoints, the DDP result equals a single-process
run with the same global batch, and a SIGUSR1 preemption saves, requeues and resumes the job. The stage-2 and
stage-3 templates then train the tiny configs on the same layout, chained to stage-1/2 checkpoints trained in-process
(``tests/conftest.py``'s ``tiny_stage1_ckpt`` / ``tiny_stage2_ckpt``).

The templates ask SLURM for one GPU per task; the test cluster's nodes carry stand-in GPUs (a gres count, no
devices), so SLURM schedules the request as on a GPU cluster, and the jobs stack the CPU/gloo trainer fragment
(``ICG_TRAINER_CONFIG``). Left at the templates' GPU default, a job stops at once with one line per rank.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "slurm"
SBATCH_DIR = REPO / "lightning_configs" / "slurm"
TINY_DIR = REPO / "lightning_configs" / "tiny"
STAGE1_SBATCH = SBATCH_DIR / "stage1_preference.sbatch"
TINY_STAGE1 = TINY_DIR / "stage1_preference.yaml"
CPU_FRAGMENT = SBATCH_DIR / "trainer_ddp_cpu.yaml"
ICG = [str(REPO / ".venv" / "bin" / "python"), "-m", "icg.cli"]
JOB_TIMEOUT_S = 420
# Weights of the 2-node DDP run and the single-process run after the same full-batch SGD steps: they differ only
# by the order of float sums (measured max |diff| 3e-8 on weights of size ~0.25).
PARITY_ATOL = 1e-5


class Cluster:
    """The running test cluster: its mode, the environment that reaches it, and job helpers."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        lines = (state_dir / "state").read_text().splitlines()
        self.mode = next(line.split()[1] for line in lines if line.startswith("mode "))
        # netns: two hosts node1, node2 with one task each; local fallback: this machine, two tasks.
        self.nodes, self.tasks_per_node = (2, 1) if self.mode == "netns" else (1, 2)
        self.node_names = ["node1", "node2"] if self.mode == "netns" else [socket.gethostname().split(".")[0]]
        self.env = {
            **os.environ,
            "SLURM_CONF": str(state_dir / "etc" / "slurm.conf"),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }

    def run(self, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """Run a command against the cluster and return its result (stdout/stderr as text)."""
        return subprocess.run(
            args, env=kwargs.pop("env", self.env), capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def srun(self, *command: str, timeout: float = 180) -> list[str]:
        """``srun`` over all nodes; returns the non-empty stdout lines, fails the test on a non-zero exit."""
        result = self.run(
            "srun", f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}", *command, timeout=timeout
        )
        assert result.returncode == 0, f"srun failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return [line for line in result.stdout.splitlines() if line.strip()]

    def sbatch(self, script: Path, *args: str, chdir: Path, env: dict[str, str] | None = None) -> str:
        """Submit ``script`` with this cluster's node/task counts (one stand-in GPU per task, one CPU); returns the
        job id. The job stacks the CPU/gloo trainer fragment unless ``env`` sets ``ICG_TRAINER_CONFIG``."""
        result = self.run(
            "sbatch", "--parsable", f"--chdir={chdir}", f"--nodes={self.nodes}",
            f"--ntasks-per-node={self.tasks_per_node}", f"--gpus-per-node={self.tasks_per_node}", "--cpus-per-task=1",
            str(script), *args, env={**self.env, "ICG_TRAINER_CONFIG": str(CPU_FRAGMENT), **(env or {})},
        )  # fmt: skip
        assert result.returncode == 0, f"sbatch failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (jobs stay visible for MinJobAge=600 s after they end)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def wait(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
        """Wait until the job has ended; returns its final ``scontrol`` record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
                return info
            time.sleep(1)
        self.run("scancel", job_id)
        pytest.fail(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout} s")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Install (if needed), start the local cluster for the session, and stop it even when tests fail."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (it starts munged/slurmctld/slurmd and makes namespaces)")
    # Not under pytest's tmp folder: that is private to root, and munged runs as the munge user.
    state_dir = Path(tempfile.mkdtemp(prefix="icg-slurm-test-"))
    env = {**os.environ, "ICG_SLURM_DIR": str(state_dir)}
    install = subprocess.run([str(SCRIPTS / "install.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, f"install.sh failed:\n{install.stderr}"
    start = time.monotonic()
    up = subprocess.run([str(SCRIPTS / "cluster_up.sh")], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, f"cluster_up.sh failed:\n{up.stdout}\n{up.stderr}"
        sys.stderr.write(f"\nSLURM cluster up in {time.monotonic() - start:.1f} s\n{up.stderr}")
        yield Cluster(state_dir)
    finally:
        down = subprocess.run([str(SCRIPTS / "cluster_down.sh")], env=env, capture_output=True, text=True, timeout=120)
        sys.stderr.write(down.stderr)
        if down.returncode == 0 and not os.environ.get("ICG_SLURM_KEEP"):  # ICG_SLURM_KEEP=1 keeps the logs
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic platform (the tiny stage-1 config's size: 30 users, 60 items, 32 px covers)."""
    from icg.data.synthetic import generate_platform

    return generate_platform(tmp_path_factory.mktemp("synth") / "platform", users=30, items=60, image_size=32)


def _stage1_job(cluster: Cluster, shared: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Submit the shipped stage-1 sbatch template with the tiny config; returns the job id."""
    job_env = {"ICG_SHARED_DIR": str(shared), "ICG_REPO": str(REPO), "ICG_STAGE_CONFIG": str(TINY_STAGE1)}
    return cluster.sbatch(STAGE1_SBATCH, *args, chdir=shared, env={**job_env, **(env or {})})


def _stage_job(cluster: Cluster, stage: str, shared: Path, *args: str) -> str:
    """Submit the shipped ``<stage>.sbatch`` with ``lightning_configs/tiny/<stage>.yaml``; returns the job id."""
    job_env = {
        "ICG_SHARED_DIR": str(shared),
        "ICG_REPO": str(REPO),
        "ICG_STAGE_CONFIG": str(TINY_DIR / f"{stage}.yaml"),
    }
    return cluster.sbatch(SBATCH_DIR / f"{stage}.sbatch", *args, chdir=shared, env=job_env)


def _job_log(shared: Path, job_id: str, stage: str = "stage1_preference") -> str:
    return (shared / f"icg-{stage}-{job_id}.out").read_text()


def _csv_logger(shared: Path) -> list[str]:
    """``icg fit`` arguments for a CSV logger under ``shared`` (the tiny configs log nothing; validation should)."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(shared / "csv")}}
    return ["--trainer.logger", json.dumps(logger)]


def _logged(shared: Path) -> dict[str, list[float]]:
    """Every metric rank 0's CSV logger wrote, as name -> its non-empty values in order."""
    files = list((shared / "csv" / "lightning_logs").glob("version_*/metrics.csv"))
    assert len(files) == 1, files  # one logger version: rank 0 alone writes
    rows = list(csv.DictReader(files[0].open()))
    return {key: [float(row[key]) for row in rows if row[key]] for key in rows[0]}


def _assert_stage_job(cluster: Cluster, stage: str, icg_stage: str, steps: int, shared: Path, job: str) -> None:
    """The job completed on every rank and rank 0 alone wrote one checkpoint of ``icg_stage`` after ``steps`` steps."""
    started = time.monotonic()
    info = cluster.wait(job)
    log = _job_log(shared, job, stage)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    sys.stderr.write(f"\n{stage} sbatch job on {info['NodeList']}: waited {time.monotonic() - started:.1f} s\n")
    world = cluster.nodes * cluster.tasks_per_node
    for rank in range(world):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{world}" in log, log[-3000:]
    assert f"Starting with {world} processes" in log, log[-3000:]
    checkpoints = sorted(shared.rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    checkpoint = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert checkpoint["icg"]["stage"] == icg_stage
    assert checkpoint["global_step"] == steps, log[-3000:]  # no rank skipped an optimizer step


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_all_nodes_idle(slurm_cluster: Cluster) -> None:
    out = slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N %T").stdout.split()
    states = dict(zip(out[::2], out[1::2], strict=True))
    assert states == dict.fromkeys(slurm_cluster.node_names, "idle")


def test_srun_places_ranks_on_every_node(slurm_cluster: Cluster) -> None:
    probe = (
        "import json, os, socket; print(json.dumps({'procid': int(os.environ['SLURM_PROCID']), "
        "'nodeid': int(os.environ['SLURM_NODEID']), 'host': socket.gethostname()}))"
    )
    ranks = [json.loads(line) for line in slurm_cluster.srun(sys.executable, "-c", probe)]
    world = slurm_cluster.nodes * slurm_cluster.tasks_per_node
    assert sorted(r["procid"] for r in ranks) == list(range(world))
    assert {r["nodeid"] for r in ranks} == set(range(slurm_cluster.nodes))
    if slurm_cluster.mode == "netns":
        # each namespace is its own host: SLURM node name == the task's hostname
        assert {(r["nodeid"], r["host"]) for r in ranks} == {(0, "node1"), (1, "node2")}


def test_gloo_all_reduce_across_nodes(slurm_cluster: Cluster) -> None:
    lines = slurm_cluster.srun(sys.executable, str(SCRIPTS / "allreduce_check.py"))
    reports = [json.loads(line) for line in lines if line.startswith("{")]
    world = slurm_cluster.nodes * slurm_cluster.tasks_per_node
    assert sorted(r["rank"] for r in reports) == list(range(world))
    assert all(r["ok"] and r["all_reduce_sum"] == world * (world + 1) / 2 for r in reports), reports
    assert {r["main_address"] for r in reports} == {slurm_cluster.node_names[0]}
    if slurm_cluster.mode == "netns":
        assert {r["hostname"] for r in reports} == {"node1", "node2"}


def test_stage1_sbatch_trains_on_all_ranks(slurm_cluster: Cluster, synth_root: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    job = _stage1_job(slurm_cluster, tmp_path, "--data.root", str(synth_root), "--trainer.logger", "true")
    info = slurm_cluster.wait(job)
    log = _job_log(tmp_path, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    sys.stderr.write(f"\nstage-1 sbatch job on {info['NodeList']}: {time.monotonic() - started:.1f} s\n")
    world = slurm_cluster.nodes * slurm_cluster.tasks_per_node
    for rank in range(world):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{world}" in log
    assert f"Starting with {world} processes" in log
    assert f"GPUs per node: {slurm_cluster.tasks_per_node}" in log  # SLURM granted the template's GPU request
    run_dir = tmp_path / "runs" / "stage1_preference"
    # rank 0 alone writes: one logger version (named after the job id), one event file, one checkpoint
    versions = sorted((run_dir / "lightning_logs").iterdir())
    assert [v.name for v in versions] == [f"version_{job}"]
    events = list(versions[0].glob("events.out.tfevents.*"))
    checkpoints = list(versions[0].glob("checkpoints/*.ckpt"))
    assert len(events) == 1 and len(checkpoints) == 1, (events, checkpoints)
    if slurm_cluster.mode == "netns":
        assert ".node1." in events[0].name  # TensorBoard names the file after the writing host
    steps = torch.load(checkpoints[0], map_location="cpu", weights_only=True)["global_step"]
    assert steps == 5  # the tiny config's limit_train_batches


def test_ddp_equals_single_process_with_same_global_batch(
    slurm_cluster: Cluster, synth_root: Path, tmp_path: Path
) -> None:
    # Full-batch SGD: DDP's DistributedSampler reshuffles rows across ranks, so only a batch that holds the whole
    # train set is the same set of rows in both runs. 4 rows per positive (1 + 3 negatives) keeps it even.
    from icg.data.datamodule import ICGDataModule

    data = ICGDataModule(root=synth_root, image_size=32, negatives_per_positive=3, history_length=5)
    data.setup("fit")
    rows = len(data.dataset("train", "interactions"))
    world = slurm_cluster.nodes * slurm_cluster.tasks_per_node
    assert rows % world == 0
    parity = tmp_path / "full_batch.yaml"
    parity.write_text(
        "model:\n  init_args:\n    model:\n      init_args: {cold_start_dropout: 0.0}\n"
        "    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.5}}\n"
        "data: {negatives_per_positive: 3}\n"
        "trainer:\n  max_epochs: 3\n  limit_train_batches: 1\n  limit_val_batches: 0\n  num_sanity_val_steps: 0\n"
        "  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {save_top_k: -1, every_n_epochs: 1}\n"
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    common = ["--config", str(parity), "--data.root", str(synth_root)]
    job = _stage1_job(slurm_cluster, shared, *common, "--data.batch_size", str(rows // world))
    single_dir = tmp_path / "single"
    single = slurm_cluster.run(
        *ICG, "fit", "--config", str(TINY_STAGE1), *common, "--data.batch_size", str(rows),
        "--trainer.default_root_dir", str(single_dir), timeout=JOB_TIMEOUT_S, cwd=REPO,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    info = slurm_cluster.wait(job)
    assert info["JobState"] == "COMPLETED", _job_log(shared, job)[-3000:]
    ddp_dir = shared / "runs" / "stage1_preference"
    first = _state_dict(single_dir / "checkpoints" / "epoch=0-step=1.ckpt")
    for epoch in range(3):
        name = f"epoch={epoch}-step={epoch + 1}.ckpt"
        ours, theirs = _state_dict(single_dir / "checkpoints" / name), _state_dict(ddp_dir / "checkpoints" / name)
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            if value.is_floating_point():
                torch.testing.assert_close(theirs[key], value, atol=PARITY_ATOL, rtol=0, msg=f"{name} {key}")
    moved = max((ours[k] - first[k]).abs().max().item() for k in ours if ours[k].is_floating_point())
    assert moved > 1e-3  # the comparison is not between untouched weights


def test_sigusr1_saves_requeues_and_resumes(slurm_cluster: Cluster, synth_root: Path, tmp_path: Path) -> None:
    max_epochs, steps_per_epoch = 40, 5
    job = _stage1_job(  # the templates stack synced_requeue.yaml (SyncedSLURMRequeue) by default
        slurm_cluster, tmp_path,
        "--data.root", str(synth_root), "--trainer.max_epochs", str(max_epochs), "--trainer.limit_val_batches", "1",
    )  # fmt: skip
    run_dir = tmp_path / "runs" / "stage1_preference"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not list(run_dir.glob("checkpoints/*.ckpt")):  # first epoch done: training is under way on all ranks
        assert time.monotonic() < deadline, _job_log(tmp_path, job)[-3000:]
        assert slurm_cluster.job(job).get("JobState") in {"PENDING", "RUNNING"}, _job_log(tmp_path, job)[-3000:]
        time.sleep(0.5)
    signalled = time.monotonic()
    # what `#SBATCH --signal=SIGUSR1@90` does before the time limit: SIGUSR1 to every task of every step
    assert slurm_cluster.run("scancel", "--signal=USR1", job).returncode == 0
    info = slurm_cluster.wait(job)
    log = _job_log(tmp_path, job)
    sys.stderr.write(f"\npreempted job: signal to completion after requeue {time.monotonic() - signalled:.1f} s\n")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    saved_step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < saved_step < max_epochs * steps_per_epoch
    assert "restart 1 on" in log  # the sbatch script ran a second time
    assert f"Restored all states from the checkpoint at {hpc}" in log
    final = list(run_dir.glob("checkpoints/*.ckpt"))
    assert [p.name for p in final] == [f"epoch={max_epochs - 1}-step={max_epochs * steps_per_epoch}.ckpt"]


def test_stage2_sbatch_trains_on_all_ranks(
    slurm_cluster: Cluster, tiny_platform: Path, tiny_stage1_ckpt: Path, tmp_path: Path
) -> None:
    from icg.data.datamodule import ICGDataModule

    job = _stage_job(
        slurm_cluster, "stage2_rewards", tmp_path, *_csv_logger(tmp_path),
        "--data.root", str(tiny_platform), "--model.init_args.preference_ckpt", str(tiny_stage1_ckpt),
    )  # fmt: skip
    # steps: each rank gets ceil(items / world) training items in batches of 16, at most limit_train_batches=3
    data = ICGDataModule(root=tiny_platform, image_size=32)
    data.setup("fit")
    world = slurm_cluster.nodes * slurm_cluster.tasks_per_node
    steps = min(3, math.ceil(math.ceil(len(data.dataset("train", "items")) / world) / 16))
    _assert_stage_job(slurm_cluster, "stage2_rewards", "rewards", steps, tmp_path, job)
    metrics = _logged(tmp_path)
    # the epoch-end validation ran on both ranks (the AUC metrics all-gather across them) and logged finite values
    for key in ("val/relevance_auc/relevance", "val/preference_auc", "val/reward/preference"):
        assert len(metrics[key]) == 1 and math.isfinite(metrics[key][0]), (key, metrics.get(key))


def test_stage3_sbatch_trains_on_all_ranks(
    slurm_cluster: Cluster, tiny_platform: Path, tiny_stage1_ckpt: Path, tiny_stage2_ckpt: Path, tmp_path: Path
) -> None:
    job = _stage_job(
        slurm_cluster, "stage3_alignment", tmp_path, *_csv_logger(tmp_path),
        "--data.root", str(tiny_platform), "--model.init_args.preference_ckpt", str(tiny_stage1_ckpt),
        "--model.init_args.rewards_ckpt", str(tiny_stage2_ckpt),
        # validate after every step: the reward metrics are reduced across ranks (sync_dist) under DDP
        "--trainer.val_check_interval", "1",
    )  # fmt: skip
    _assert_stage_job(slurm_cluster, "stage3_alignment", "alignment", 2, tmp_path, job)  # tiny stage 3: max_steps 2
    metrics = _logged(tmp_path)
    assert len(metrics["val/reward/total"]) == 2 and all(map(math.isfinite, metrics["val/reward/total"])), metrics
    assert len(metrics["train/loss"]) == 2  # both steps back-propagated the rewards (none skipped as non-finite)


# ------------------------------------------------------------------------------------------------ icg generate
def _generate_job(cluster: Cluster, shared: Path, export: Path, pairs: Path, out: Path, *args: str) -> str:
    """Submit the shipped generate.sbatch (this checkout's code on every node); returns the job id."""
    env = {
        "ICG_SHARED_DIR": str(shared), "ICG_REPO": str(REPO), "ICG_GENERATE_OUT": str(out),
        "ICG_CMD": f"{sys.executable} -m icg.cli", "PYTHONPATH": str(REPO),
    }  # fmt: skip
    words = ["--export", str(export), "--pairs", str(pairs), "--batch_size", "2", *args]
    return cluster.sbatch(SBATCH_DIR / "generate.sbatch", *words, chdir=shared, env=env)


@pytest.fixture()
def generation_inputs(tiny_platform: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A tiny export (built from config, no training) and a pairs file of 13 clicks with titles and image paths."""
    from icg.data.schema import read_dataset
    from icg.generation import UserTable
    from tests.helpers.generation import write_tiny_export

    torch.manual_seed(1)
    export = write_tiny_export(
        tmp_path / "export", UserTable([f"u{i:04d}" for i in range(0, 30, 2)], torch.randn(16, 8))
    )
    items, interactions, _ = read_dataset(tiny_platform)
    pairs = interactions.sort_values(["timestamp", "user_id"]).head(13).merge(items, on="item_id")
    pairs["image"] = [str(tiny_platform / p) for p in pairs["image"]]
    pairs[["user_id", "item_id", "title", "image"]].to_csv(tmp_path / "pairs.csv", index=False)
    return export, tmp_path / "pairs.csv"


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_generate_sbatch_shards_pairs_over_both_nodes(
    slurm_cluster: Cluster, generation_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    from icg.commands.generate import generate
    from icg.cover_manifest import read_manifest

    export, pairs = generation_inputs
    shared = tmp_path / "shared"
    shared.mkdir()
    job = _generate_job(slurm_cluster, shared, export, pairs, shared / "covers")
    single = generate(str(export), str(pairs), str(tmp_path / "single"), batch_size=2, accelerator="cpu",
                      progress_bar=False)  # fmt: skip
    info = slurm_cluster.wait(job)
    log = _job_log(shared, job, "generate")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    world = slurm_cluster.nodes * slurm_cluster.tasks_per_node
    for rank in range(world):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{world}" in log, log[-3000:]
    assert "13 covers (13 made now, 0 kept from before)" in log, log[-3000:]
    ours, theirs = read_manifest(tmp_path / "single"), read_manifest(shared / "covers")
    assert single["covers"] == len(theirs) == 13 and not list((shared / "covers").glob("manifest.rank*"))
    assert [(e.user_id, e.item_id, e.extra["seed"]) for e in theirs] == [
        (e.user_id, e.item_id, e.extra["seed"]) for e in ours
    ]
    # Each rank batches other pairs together than one process does: equal to the last 8-bit level.
    diffs = [abs(_pixels(a.file) - _pixels(b.file)) for a, b in zip(ours, theirs, strict=True)]
    assert max(int(d.max()) for d in diffs) <= 1, [int(d.max()) for d in diffs]


def test_generate_sbatch_requeued_on_usr1_resumes_where_it_stopped(
    slurm_cluster: Cluster, tiny_platform: Path, generation_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    from icg.cover_manifest import read_manifest

    export, _ = generation_inputs
    pairs = tmp_path / "many.csv"
    from icg.data.schema import read_dataset

    items, interactions, _ = read_dataset(tiny_platform)
    many = interactions.head(120).merge(items, on="item_id")
    many["image"] = [str(tiny_platform / p) for p in many["image"]]
    many[["user_id", "item_id", "title", "image"]].to_csv(pairs, index=False)
    shared, out = tmp_path / "shared", tmp_path / "shared" / "covers"
    shared.mkdir()
    job = _generate_job(slurm_cluster, shared, export, pairs, out, "--batch_size", "1", "--num_steps", "12")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(list(out.glob("covers/*/*.png"))) < 10:  # under way on both ranks
        assert time.monotonic() < deadline, _job_log(shared, job, "generate")[-3000:]
        assert slurm_cluster.job(job).get("JobState") in {"PENDING", "RUNNING"}, _job_log(shared, job, "generate")
        time.sleep(0.5)
    # what `#SBATCH --signal=B:USR1@90` does before the time limit: USR1 to the batch shell only
    assert slurm_cluster.run("scancel", "--batch", "--signal=USR1", job).returncode == 0
    info = slurm_cluster.wait(job)
    log = _job_log(shared, job, "generate")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    assert "USR1: requeueing job" in log and "restart 1 on" in log, log[-3000:]
    kept = int(log.split(" made now, ")[-1].split(" kept from before")[0])
    assert kept >= 10, log[-3000:]  # the second start made only what the first had not
    sys.stderr.write(f"\ngenerate job requeued on USR1: {kept} of 120 covers kept from the first start\n")
    entries = read_manifest(out)
    assert len(entries) == 120 and len({(e.user_id, e.item_id) for e in entries}) == 120
    assert not list(out.rglob("*.tmp")) and not list(out.glob("manifest.rank*"))


def test_gpu_default_stops_in_one_line_on_a_cpu_cluster(slurm_cluster: Cluster, synth_root: Path, tmp_path: Path):
    """The templates' GPU fragment on nodes whose torch sees no GPU: every rank refuses before building anything."""
    started = time.monotonic()
    gpu = str(SBATCH_DIR / "trainer_ddp_gpu.yaml")
    job = _stage1_job(slurm_cluster, tmp_path, "--data.root", str(synth_root), env={"ICG_TRAINER_CONFIG": gpu})
    info = slurm_cluster.wait(job, timeout=180)
    log = _job_log(tmp_path, job)
    assert info["JobState"] == "FAILED", log[-3000:]
    refusals = [line for line in log.splitlines() if line.startswith("icg fit: trainer.accelerator: gpu")]
    assert refusals and all("sees none" in line for line in refusals), log[-3000:]
    assert "Traceback" not in log and not list((tmp_path / "runs").rglob("*.ckpt"))
    sys.stderr.write(f"\nGPU default on the CPU cluster: failed as expected in {time.monotonic() - started:.1f} s\n")

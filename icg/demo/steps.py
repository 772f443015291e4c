"""The demo's step runner: independent ``icg`` commands side by side, each in a one-thread subprocess.

The demo's fits are small (a 32-px diffusion model, a 64-wide Qwen2-VL, adapters of a few thousand parameters): a
second thread speeds one of them up far less than a second fit beside it does. So a ``Step`` with a ``command`` runs
as its own ``python -m icg.cli`` process pinned to one thread (``OMP_NUM_THREADS=1``), as soon as the steps it needs
(``after``) are done and one of ``workers`` (the machine's cores, at most 4) is free; its output goes to
``<log_dir>/<key>.log``. A step with a ``run`` function runs in this process, in its turn, on as many torch threads as
it takes workers. One thread per fit also makes each fit's result independent of the machine's core count (a
different thread count sums floats in another order and trains another model).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LAUNCH = (sys.executable, "-m", "icg.cli")  # + a step's command
LOG_TAIL_LINES = 30
MAX_WORKERS = 4


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Step:
    """One step of the demo.

    Args:
        key: its name for ``after`` and its log file.
        title: what it prints.
        command: ``icg`` words (``["fit", "--config", ...]``), run as a one-thread subprocess.
        run: or a function, run in this process.
        after: the keys of the steps it needs.
        threads: a function's torch threads, as many workers it takes (0: all, so it runs alone); fixed, so its
            figures do not depend on what else happens to run.
    """

    key: str
    title: str
    command: tuple[str, ...] = ()
    run: Callable[[], None] | None = None
    after: tuple[str, ...] = ()
    threads: int = 0

    def __post_init__(self) -> None:
        if bool(self.command) == (self.run is not None):
            raise ValueError(f"step {self.key!r}: give exactly one of command and run")


@dataclass
class _Running:
    step: Step
    number: int
    process: subprocess.Popen
    log: IO[str]
    began: float


def default_workers() -> int:
    """Commands at a time: this process's cores, at most 4 (the demo's widest point, its four stage-3 fits)."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def run_steps(steps: Sequence[Step], log_dir: Path, workers: int | None = None) -> None:
    """Run every step once its ``after`` steps are done, at most ``workers`` commands at a time (None:
    ``default_workers()``), in list order among the ready ones. A failing step stops the others and exits with its
    code after the tail of its log."""
    workers = workers or default_workers()
    keys = [s.key for s in steps]
    unknown = sorted({a for s in steps for a in s.after} - set(keys))
    if unknown or len(set(keys)) != len(keys):
        raise ValueError(f"steps: unknown 'after' {unknown} or a repeated key in {keys}")
    log_dir.mkdir(parents=True, exist_ok=True)
    numbers = {s.key: n for n, s in enumerate(steps, 1)}
    waiting, running, done = list(steps), [], set()
    try:
        while waiting or running:
            for entry in [r for r in running if r.process.poll() is not None]:
                running.remove(entry)
                _finish(entry, len(steps), log_dir)
                done.add(entry.step.key)
            ready = [s for s in waiting if set(s.after) <= done]
            if waiting and not ready and not running:
                raise ValueError(f"steps: {[s.key for s in waiting]} wait for steps that never run")
            for step in ready:
                threads = min(step.threads or workers, workers)
                if step.run is not None and len(running) + threads <= workers:  # here; what finishes meanwhile is
                    waiting.remove(step)  # collected next round
                    _run_here(step, numbers[step.key], len(steps), threads)
                    done.add(step.key)
                    break
                if step.run is None and len(running) < workers:
                    waiting.remove(step)
                    running.append(_start(step, numbers[step.key], len(steps), log_dir))
            else:
                time.sleep(0.2)
    finally:  # a failure (or Ctrl-C) leaves no fit running behind it
        for entry in running:
            entry.process.terminate()
            entry.process.wait()
            entry.log.close()


def _run_here(step: Step, number: int, total: int, threads: int) -> None:
    say(f"\n[{number}/{total}] {step.title}")
    began, before = time.time(), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step.run()
    finally:
        torch.set_num_threads(before)
    say(f"  done in {time.time() - began:.0f} s")


def _start(step: Step, number: int, total: int, log_dir: Path) -> _Running:
    log_path = log_dir / f"{step.key}.log"
    say(f"\n[{number}/{total}] {step.title}: started (one thread; log {log_path})")
    log = log_path.open("w")
    command = [*LAUNCH, *step.command]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | ONE_THREAD)
    return _Running(step, number, process, log, time.time())


def _finish(entry: _Running, total: int, log_dir: Path) -> None:
    entry.log.close()
    code = entry.process.returncode
    if code == 0:
        say(f"[{entry.number}/{total}] {entry.step.title}: done in {time.time() - entry.began:.0f} s")
        return
    log_path = log_dir / f"{entry.step.key}.log"
    tail = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    say(f"[{entry.number}/{total}] {entry.step.title}: failed (exit {code}); the end of {log_path}:")
    say("\n".join(f"  | {line}" for line in tail))
    raise SystemExit(code)

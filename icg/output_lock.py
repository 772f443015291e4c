"""One writer per output folder: a lock beside ``--out``, and what its holder may settle that a killed run left.

``icg generate``, ``icg export``, ``icg users fold-in`` and ``icg data convert``/``synth`` each write one output
folder; two runs into the same one (a SLURM requeue beside a cron run, two cron runs) would mix or delete each other's
files. Each takes :func:`output_lock` on ``--out`` first:

* The lock is the file ``.<name>.lock`` beside the folder, holding a JSON record of its holder (pid, host, start
  time, command, SLURM job). It is ``flock``-ed for the whole run, so the kernel frees it when the holder dies, and
  it is deleted on exit, exceptions included. A second run is refused in one line naming the holder
  (:class:`OutputLockedError`, a :class:`~icg.errors.UserError`: exit status 2).
* A record left by a dead holder is taken over with a warning: on the same host when its pid is gone; under SLURM
  when it is an earlier start of the same job (``$SLURM_JOB_ID``, lower ``$SLURM_RESTART_COUNT``: a requeue), even
  where the dead node's ``flock`` is still held. A record of another host is never taken over on a guess: the message
  says to delete the lock file once that run is known to be over.
* One run, many processes: only the launcher's rank 0 (:func:`is_lead_process`) takes the lock; the other ranks of
  the same DDP run write under it.

Holding the lock proves that no other icg run writes this folder, so its holder may settle what a killed run left
beside it (:func:`settle_leftovers`): a previous copy parked by an interrupted :func:`swap_into_place` is put back
(never deleted while it is the only copy), and temporary folders of killed writes are removed.

Layer: imports nothing from icg but :mod:`icg.errors`, so every command, the data commands included, can use it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from icg.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the record alone decides
    fcntl = None

log = logging.getLogger(__name__)

OLD_SUFFIX = ".old"
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK")  # torchrun, srun, Lightning
_HELD: dict[str, int] = {}  # lock path -> depth, in this process (a command and the writer it calls both lock)


class OutputLockedError(UserError, BlockingIOError):
    """Another run holds the output folder's lock; the message names it (pid, host, start time, command)."""


def lock_path(out: str | Path) -> Path:
    """``.<name>.lock`` beside the output folder (not inside it: a swap replaces the folder as a whole)."""
    out = Path(os.path.abspath(out))
    return out.with_name(f".{out.name}.lock")


def is_lead_process() -> bool:
    """Whether this process is rank 0 of its launch (or not launched as a rank at all).

    torchrun sets ``RANK``, ``srun`` sets ``SLURM_PROCID`` and Lightning's launcher gives its child processes
    ``LOCAL_RANK``/``NODE_RANK``: a process with any of them non-zero is another rank of a run whose rank 0 holds the
    lock.
    """
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


def holder_record(command: str) -> dict[str, Any]:
    """Who holds a lock: what a refused run prints, and what decides whether a lock is stale."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    }


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a run that is starting up (no record yet)"
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return (f"{holder.get('command', '?')!s} (pid {holder.get('pid')} on {holder.get('host')}{job}, started "
            f"{holder.get('started')})")  # fmt: skip


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _earlier_start_of_this_job(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """The holder is a previous start of this very SLURM job (requeued since): it is gone."""
    return (
        me["slurm_job_id"] is not None
        and holder.get("slurm_job_id") == me["slurm_job_id"]
        and int(holder.get("slurm_restart_count") or 0) < me["slurm_restart_count"]
    )


def _stale(holder: dict[str, Any], me: dict[str, Any], flocked: bool = False) -> str | None:
    """Why a holder is known to be dead, or None when it may be alive.

    ``flocked``: this process got the lock file's ``flock``, which a live holder on this host would still hold (its
    pid, if alive, is another process's now).
    """
    if _earlier_start_of_this_job(holder, me):
        return f"an earlier start of SLURM job {me['slurm_job_id']}, requeued since"
    if holder.get("host") == me["host"] and not _pid_alive(holder.get("pid")):
        return f"process {holder.get('pid')} is gone"
    if holder.get("host") == me["host"] and flocked:
        return f"its flock is free: process {holder.get('pid')} is not the holder any more"
    return None


class OutputLock:
    """The lock of one output folder (see the module docstring); use :func:`output_lock`.

    Args:
        out: the output folder.
        command: what holds it, as a user would recognise it (e.g. ``icg generate``).
    """

    def __init__(self, out: str | Path, command: str) -> None:
        self.out = Path(out)
        self.path = lock_path(out)
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        me = holder_record(self.command)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # only a lock file deleted between our open and flock makes us go round again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked, flocked = self._flock(fd)
                holder = self._read(fd)
                if locked and not self._same_file(fd):  # released (deleted) by its holder meanwhile
                    os.close(fd)
                    continue
                if not locked:
                    if holder is not None and _earlier_start_of_this_job(holder, me):
                        # the dead node's flock may outlive it: break the lock, take a fresh file
                        log.warning("%s: taking over the lock of %s: %s", self.out, describe(holder),
                                    _stale(holder, me))  # fmt: skip
                        self.path.unlink(missing_ok=True)
                        os.close(fd)
                        continue
                    raise OutputLockedError(
                        f"{self.out}: another run writes this folder: {describe(holder)}; wait for it to finish or "
                        f"choose another output folder (its lock: {self.path})"
                    )
                if holder is not None:
                    why = _stale(holder, me, flocked)
                    if why is None:  # free to flock, but the holder may live on another host: do not guess
                        raise OutputLockedError(
                            f"{self.out}: locked by {describe(holder)}, which this host cannot see; if that run is "
                            f"over, delete {self.path} and run again"
                        )
                    log.warning("%s: taking over the stale lock of %s (%s)", self.out, describe(holder), why)
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
                os.fsync(fd)
            except BaseException:
                if self._fd != fd:
                    os.close(fd)
                raise
            self._fd = fd
            return
        raise OutputLockedError(f"{self.out}: its lock {self.path} keeps changing hands; another run is starting here")

    @staticmethod
    def _flock(fd: int) -> tuple[bool, bool]:
        """(free to take, taken by ``flock``); without ``flock`` the record alone decides."""
        if fcntl is None:
            return True, False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False, False
        except OSError as err:  # a file system without flock
            if err.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                return True, False
            raise
        return True, True

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _read(fd: int) -> dict[str, Any] | None:
        for attempt in range(5):  # the holder may be between its flock and its record
            data = os.pread(fd, 1 << 16, 0)
            try:
                holder = json.loads(data)
                return holder if isinstance(holder, dict) else None
            except ValueError:
                if not data:
                    return None
                time.sleep(0.05 * (attempt + 1))
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still flocked: no one else can have taken it meanwhile
        finally:
            os.close(self._fd)
            self._fd = None


@contextmanager
def output_lock(out: str | Path, command: str, lead: bool = True) -> Iterator[OutputLock | None]:
    """Hold the lock of output folder ``out`` for the ``with`` block (released on any exit).

    Args:
        out: the output folder.
        command: what holds it, shown to a refused run (e.g. ``icg export``).
        lead: whether this process takes the lock; False for the other ranks of a run whose rank 0 holds it.

    Raises:
        OutputLockedError: another live run holds it.
    """
    key = str(lock_path(out))
    if not lead:
        yield None
        return
    if key in _HELD:  # already ours (a command, then the writer it calls)
        _HELD[key] += 1
        try:
            yield None
        finally:
            _HELD[key] -= 1
        return
    lock = OutputLock(out, command)
    lock.acquire()
    _HELD[key] = 1
    try:
        yield lock
    finally:
        del _HELD[key]
        lock.release()


def holds_lock(out: str | Path) -> bool:
    """Whether this process holds the lock of ``out`` (what :func:`settle_leftovers` requires)."""
    return str(lock_path(out)) in _HELD


# ------------------------------------------------------------------------------------------------ under the lock
def old_copy(target: str | Path) -> Path:
    """Where :func:`swap_into_place` parks the previous ``target`` until the new one is in place."""
    target = Path(target)
    return target.with_name(f".{target.name}{OLD_SUFFIX}")


def settle_leftovers(target: str | Path, temp_globs: Sequence[str]) -> None:
    """Put back what a killed run left beside ``target``; call it holding ``target``'s lock.

    * A previous copy parked by an interrupted swap (``.<name>.old``): moved back to ``target`` when ``target`` is
      missing (the kill came between the two renames), deleted when the new ``target`` is in place (the kill came
      during the clean-up). Either way one line says what happened and where.
    * Temporary folders of killed writes (``temp_globs``, e.g. ``.<name>.*.tmp``): removed. They are ours by name and
      stale: no other run holds the lock.

    Args:
        target: the output folder.
        temp_globs: patterns of the temporary folders the command makes beside ``target``.
    """
    target = Path(target)
    if not holds_lock(target):
        raise RuntimeError(f"settle_leftovers({target}) without holding its lock")
    old = old_copy(target)
    if old.is_dir() or old.is_symlink():
        if not target.exists():
            os.replace(old, target)
            log.warning("%s: put back the previous copy, which an interrupted --overwrite had left in %s", target, old)
        else:
            shutil.rmtree(old)
            log.warning("%s: removed %s, the previous copy an interrupted --overwrite had replaced already", target,
                        old)  # fmt: skip
    removed = []
    for pattern in temp_globs:
        for path in target.parent.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                removed.append(path.name)
    if removed:
        log.warning("%s: removed %d temporary folder(s) of a killed run beside it: %s", target, len(removed),
                    ", ".join(sorted(removed)))  # fmt: skip


def swap_into_place(tmp: str | Path, target: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``target``; a previous ``target`` is kept until the new one is in place.

    The previous copy is renamed to ``.<name>.old`` first and deleted only after ``tmp`` is renamed to ``target``.
    If the second rename fails, the previous copy goes back; if the process is killed between the renames, the next
    run (holding the lock) puts it back (:func:`settle_leftovers`). The only copy is never deleted.
    """
    tmp, target = Path(tmp), Path(target)
    if not target.exists():
        os.replace(tmp, target)
        return
    old = old_copy(target)
    if old.exists():  # settle_leftovers ran first; anything here now is not ours to delete
        raise UserError(f"{target}: {old} is in the way of replacing it (a previous copy); move it away and rerun")
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
        os.replace(tmp, target)
        return
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old)

"""One writer per output folder (``icg.output_lock``): refusal naming the holder, stale locks taken over, the swap
that keeps the previous copy, and a full disk as one line (issue 23)."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from icg.errors import DiskFullError, disk_full_is_a_user_error
from icg.output_lock import (
    OutputLock,
    OutputLockedError,
    is_lead_process,
    lock_path,
    old_copy,
    output_lock,
    settle_leftovers,
    swap_into_place,
)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_record(out: Path, **fields) -> Path:
    record = {"pid": dead_pid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
              "command": "icg generate", "slurm_job_id": None, "slurm_restart_count": 0, **fields}  # fmt: skip
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_goes_on_exit(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "icg generate") as lock:
        record = json.loads(lock_path(out).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "icg generate"
        with pytest.raises(OutputLockedError) as refused:  # as another process would: a new file description
            OutputLock(out, "icg export").acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message and "icg generate" in message
        assert record["started"] in message and "\n" not in message
        assert lock.path.exists()
    assert not lock_path(out).exists()  # released
    with pytest.raises(RuntimeError, match="boom"), output_lock(out, "icg generate"):
        raise RuntimeError("boom")
    assert not lock_path(out).exists()  # released on an exception too


def test_the_same_process_re_enters_and_other_ranks_do_not_lock(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with output_lock(out, "icg export"), output_lock(out, "icg export"):  # a command, then the writer it calls
        assert lock_path(out).exists()
    assert not lock_path(out).exists()
    for name, value, lead in (("LOCAL_RANK", "1", False), ("SLURM_PROCID", "3", False), ("RANK", "0", True)):
        monkeypatch.setenv(name, value)
        assert is_lead_process() is lead
        monkeypatch.delenv(name)
    with output_lock(out, "icg generate", lead=False) as lock:
        assert lock is None and not lock_path(out).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    gone = write_record(out)
    pid = json.loads(gone.read_text())["pid"]
    with caplog.at_level(logging.WARNING, "icg.output_lock"), output_lock(out, "icg generate"):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert "taking over the stale lock" in caplog.text and f"process {pid} is gone" in caplog.text
    assert not lock_path(out).exists()


def test_a_record_whose_flock_is_free_on_this_host_is_stale_even_if_its_pid_was_reused(tmp_path, caplog):
    out = tmp_path / "out"
    write_record(out, pid=os.getppid())  # alive, but not holding the lock: the pid belongs to another process now
    with caplog.at_level(logging.WARNING, "icg.output_lock"), output_lock(out, "icg generate"):
        pass
    assert f"its flock is free: process {os.getppid()} is not the holder any more" in caplog.text


def test_a_lock_of_another_host_is_not_guessed_at(tmp_path):
    out = tmp_path / "out"
    write_record(out, host="node-elsewhere", pid=12345)
    with pytest.raises(OutputLockedError, match=f"node-elsewhere.*if that run is over, delete {lock_path(out)}"):
        with output_lock(out, "icg generate"):
            pass
    assert lock_path(out).exists()  # left for the user to judge


def test_a_requeued_slurm_job_takes_over_its_earlier_start_even_while_flocked(tmp_path, monkeypatch, caplog):
    import fcntl

    out = tmp_path / "out"
    path = write_record(out, host="node-7", pid=4242, slurm_job_id="991", slurm_restart_count=0)
    held = os.open(path, os.O_RDWR)  # the dead node's flock, not yet released by the file system
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "992")  # another job: refused
        with pytest.raises(OutputLockedError, match="SLURM job 991"), output_lock(out, "icg generate"):
            pass
        monkeypatch.setenv("SLURM_JOB_ID", "991")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same start (another step of the job): refused
        with pytest.raises(OutputLockedError), output_lock(out, "icg generate"):
            pass
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: its earlier start is gone
        with caplog.at_level(logging.WARNING, "icg.output_lock"), output_lock(out, "icg generate"):
            record = json.loads(lock_path(out).read_text())
            assert record["pid"] == os.getpid() and record["slurm_restart_count"] == 1
        assert "earlier start of SLURM job 991" in caplog.text
    finally:
        os.close(held)


# ------------------------------------------------------------------------------------------------ the swap
def folder_with(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "file.txt").write_text(text)
    return path


def test_a_failed_second_rename_puts_the_previous_copy_back(tmp_path, monkeypatch):
    target, new = folder_with(tmp_path / "export", "old"), folder_with(tmp_path / ".export.x.tmp", "new")
    real = os.replace

    def second_rename_fails(src, dst):
        if Path(src) == new:
            raise OSError(errno.EIO, "I/O error", str(dst))
        real(src, dst)

    monkeypatch.setattr("icg.output_lock.os.replace", second_rename_fails)
    with pytest.raises(OSError, match="I/O error"):
        swap_into_place(new, target)
    assert (target / "file.txt").read_text() == "old" and not old_copy(target).exists()


def test_a_kill_between_the_renames_is_settled_by_the_next_writer(tmp_path, caplog):
    target = tmp_path / "export"
    folder_with(old_copy(target), "previous")  # the state a kill between the two renames leaves
    folder_with(tmp_path / ".export.abc123.tmp", "half")  # and the killed run's temporary folder
    folder_with(tmp_path / ".other.abc123.tmp", "not ours")
    with pytest.raises(RuntimeError, match="without holding its lock"):
        settle_leftovers(target, [".export.*.tmp"])
    with caplog.at_level(logging.WARNING, "icg.output_lock"), output_lock(target, "icg export"):
        settle_leftovers(target, [".export.*.tmp"])
    assert (target / "file.txt").read_text() == "previous" and not old_copy(target).exists()
    assert f"put back the previous copy, which an interrupted --overwrite had left in {old_copy(target)}" in caplog.text
    assert "removed 1 temporary folder(s) of a killed run beside it: .export.abc123.tmp" in caplog.text
    assert not (tmp_path / ".export.abc123.tmp").exists() and (tmp_path / ".other.abc123.tmp").is_dir()
    # killed after the new copy was in place: the previous one is superseded and goes
    folder_with(old_copy(target), "older")
    with output_lock(target, "icg export"):
        settle_leftovers(target, [".export.*.tmp"])
    assert (target / "file.txt").read_text() == "previous" and not old_copy(target).exists()


# ------------------------------------------------------------------------------------------------ a full disk
def test_a_full_disk_is_one_line_naming_path_and_space(tmp_path):
    with pytest.raises(DiskFullError) as full, disk_full_is_a_user_error(tmp_path, lambda: 3 * 1024**2):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.png"))
    message = str(full.value)
    assert message.startswith(f"{tmp_path / 'a.png'}: no space left on device (it needed about 3.0 MiB more, ")
    assert "is free there" in message and "\n" not in message
    from safetensors import SafetensorError

    with pytest.raises(DiskFullError, match=f"^{tmp_path}: no space left"), disk_full_is_a_user_error(tmp_path):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'
        )
    with pytest.raises(OSError, match="Permission"), disk_full_is_a_user_error(tmp_path):  # other errors pass
        raise PermissionError(errno.EACCES, "Permission denied")

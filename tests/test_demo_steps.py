"""The demo's step runner (icg.demo.steps): order by `after`, one thread per command, a failure stops the rest."""

import os
import sys
import time

import pytest
import torch

from icg.demo import steps
from icg.demo.steps import Step, run_steps

# A stand-in for `python -m icg.cli`: each command is "<name> <seconds> <exit code>"; it records its thread setting
# and pid, sleeps, then writes <name>.done and exits with the code (printing a last line when it fails).
FAKE_CLI = """
import os, sys, time
name, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
open(name + ".pid", "w").write(str(os.getpid()))
open(name + ".threads", "w").write(os.environ.get("OMP_NUM_THREADS", "unset"))
time.sleep(seconds)
if code:
    print("first line"); print(f"{name}: bad value 42"); sys.exit(code)
open(name + ".done", "w").write("")
"""


@pytest.fixture
def fake_cli(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(steps, "LAUNCH", (sys.executable, "-c", FAKE_CLI))
    return tmp_path


def test_steps_wait_for_what_they_need_and_commands_run_on_one_thread(fake_cli):
    seen = {}

    def check_here():
        seen["a done"] = (fake_cli / "a.done").exists()
        seen["b done"] = (fake_cli / "b.done").exists()
        seen["threads"] = torch.get_num_threads()

    before = torch.get_num_threads()
    run_steps(
        [
            Step("a", "a", ("a", "0.2", "0")),
            Step("b", "b", ("b", "0.2", "0")),
            Step("here", "here", run=check_here, after=("a",), threads=1),
            Step("c", "c", ("c", "0", "0"), after=("here", "b")),
        ],
        fake_cli / "logs",
        workers=2,
    )
    assert seen["a done"] and seen["threads"] == 1
    assert torch.get_num_threads() == before  # the function's thread count is restored
    assert all((fake_cli / f"{n}.done").exists() for n in "abc")
    assert {(fake_cli / f"{n}.threads").read_text() for n in "abc"} == {"1"}
    assert (fake_cli / "logs" / "a.log").exists()


def test_a_failing_command_stops_the_others_and_shows_the_end_of_its_log(fake_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_steps([Step("slow", "slow", ("slow", "60", "0")), Step("bad", "bad", ("bad", "0.5", "3"))],
                  fake_cli / "logs", workers=2)  # fmt: skip
    assert exit_info.value.code == 3
    out = capsys.readouterr().out
    assert "bad: failed (exit 3)" in out and "bad: bad value 42" in out
    slow = int((fake_cli / "slow.pid").read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped, not left running
        os.kill(slow, 0)
    assert not (fake_cli / "slow.done").exists()


def test_a_step_that_can_never_run_is_an_error_not_a_hang(fake_cli):
    start = time.time()
    with pytest.raises(ValueError, match="unknown 'after'"):
        run_steps([Step("a", "a", ("a", "0", "0"), after=("nothing",))], fake_cli / "logs")
    with pytest.raises(ValueError, match="never run"):
        run_steps([Step("a", "a", run=lambda: None, after=("b",)), Step("b", "b", run=lambda: None, after=("a",))],
                  fake_cli / "logs")  # fmt: skip
    with pytest.raises(ValueError, match="exactly one of command and run"):
        Step("a", "a", ("x",), run=lambda: None)
    assert time.time() - start < 30

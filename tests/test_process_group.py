"""icg/process_group.py: a gloo process group left open is destroyed at interpreter exit, before C++ teardown."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import atexit, socket, torch.distributed as dist
import icg  # registers the exit hook
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
assert dist.is_initialized()
atexit._run_exitfuncs()
print("open after exit hooks:", dist.is_initialized())
"""


def test_exit_hooks_destroy_an_open_process_group():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "open after exit hooks: False" in done.stdout


def test_the_hook_is_a_no_op_without_torch_distributed():
    probe = "import sys, icg.process_group as p; p.destroy_at_exit(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # importing icg never pulls torch in, nor does the hook

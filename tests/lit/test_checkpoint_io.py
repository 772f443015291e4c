"""A process that dies while writing a checkpoint leaves the previous checkpoint loadable."""

import torch

from icg import ckpt
from icg.lit.checkpoint_io import AtomicCheckpointIO


class Killed(BaseException):
    """Stands in for SIGKILL arriving mid-write (BaseException: nothing in the writer may swallow it)."""


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def torn_save(obj, target, *args, **kwargs):
        with open(target, "wb") as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise Killed

    monkeypatch.setattr(ckpt.torch, "save", torn_save)
    try:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    except Killed:
        pass
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "temporary file left behind"


def test_the_cli_trainer_writes_through_it(tiny_platform, tmp_path):
    from icg.cli import ICGLightningCLI
    from tests.helpers.cli import TINY

    cli = ICGLightningCLI(["--config", str(TINY / "stage1_preference.yaml"), "--data.root", str(tiny_platform),
                           "--trainer.default_root_dir", str(tmp_path)], run=False)  # fmt: skip
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)

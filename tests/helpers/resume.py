"""Resume checks: a run resumed from its checkpoint ends exactly as an uninterrupted one."""

import torch

from tests.helpers.cli import TINY, run_cli


def fit(config, tmp, epochs, *extra, ckpt=None):
    """``icg fit`` of the tiny ``config``, ``epochs`` epochs of 2 batches (resumed from ``ckpt``): the newest ckpt."""
    words = ["fit", "--config", TINY / config, "--trainer.default_root_dir", tmp, "--trainer.max_epochs", epochs,
             "--trainer.limit_train_batches", "2", *extra]  # fmt: skip
    if ckpt is not None:
        words += ["--ckpt_path", ckpt]
    run_cli(*words)
    found = sorted(tmp.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1]


def assert_same_weights(a, b):
    """Two checkpoints hold bit-identical state dicts."""
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def resumed_equals_uninterrupted(config, tmp_path, *extra):
    """A 2-epoch fit and a 1-epoch fit resumed to 2 end with the same step and weights: the resumed checkpoint."""
    straight = fit(config, tmp_path / "straight", "2", *extra)
    first = fit(config, tmp_path / "first", "1", *extra)
    resumed = fit(config, tmp_path / "resumed", "2", *extra, ckpt=first)
    steps = [torch.load(path, weights_only=True)["global_step"] for path in (straight, resumed)]
    assert steps[0] == steps[1] > 0
    assert_same_weights(straight, resumed)
    return resumed

"""The one logging set-up: unactionable noise is silenced, everything else still reaches the user."""

import logging
import warnings

from lightning.fabric.utilities.warnings import PossibleUserWarning

from icg.console import UNACTIONABLE_WARNINGS, silence_unactionable


def test_unactionable_warnings_are_silenced_and_others_are_not():
    sent = [
        ("Found 4 module(s) in eval mode at the start of training. This may", PossibleUserWarning),
        ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning),
        ("You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.", UserWarning),
        ("The dataloader does not have many workers which may be a bottleneck.", PossibleUserWarning),
        ("Found 4 module(s) in eval mode", DeprecationWarning),  # another category: kept
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_unactionable()
        for message, category in sent:
            warnings.warn(message, category, stacklevel=1)
    assert [str(w.message)[:30] for w in caught] == [
        "The dataloader does not have m",
        "Found 4 module(s) in eval mode",
    ]
    assert all(why for _, _, why in UNACTIONABLE_WARNINGS)  # each silenced warning says why


def test_lightning_tips_are_dropped_but_its_other_lines_kept(caplog):
    silence_unactionable()
    silence_unactionable()  # idempotent: one filter
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert len(log.filters) == 1
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]

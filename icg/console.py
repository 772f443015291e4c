"""What a person sees on the terminal: the one logging set-up of every ``icg`` command.

Every command (``icg fit``, ``icg generate``, ``icg data ...``, the demo) calls :func:`setup_console` once, through
``icg.cli.main``. It sets one format for icg's log lines and silences, each with its reason, the messages a user
cannot act on: Lightning's advertisements, a deprecation inside Lightning itself, and a warning about frozen modules
that are in eval mode on purpose. Warnings that point at something a user *can* change are left alone.
"""

from __future__ import annotations

import logging
import warnings

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

# (message regex, category, why a user cannot act on it); matched at the start of the warning's text
UNACTIONABLE_WARNINGS = (
    (
        r".*isinstance\(treespec, LeafSpec\)",
        FutureWarning,
        "Lightning 2.6's own pytree helper uses an API torch 2.13 deprecates; nothing in icg or a config calls it",
    ),
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        UserWarning,
        "the frozen parts (MLLM, base model, rewards, stage-1 towers) are in eval mode by design (icg.ckpt.freeze)",
    ),
    (
        r"You passed in a `val_dataloader` but have no `validation_step`",
        UserWarning,
        "the one shared DataModule serves every stage; the demo's stand-in base model has no validation of its own",
    ),
    (
        r"LightningCLI's args parameter is intended to run from within Python",
        UserWarning,
        "icg.cli.main(args) is how the demo and tests run the exact CLI path in-process; the words are the args",
    ),
)
# Lightning's rank-zero loggers print product tips ("💡 Tip: ... try installing litlogger") on every fit
_ADVERTS = ("💡 Tip:",)
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERTS)


def silence_unactionable() -> None:
    """Silence the warnings and log lines in ``UNACTIONABLE_WARNINGS`` / ``_ADVERTS``; idempotent."""
    for message, category, _why in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in _RANK_ZERO_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in log.filters):
            log.addFilter(_DropAdverts())


def setup_console(level: int = logging.INFO) -> None:
    """The one logging set-up: log lines as ``LEVEL name: message`` from ``level`` up, unactionable noise silenced.

    Args:
        level: the lowest level of log lines that is shown (``logging.INFO`` by default; commands whose
            progress is a bar, such as ``icg generate``, pass ``logging.WARNING``).
    """
    logging.basicConfig(level=level, format=LOG_FORMAT)
    silence_unactionable()

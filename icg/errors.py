"""The one family of errors that are the user's to fix: a bad config value, file, row or checkpoint.

``icg``'s entry points print such an error as one line (the config key, file or row, the bad value and what to do)
and exit non-zero; a traceback is kept for bugs, or shown on request (``--debug`` / ``ICG_DEBUG=1``). Library code
raises a subclass of :class:`UserError` (often also a builtin such as ``ValueError`` so callers can keep catching
that) whenever the message alone tells the user what to change.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input or settings; its message names what to change."""


class RunFolderError(UserError, FileExistsError):
    """A training run would write into a folder that already holds another run's checkpoints."""

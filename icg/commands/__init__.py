"""The ``icg`` commands that are not Lightning's: one module per command group, each with ``run(words) -> int``.

``icg.cli`` holds the one table (``COMMANDS``) that maps a command's first word to its module here and to the logging
level it runs at; it imports the module only when that command runs (what a command needs, diffusers or the web stack,
is slow to import), so this package imports none of them. The modules:

- ``data``: ``icg data synth|validate|stats|convert`` (argparse: its dashed flags and value-less switches)
- ``export``: ``icg export``, a stage-3 checkpoint as one folder for generation
- ``generate``: ``icg generate``, a cover per pair of a pairs file on Lightning's predict loop
- ``users``: ``icg users fold-in``, users without a stage-1 embedding added to an export
- ``evaluate``: ``icg evaluate``, the paper's axes from checkpoint paths
- ``study``: ``icg study serve|results|simulate`` (argparse: its optional positional RUN)
- ``explore``: ``icg explore``, the interactive cover viewer
- ``serve``: ``icg serve``, the cover service (which cover of a pool to show a user for an item)

The non-argparse ones are jsonargparse's ``CLI`` over one documented function, whose docstring is the ``--help``.
Layer: above ``icg.serving``, ``icg.explore`` and everything below them; only ``icg.cli`` (and ``python -m`` entry
scripts) import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def call(function: Callable[..., Any], words: list[str], prog: str) -> Any:
    """``function`` called with the options ``words`` give, parsed by jsonargparse from its signature and docstring.

    Every option is a ``--name`` (``as_positional=False``); a parser error (unknown option, wrong type, missing
    required option) is one :class:`icg.errors.ArgumentsError` line that ``icg.cli.main`` prints with exit status 2
    (``--debug``: the parser's whole message); ``--help`` prints and exits 0.

    Args:
        function: the command's documented function.
        words: the words after the command's name.
        prog: the command as typed (``icg generate``), shown in ``--help``.
    """
    from jsonargparse import CLI, ArgumentParser

    from icg.errors import ShortParserErrors

    class Parser(ShortParserErrors, ArgumentParser):
        """jsonargparse's parser with one-line errors."""

    return CLI(function, args=words, as_positional=False, parser_class=Parser, prog=prog)


def run_server(function: Callable[..., int], words: list[str], prog: str) -> int:
    """Run a command that serves until Ctrl-C (``icg explore``, ``icg serve``) through :func:`call`; returns the exit
    status: its own, 0 after ``--help``, 2 after a user error (printed as one line, ``prog: message``; ``ICG_DEBUG=1``
    raises it), 130 after Ctrl-C."""
    import os
    import sys

    from icg.errors import UserError

    try:
        return call(function, words, prog)
    except SystemExit as exit_:  # --help (and, with --debug, the parser's full message): already printed
        return int(exit_.code or 0)
    except UserError as err:
        if os.environ.get("ICG_DEBUG") == "1":
            raise
        sys.stderr.write(f"{prog}: {err}\n")
        return 2
    except KeyboardInterrupt:
        return 130

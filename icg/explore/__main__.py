"""``python -m icg.explore ...`` = ``icg explore ...`` without loading Lightning.

An entry script, not a module anything imports: it runs the ``icg explore`` command (``icg.commands.explore``) with
the logging set-up ``icg.cli.main`` gives it.
"""

import logging
import sys

from icg.commands.explore import run
from icg.console import setup_console

setup_console(logging.INFO)
raise SystemExit(run(sys.argv[1:]))

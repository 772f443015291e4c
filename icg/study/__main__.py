"""``python -m icg.study serve|results|simulate ...``: ``icg study`` without loading Lightning.

An entry script, not a module anything imports: it runs the ``icg study`` command (``icg.commands.study``) with the
logging set-up ``icg.cli.main`` gives it.
"""

import logging
import sys

from icg.commands.study import run
from icg.console import setup_console

setup_console(logging.INFO)
raise SystemExit(run(sys.argv[1:]))

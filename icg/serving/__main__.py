"""``python -m icg.serving --pool DIR ...`` = ``icg serve ...`` without loading Lightning or torch.

An entry script, not a module anything imports: it runs the ``icg serve`` command (``icg.commands.serve``) with the
logging set-up ``icg.cli.main`` gives it. A service starts in about a second this way and holds no torch in memory
(``--export`` still loads icg's generation code to fingerprint the export).
"""

import logging
import sys

from icg.commands.serve import run
from icg.console import setup_console

setup_console(logging.INFO)
raise SystemExit(run(sys.argv[1:]))

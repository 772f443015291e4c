"""``python -m icg.explore ...`` = ``icg explore ...`` without loading Lightning."""

import sys

from icg.explore.commands import run_explore_command

raise SystemExit(run_explore_command(sys.argv[1:]))

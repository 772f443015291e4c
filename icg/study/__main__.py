"""``python -m icg.study serve|results|simulate ...``: ``icg study`` without loading Lightning."""

import sys

from icg.study.commands import run_study_command

raise SystemExit(run_study_command(sys.argv[1:]))

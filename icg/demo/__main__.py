"""``python -m icg.demo [--seed N | --seeds 0 1 2] [--check] [--quick]`` (``make demo``, ``make demo-check``,
``make demo-seeds``)."""

from __future__ import annotations

import argparse
import logging

from icg.console import setup_console
from icg.demo.claims import claims, say_claims
from icg.demo.pipeline import run_pipeline
from icg.demo.seeds import run_seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icg.demo", description="the whole ICG pipeline on the demo")
    parser.add_argument("--quick", action="store_true", help="short stage-1/2 and MLLM fits (a smoke run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the platform and of every stage")
    parser.add_argument("--seeds", type=int, nargs="+", help="run the whole pipeline once per seed, then the table")
    parser.add_argument("--check", action="store_true", help="exit 1 when one of the demo's claims breaks")
    args = parser.parse_args(argv)
    setup_console(logging.WARNING)  # the demo prints its own progress; its commands' INFO lines would drown it
    if args.seeds:
        return run_seeds(args.seeds, args.quick)
    report = run_pipeline(args.seed, args.quick)
    hold = say_claims(claims(report))
    return 1 if args.check and not hold else 0


if __name__ == "__main__":
    raise SystemExit(main())

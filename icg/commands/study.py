"""``icg study serve|results|simulate``: the blind pairwise study of ICG's covers (Bian et al., EMNLP 2025).

``icg/cli.py`` hands every ``icg study ...`` invocation to :func:`run`; ``python -m icg.study`` does the same
without loading Lightning. A user error (bad manifest, another study's database, a port in use, ...) is
one line on stderr and exit status 2; ``ICG_DEBUG=1`` shows the traceback instead. docs/study.md is the manual.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from icg.data.schema import DatasetFormatError
from icg.errors import UserError
from icg.study.screens import load_study


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icg study", description="Blind pairwise study of covers (docs/study.md).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,results,simulate}")

    def study_arguments(p: argparse.ArgumentParser, run_required: bool = True) -> None:
        p.add_argument(
            "run",
            type=Path,
            nargs=None if run_required else "?",
            help="an `icg evaluate` output folder (its covers/manifest.jsonl) or a cover manifest file",
        )
        p.add_argument("--data_root", required=True, type=Path, help="the dataset the covers were made for")
        p.add_argument("--db", type=Path, required=run_required, help="the study's SQLite database (created if new)")
        p.add_argument("--seed", type=int, default=0, help="seed of the raters' orders and left/right sides")
        p.add_argument("--pairs_per_rater", type=int, default=None, help="screens per rater (default: all)")

    serve = commands.add_parser("serve", help="run the study as a local web app")
    study_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--allowed_hosts",
        default="",
        help="more host names the server answers to, comma-separated (loopback and --host always are)",
    )
    serve.add_argument("--history", type=int, default=8, help="recent clicks shown per user")

    results = commands.add_parser("results", help="win rates and Bradley-Terry scores of a study database")
    results.add_argument("db", type=Path, help="the study database")
    results.add_argument("--out", type=Path, default=None, help="folder for study_results.{json,md} (default: db's)")
    results.add_argument("--bootstrap", type=int, default=2000, help="rater resamples for the CIs")
    results.add_argument("--confidence", type=float, default=0.95, help="two-sided CI level")
    results.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    simulate = commands.add_parser("simulate", help="simulated raters answer from the synthetic platform's oracle")
    study_arguments(simulate, run_required=False)
    simulate.add_argument("--url", default=None, help="answer through a running `icg study serve` instead of --db")
    simulate.add_argument("--raters", type=int, default=20, help="number of simulated raters")
    simulate.add_argument("--temperature", type=float, default=0.05, help="logistic noise on the P(click) difference")
    simulate.add_argument("--no_preference_band", type=float, default=0.01, help="|difference| below: no preference")
    simulate.add_argument("--noise_seed", type=int, default=0, help="seed of the raters' noise")
    return parser


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"--{name} must be positive, got {value}")


def _serve(args: argparse.Namespace) -> int:
    from icg.study.app import create_app
    from icg.study.guard import parse_allowed_hosts
    from icg.study.server import bind, serve_until_stopped, url_of

    _positive("history", args.history)
    sock = bind(args.host, args.port)  # a port in use fails before anything is created
    try:
        study = load_study(args.run, args.data_root, args.db, args.seed, args.pairs_per_rater, args.history)
    except BaseException:
        sock.close()
        raise
    url = url_of(sock)
    design = study.design
    sys.stdout.write(
        f"icg study: {len(design.comparisons)} comparisons of {len(design.methods)} methods, {study.screens} screens "
        f"per rater; answers go to {args.db} ({study.store.answer_count()} so far)\n"
        f"open {url}/ -- or hand each rater {url}/?rater=NAME; Ctrl-C stops (every answer is already saved)\n"
    )  # cli-output
    sys.stdout.flush()
    app = create_app(study, host=args.host, allowed_hosts=parse_allowed_hosts(args.allowed_hosts))
    serve_until_stopped(app, sock)
    return 0


def _results(args: argparse.Namespace) -> int:
    from icg.study.results import format_results, study_results, write_results

    _positive("bootstrap", args.bootstrap)
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    results = study_results(args.db, bootstrap_samples=args.bootstrap, confidence=args.confidence, seed=args.seed)
    files = write_results(results, args.out or args.db.parent)
    sys.stdout.write(format_results(results) + f"\nwrote {files['markdown']} and {files['json']}\n")  # cli-output
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from icg.study.simulate import OracleJudge, RaterModel, simulate_over_http, simulate_study

    _positive("raters", args.raters)
    if args.temperature < 0 or args.no_preference_band < 0:
        raise UserError("--temperature and --no_preference_band must be >= 0")
    model = RaterModel(args.temperature, args.no_preference_band)
    judge = OracleJudge(args.data_root)
    if args.url:
        stored = simulate_over_http(args.url, judge, args.raters, model=model, seed=args.noise_seed)
        where = args.url
    else:
        if args.run is None or args.db is None:
            raise UserError(
                "icg study simulate: give RUN and --db (answers into a database) or --url (a running server)"
            )
        study = load_study(args.run, args.data_root, args.db, args.seed, args.pairs_per_rater)
        stored = simulate_study(study, judge, args.raters, model=model, seed=args.noise_seed)
        where = str(args.db)
    sys.stdout.write(f"{args.raters} simulated raters: {stored} answers stored in {where}\n")  # cli-output
    return 0


def run(words: list[str]) -> int:
    """Run ``icg study <command> ...``; returns the exit status.

    Still argparse, not jsonargparse's ``CLI``: ``simulate`` takes RUN as an optional positional (left out with
    ``--url``), and ``serve``/``simulate`` take RUN positional beside the required options ``--data_root`` and
    ``--db``; jsonargparse makes every required parameter positional (``as_positional=True``) or none
    (``as_positional=False``) and has no optional positional, so converting would change what users type.

    Args:
        words: the words after ``icg study``.
    """
    try:
        parsed = _parser().parse_args(words)
    except SystemExit as exit_:  # --help and usage errors: argparse already printed
        return int(exit_.code or 0)
    handler = {"serve": _serve, "results": _results, "simulate": _simulate}[parsed.command]
    try:
        return handler(parsed)
    except (UserError, DatasetFormatError) as err:
        if os.environ.get("ICG_DEBUG") == "1":
            raise
        sys.stderr.write(f"icg study {parsed.command}: {err}\n")
        return 2
    except KeyboardInterrupt:
        return 130

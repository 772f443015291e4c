"""``icg data synth|validate|stats|convert``: the dataset commands of the ``icg`` CLI (ICG, Bian et al., EMNLP 2025).

``icg/cli.py`` hands every ``icg data ...`` invocation to :func:`run`. Output goes to stdout with
``sys.stdout.write``; a failed check exits non-zero with its one report on stderr, and any other user error
(:class:`icg.errors.UserError`) is printed by ``icg.cli.main`` as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from icg.errors import ConfigError, disk_full_is_a_user_error
from icg.output_lock import output_lock

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icg data", description="Dataset commands (format: docs/data.md).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{synth,validate,stats,convert}")

    synth = commands.add_parser("synth", help="write the synthetic platform (the embedded default's data)")
    synth.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    synth.add_argument("--users", type=int, default=200, help="number of users")
    synth.add_argument("--items", type=int, default=300, help="number of items")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument("--image-size", type=int, default=64, help="cover size in pixels")
    synth.add_argument(
        "--clicks-per-user",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="range of each user's click quota (default: the platform's, icg.data.synthetic.CLICKS_PER_USER); "
        "a user shown the whole catalogue first ends with fewer",
    )
    synth.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic platform in --out")

    validate = commands.add_parser("validate", help="check a dataset; non-zero exit and one report of every problem")
    validate.add_argument("root", type=Path, help="dataset folder")

    stats = commands.add_parser("stats", help="users, items, interactions, clicks, per-split counts")
    stats.add_argument("root", type=Path, help="dataset folder")
    stats.add_argument("--holdout", type=int, default=1, help="interactions per user held out for test (and val)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    # a synthetic platform also prints where its click logit's variance sits (docs/data.md)

    convert = commands.add_parser("convert", help="import PixelRec or MovieLens from their published layouts")
    sources = convert.add_subparsers(dest="source", required=True, metavar="{pixelrec,movielens}")
    pixelrec = sources.add_parser("pixelrec", help="PixelRec: interactions CSV + item_info.csv + covers/")
    pixelrec.add_argument(
        "--interactions", required=True, type=Path, help="e.g. Pixel1M.csv (item_id,user_id,timestamp)"
    )
    pixelrec.add_argument("--items", required=True, type=Path, help="item_info.csv")
    pixelrec.add_argument("--covers", required=True, type=Path, help="folder of <item_id>.jpg")
    pixelrec.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    _common_convert_options(pixelrec, "PixelRec exports are often gbk")
    movielens = sources.add_parser("movielens", help="MovieLens: ratings.csv + movies.csv + posters/")
    movielens.add_argument("--ratings", required=True, type=Path, help="ratings.csv (userId,movieId,rating,timestamp)")
    movielens.add_argument("--movies", required=True, type=Path, help="movies.csv (movieId,title,genres)")
    movielens.add_argument("--posters", required=True, type=Path, help="folder of <movieId>.jpg")
    movielens.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    movielens.add_argument("--positive-threshold", type=float, default=4.0, help="ratings >= this are clicks")
    _common_convert_options(movielens, "ml-latest is utf-8; older MovieLens releases latin-1")
    return parser


def _common_convert_options(parser: argparse.ArgumentParser, encoding_hint: str) -> None:
    parser.add_argument(
        "--encoding", default="utf-8", help=f"text encoding of the input CSV files (default utf-8; {encoding_hint})"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier conversion in --out, once the new one is complete"
    )


def _synth(args: argparse.Namespace) -> int:
    # the generator pulls in rendering code: load it only here
    from icg.data.synthetic import CLICKS_PER_USER, generate_platform

    with output_lock(args.out, "icg data synth"), disk_full_is_a_user_error(args.out):
        out = generate_platform(
            args.out,
            users=args.users,
            items=args.items,
            seed=args.seed,
            image_size=args.image_size,
            overwrite=args.overwrite,
            clicks_per_user=tuple(args.clicks_per_user) if args.clicks_per_user else CLICKS_PER_USER,
        )
    sys.stdout.write(f"wrote synthetic platform to {out}\n")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from icg.data.validation import validate_dataset

    report = validate_dataset(args.root)
    if report.ok:
        sys.stdout.write(f"{args.root}: ok\n")
        return 0
    sys.stderr.write(report.message() + "\n")
    return 1


def dataset_stats(root: Path, holdout: int) -> tuple[dict, str]:
    """Counts of a dataset as on disk (bad rows included), and the report of its bad rows ("" when none).

    The rows are checked as ``icg data validate`` checks them, image files apart; a table without data rows is
    refused.
    """
    from icg.data.oracle import TRUTH_DIR, TRUTH_JSON
    from icg.data.schema import read_interaction_arrays, read_meta
    from icg.data.splits import InteractionLog
    from icg.data.synthetic import platform_variance_split
    from icg.data.validation import read_items, validate

    meta = read_meta(root)
    items, items_path = read_items(root)
    inter = read_interaction_arrays(root)
    problems = validate(root, items, items_path, inter, check_image_files=False).message()
    sorted_ = inter.sorted  # validation put the rows in time order once; the columns gathered then are reused
    log_ = InteractionLog(
        sorted_("user_code"),
        sorted_("item_code"),
        sorted_("click"),
        sorted_("timestamp"),
        len(inter.user_values),
        holdout,
    )
    truth = {}
    if (root / TRUTH_DIR / TRUTH_JSON).is_file():  # a synthetic platform: where its click logit's variance sits
        split = platform_variance_split(root)
        truth = {f"variance/{k}": round(v, 3) for k, v in split.items() if k != "taste"}
        truth |= {f"taste/{k}": round(v, 3) for k, v in split["taste"].items()}
    return {
        "source": meta.source,
        "implicit": meta.implicit,
        "users": len(inter.user_values),
        "items": len(items),
        "interactions": len(inter),
        "clicks": int(inter.click.sum()),
        "holdout": holdout,
        **log_.counts(),
        **truth,
    }, problems


def _stats(args: argparse.Namespace) -> int:
    if args.holdout < 0:
        raise ConfigError(f"--holdout must be >= 0, got {args.holdout}")
    stats, problems = dataset_stats(args.root, args.holdout)
    if args.json:
        sys.stdout.write(json.dumps(stats) + "\n")
    else:
        width = max(22, *(len(key) for key in stats))
        sys.stdout.write("".join(f"{key:<{width}} {value}\n" for key, value in stats.items()))
    if problems:  # the counts above include these rows; exit 1 as icg data validate does
        sys.stderr.write(f"these counts include bad rows: {problems}\n")
        return 1
    return 0


def _convert(args: argparse.Namespace) -> int:
    tables = [args.interactions, args.items] if args.source == "pixelrec" else [args.ratings, args.movies]

    def needed() -> int:  # about the input tables' size: the parquet and the left-out rows take less
        return sum(Path(path).stat().st_size for path in tables if Path(path).is_file())

    with disk_full_is_a_user_error(args.out, needed):  # the converter leaves no half dataset; say what it needed
        report = _run_converter(args)
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 0


def _run_converter(args: argparse.Namespace) -> dict:
    if args.source == "pixelrec":
        from icg.data.convert_pixelrec import convert_pixelrec

        return convert_pixelrec(
            args.interactions, args.items, args.covers, args.out, encoding=args.encoding, overwrite=args.overwrite
        )
    from icg.data.convert_movielens import convert_movielens

    return convert_movielens(
        args.ratings,
        args.movies,
        args.posters,
        args.out,
        args.positive_threshold,
        encoding=args.encoding,
        overwrite=args.overwrite,
    )


def run(words: list[str]) -> int:
    """Run ``icg data <command> ...``; returns the exit status.

    Still argparse, not jsonargparse's ``CLI``: its flags are spelt with dashes (``--image-size``,
    ``--clicks-per-user MIN MAX``, ``--positive-threshold``) and its switches take no value (``--overwrite``,
    ``--json``); jsonargparse spells options as the parameter names (underscores) and a ``bool`` with a value
    (``--overwrite true``), so converting would change what users type.

    Args:
        words: the words after ``icg data``.
    """
    try:
        parsed = _parser().parse_args(words)
    except SystemExit as exit_:  # --help and usage errors: argparse already printed
        return int(exit_.code or 0)
    handler = {"synth": _synth, "validate": _validate, "stats": _stats, "convert": _convert}[parsed.command]
    return handler(parsed)  # a UserError reaches icg.cli.main, which prints it as one line (exit status 2)

"""Results of a blind pairwise study: win rates per method pair and Bradley-Terry scores, with bootstrap CIs.

ICG (Bian et al., EMNLP 2025) reports user appeal from a human study. Here every answer is one game between the two
methods of its screen: a pick is a win, "no preference" half a win to each. Per method pair, the win rate is
``(wins + ties / 2) / answers``. The Bradley-Terry model ``P(i beats j) = s_i / (s_i + s_j)`` is fitted by Hunter's
(2004) MM iteration with a weak prior (one virtual tied game per method pair, so a method that never loses keeps a
finite score); the score is ``log s_i`` centred to mean 0 (a difference of 1 means odds of e to 1). Confidence
intervals resample *raters* with replacement (a rater's answers stay together), percentile method.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from icg.study.store import StudyDatabaseError, StudyStore

log = logging.getLogger(__name__)
RESULTS_NAME = "study_results"


def tally(answers: list[dict[str, Any]], methods: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-rater game counts.

    Returns:
        (raters, wins, ties): ``wins[r, i, j]`` is how often rater r preferred method i over method j,
        ``ties[r, i, j]`` (symmetric) how often they had no preference between them.
    """
    raters = sorted({a["rater"] for a in answers})
    rater_index = {r: k for k, r in enumerate(raters)}
    index = {m: k for k, m in enumerate(methods)}
    wins = np.zeros((len(raters), len(methods), len(methods)))
    ties = np.zeros_like(wins)
    for a in answers:
        r, i, j = rater_index[a["rater"]], index[a["method_a"]], index[a["method_b"]]
        if a["chosen_method"] is None:
            ties[r, i, j] += 1
            ties[r, j, i] += 1
        else:
            winner = index[a["chosen_method"]]
            wins[r, winner, j if winner == i else i] += 1
    return raters, wins, ties


def bradley_terry(points: np.ndarray, prior: float = 0.5, tol: float = 1e-10, max_iter: int = 10000) -> np.ndarray:
    """Bradley-Terry log-strengths (mean 0) by MM iteration; vectorized over leading batch dimensions.

    Args:
        points: ... x M x M, ``points[..., i, j]`` = wins of i over j (ties already counted as halves).
        prior: virtual points each way per method pair (0.5: one tied game).
        tol: stop when no log-strength moves more than this.
        max_iter: iteration cap.
    """
    m = points.shape[-1]
    off = 1.0 - np.eye(m)
    w = points + prior * off
    games = w + np.swapaxes(w, -1, -2)
    total = w.sum(-1)
    log_s = np.zeros(points.shape[:-1])
    for _ in range(max_iter):
        s = np.exp(log_s)
        denom = (games / (s[..., :, None] + s[..., None, :])).sum(-1)
        new = np.log(total) - np.log(denom)
        new -= new.mean(-1, keepdims=True)
        done = np.max(np.abs(new - log_s)) < tol
        log_s = new
        if done:
            break
    return log_s


def study_results(
    db: str | Path, bootstrap_samples: int = 2000, confidence: float = 0.95, seed: int = 0, prior: float = 0.5
) -> dict[str, Any]:
    """Win rates and Bradley-Terry scores of a study database (opened read-only).

    Args:
        db: the study database (``icg study serve --db``).
        bootstrap_samples: rater resamples for the confidence intervals.
        confidence: two-sided level of the intervals.
        seed: seed of the resampling.
        prior: Bradley-Terry prior (virtual points each way per method pair).

    Returns:
        ``study`` (counts and provenance), ``settings``, ``pairs`` (one entry per method pair), ``bradley_terry``
        (method -> score, CI, rank) and ``ranking`` (methods, best first). CIs are None with fewer than 2 raters.
    """
    store = StudyStore.open_existing(db)
    meta = store.meta()
    methods = json.loads(meta["methods"])
    answers = store.answers()
    if not answers:
        raise StudyDatabaseError(f"{db}: no answers yet; run the study (icg study serve) or simulate raters first")
    raters, wins, ties = tally(answers, methods)
    points = wins + 0.5 * ties  # R x M x M
    games = wins + np.swapaxes(wins, 1, 2) + ties
    total_points, total_games, total_wins, total_ties = points.sum(0), games.sum(0), wins.sum(0), ties.sum(0)

    rng = np.random.default_rng(seed)
    resampled = None
    if len(raters) >= 2 and bootstrap_samples > 0:
        picks = rng.integers(0, len(raters), size=(bootstrap_samples, len(raters)))
        weights = np.stack([np.bincount(p, minlength=len(raters)) for p in picks]).astype(float)  # B x R
        resampled = (np.einsum("br,rij->bij", weights, points), np.einsum("br,rij->bij", weights, games))
    alpha = (1.0 - confidence) / 2.0

    def interval(samples: np.ndarray) -> tuple[float | None, float | None]:
        samples = samples[np.isfinite(samples)]
        if resampled is None or not len(samples):
            return None, None
        return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1.0 - alpha))

    pairs = []
    for i, a in enumerate(methods):
        for j in range(i + 1, len(methods)):
            n = int(total_games[i, j])
            rate = float(total_points[i, j] / n) if n else None
            low, high = (None, None)
            if resampled is not None and n:
                with np.errstate(invalid="ignore", divide="ignore"):
                    low, high = interval(resampled[0][:, i, j] / resampled[1][:, i, j])
            pairs.append({
                "a": a, "b": methods[j], "answers": n, "a_wins": int(total_wins[i, j]),
                "b_wins": int(total_wins[j, i]), "no_preference": int(total_ties[i, j]),
                "a_win_rate": rate, "ci_low": low, "ci_high": high,
            })  # fmt: skip

    scores = bradley_terry(total_points, prior)
    boot_scores = bradley_terry(resampled[0], prior) if resampled is not None else None
    ranking = [methods[k] for k in np.argsort(-scores, kind="stable")]
    bt = {}
    for k, method in enumerate(methods):
        low, high = interval(boot_scores[:, k]) if boot_scores is not None else (None, None)
        bt[method] = {"score": float(scores[k]), "ci_low": low, "ci_high": high, "rank": ranking.index(method) + 1}
    return {
        "study": {
            "db": str(db),
            "fingerprint": meta["fingerprint"],
            "manifest": meta.get("manifest"),
            "methods": methods,
            "comparisons": store.comparison_count(),
            "answers": len(answers),
            "raters": len(raters),
            "no_preference_share": float(np.mean([a["choice"] == "none" for a in answers])),
        },
        "settings": {"bootstrap_samples": bootstrap_samples, "confidence": confidence, "seed": seed, "prior": prior},
        "pairs": pairs,
        "bradley_terry": bt,
        "ranking": ranking,
    }


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _ci(entry: dict[str, Any], spec: str = ".3f") -> str:
    if entry["ci_low"] is None:
        return "n/a (needs 2+ raters)"
    return f"{_fmt(entry['ci_low'], spec)} .. {_fmt(entry['ci_high'], spec)}"


def format_results(results: dict[str, Any]) -> str:
    """The results as Markdown: the Bradley-Terry table, then one row per method pair."""
    s, level = results["study"], int(round(100 * results["settings"]["confidence"]))
    lines = [
        "# Blind pairwise study",
        "",
        f"{s['answers']} answers from {s['raters']} raters on {s['comparisons']} comparisons of {len(s['methods'])} "
        f"methods; no preference in {_fmt(s['no_preference_share'], '.1%')} of answers (counted as half a win to "
        f"each). {level}% CIs: bootstrap over raters ({results['settings']['bootstrap_samples']} resamples).",
        "",
        f"| rank | method | Bradley-Terry score | {level}% CI |",
        "| ---: | --- | ---: | --- |",
    ]
    for method in results["ranking"]:
        entry = results["bradley_terry"][method]
        lines.append(f"| {entry['rank']} | {method} | {entry['score']:+.3f} | {_ci(entry, '+.3f')} |")
    lines += [
        "",
        f"| A | B | answers | A preferred | B preferred | no preference | A win rate | {level}% CI |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in results["pairs"]:
        lines.append(
            f"| {p['a']} | {p['b']} | {p['answers']} | {p['a_wins']} | {p['b_wins']} | {p['no_preference']} | "
            f"{_fmt(p['a_win_rate'])} | {_ci(p)} |"
        )
    lines += ["", f"Study database: {s['db']} (covers {s['fingerprint'][:12]}, manifest {s['manifest']})."]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write ``study_results.json`` and ``study_results.md`` into ``out_dir`` (each by temp file + rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{RESULTS_NAME}.json", "markdown": out / f"{RESULTS_NAME}.md"}
    for path, text in (
        (files["json"], json.dumps(results, indent=2) + "\n"),
        (files["markdown"], format_results(results)),
    ):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    return {k: str(v) for k, v in files.items()}


def attach_user_appeal(report: dict[str, Any], study_db: str | Path | None) -> None:
    """Put a study's Bradley-Terry scores into an evaluation report as its ``user_appeal`` row.

    Without a database the row is unavailable (with the reason). The study's covers are compared with the covers
    this evaluation wrote (``report["cover_manifest"]``); ``same_covers`` says whether they are identical.

    Args:
        report: the evaluation report (``icg.evaluation.run.evaluate``), changed in place.
        study_db: the study database, or None.
    """
    if study_db is None:
        report.setdefault("unavailable", {})["user_appeal"] = "no study database given (--study_db; docs/study.md)"
        return
    from icg.cover_manifest import manifest_fingerprint, read_manifest

    results = study_results(study_db)
    manifest = report.get("cover_manifest")
    same = manifest_fingerprint(read_manifest(manifest)) == results["study"]["fingerprint"] if manifest else None
    if same is False:
        log.warning("%s rated other covers than this evaluation wrote (%s)", study_db, manifest)
    for name, row in report["methods"].items():
        entry = results["bradley_terry"].get(name)
        row["user_appeal"] = entry["score"] if entry else None
    report["user_appeal"] = {
        "study_db": str(study_db),
        "same_covers": same,
        "answers": results["study"]["answers"],
        "raters": results["study"]["raters"],
        "bradley_terry": results["bradley_terry"],
        "pairs": results["pairs"],
    }

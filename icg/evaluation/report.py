"""The evaluation table of ICG (Bian et al., EMNLP 2025) as Markdown, JSON and TensorBoard hparams.

``METRICS`` fixes the table's rows (metric key, axis, direction); docs/evaluation.md defines each. A metric that is
``None`` is shown as ``unavailable`` (with the reason from ``report["unavailable"]``), never as a number.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from icg.evaluation.personalization import format_personalization

log = logging.getLogger(__name__)

# (key, axis, better): "+" higher is better, "-" lower is better, "" no preferred direction.
METRIC_TABLE = (
    ("aesthetic", "quality", "+"),
    ("imagereward", "quality", "+"),
    ("relevance", "fidelity", "+"),
    ("title_match_acc", "fidelity", "+"),
    ("clip_title", "fidelity", "+"),
    ("clip_reference", "fidelity", "+"),
    ("ssim_reference", "fidelity", "+"),
    ("lpips_reference", "fidelity", "-"),
    ("true_click_prob", "personalization", "+"),
    ("true_click_prob_candidates", "personalization", "+"),
    ("evaluator_click_prob", "personalization", "+"),
    ("preference_reward", "personalization", "+"),
    ("history_similarity", "personalization", "+"),
    ("diversity", "personalization", ""),
    ("downstream_auc", "recommendation", "+"),
    ("downstream_gauc", "recommendation", "+"),
    ("downstream_auc_logged", "recommendation", ""),
    ("downstream_gauc_logged", "recommendation", ""),
    ("user_appeal", "user appeal", "+"),
)
METRICS = tuple(key for key, _, _ in METRIC_TABLE)
REQUIRED_KEYS = ("stage1", "methods", "lift", "relevance_drop", "minutes")
REFERENCE_COLUMN = "reference covers"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unavailable"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_markdown(report: dict[str, Any]) -> str:
    """The one table (rows: metrics; columns: methods, then the original covers) plus the headline figures."""
    methods = list(report["methods"])
    columns = methods + ([REFERENCE_COLUMN] if "reference_covers" in report else [])
    rows = {**report["methods"], REFERENCE_COLUMN: report.get("reference_covers", {})}
    lines = [
        "| axis | metric | " + " | ".join(columns) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for key, axis, better in METRIC_TABLE:
        arrow = {"+": " ↑", "-": " ↓"}.get(better, "")
        lines.append(f"| {axis} | {key}{arrow} | " + " | ".join(_fmt(rows[c].get(key)) for c in columns) + " |")
    stage1, lift = report["stage1"], report["lift"]
    lines += [
        "",
        f"Stage-1 click model (test): AUC {_fmt(stage1.get('auc'))}, GAUC {_fmt(stage1.get('gauc'))}; "
        f"oracle AUC {_fmt(stage1.get('oracle_auc'))}; popularity AUC {_fmt(stage1.get('popularity_auc'))}.",
    ]
    if "evaluator" in report:
        ev = report["evaluator"]
        lines.append(
            f"Evaluator click model ({ev['source']}), original covers: AUC {_fmt(ev.get('auc'))}, "
            f"GAUC {_fmt(ev.get('gauc'))}."
        )
    if lift.get("true_click_prob") is not None:
        lines.append(
            f"Lift of {lift.get('treatment', 'ICG')} over {lift.get('baseline', 'the baseline')} in true click "
            f"probability: {lift['true_click_prob']:+.2%} (95% bootstrap CI over users "
            f"{lift['ci_low']:+.2%} .. {lift['ci_high']:+.2%})."
        )
    else:
        lines.append("Lift in true click probability: unavailable.")
    lines.append(f"Relevance drop (1 - title-match accuracy ratio): {_fmt(report.get('relevance_drop'))}.")
    appeal = report.get("user_appeal")
    if appeal:
        lines.append(
            f"User appeal: Bradley-Terry scores of a blind pairwise study ({appeal['answers']} answers of "
            f"{appeal['raters']} raters, {appeal['study_db']}; same covers as this run: {appeal['same_covers']})."
        )
    sample = report.get("sample")
    if sample:
        lines.append(
            f"Sample: {sample['held_out_pairs']} held-out pairs of {sample['users']} users; diversity on a "
            f"{sample['grid'][0]} users x {sample['grid'][1]} items grid; downstream AUC/GAUC on "
            f"{sample['downstream_rows']} candidates of {sample['downstream_users']} users "
            f"({sample['downstream_negatives_per_positive']} negatives per positive), clicks drawn from the oracle "
            f"on the covers shown ({sample.get('downstream_impressions', '?')} impressions each; *_logged: the logged "
            "clicks on the original covers)."
        )
    lines += format_personalization(report.get("personalization"))
    if report.get("user_swap"):
        from icg.evaluation.user_swap import format_user_swap

        lines += format_user_swap(report["user_swap"])
    curve = report.get("user_guidance_curve")
    if curve:
        lines += [
            "",
            f"User guidance ({curve['pairs']} held-out clicked pairs; docs/generation.md):",
            "",
            "| scale | true click probability | title-match accuracy |",
            "| ---: | ---: | ---: |",
        ]
        lines += [f"| {row['user_guidance']:g} | {_fmt(row['true_click_prob'])} | {_fmt(row['title_match_acc'])} |"
                  for row in curve["rows"]]  # fmt: skip
    if report.get("unavailable"):
        lines += ["", "Unavailable:"] + [f"- {key}: {why}" for key, why in report["unavailable"].items()]
    lines.append(f"\nWall time: {report['minutes']:.2f} min.")
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _clean(value: Any) -> Any:
    """NaN/Inf -> None: JSON has no NaN, and an undefined metric is unavailable, not a number."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_tensorboard_hparams(report: dict[str, Any], log_dir: str | Path) -> Path:
    """One hparams run per method (``method`` is the hparam; every available metric is an ``eval/...`` value)."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name, row in report["methods"].items():
            values = {f"eval/{k}": float(v) for k, v in row.items() if v is not None and math.isfinite(v)}
            writer.add_hparams({"method": name}, values, run_name=name)
    return log_dir


def write_report(
    report: dict[str, Any], out_dir: str | Path, grid: dict[str, Any] | None = None, tensorboard: bool = True
) -> dict[str, str]:
    """Write ``report.json``, ``report.md``, ``gallery.html`` (when ``grid`` is given) and TensorBoard hparams.

    Sets ``report["files"]`` to the written paths and returns it.
    """
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ValueError(f"write_report: the report lacks {missing}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if grid is not None:
        from icg.evaluation.gallery import write_gallery

        files["gallery"] = str(write_gallery(out / "gallery.html", grid))
    if tensorboard:
        files["tensorboard"] = str(write_tensorboard_hparams(report, out / "tensorboard"))
    report["files"] = files
    cleaned = _clean(report)
    report.update(cleaned)
    Path(files["markdown"]).write_text(format_markdown(report))
    Path(files["json"]).write_text(json.dumps(cleaned, indent=2, default=_json_default) + "\n")
    log.info("evaluation report: %s", ", ".join(files.values()))
    return files


def attach_user_appeal(report: dict[str, Any], study: dict[str, Any] | None) -> None:
    """Put a blind pairwise study's Bradley-Terry scores into the report as its ``user_appeal`` row.

    Without a study the row is unavailable (with the reason). The study's covers are compared with the covers this
    evaluation wrote (``report["cover_manifest"]``); ``same_covers`` says whether they are identical.

    Args:
        report: the evaluation report, changed in place.
        study: the study's results (``icg.study.results.study_results``: the study layer reads its database and
            hands the results down), or None.
    """
    if study is None:
        report.setdefault("unavailable", {})["user_appeal"] = "no study database given (--study_db; docs/study.md)"
        return
    from icg.cover_manifest import manifest_fingerprint, read_manifest

    manifest = report.get("cover_manifest")
    same = manifest_fingerprint(read_manifest(manifest)) == study["study"]["fingerprint"] if manifest else None
    if same is False:
        log.warning("%s rated other covers than this evaluation wrote (%s)", study["study"]["db"], manifest)
    for name, row in report["methods"].items():
        entry = study["bradley_terry"].get(name)
        row["user_appeal"] = entry["score"] if entry else None
    report["user_appeal"] = {
        "study_db": study["study"]["db"],
        "same_covers": same,
        "answers": study["study"]["answers"],
        "raters": study["study"]["raters"],
        "bradley_terry": study["bradley_terry"],
        "pairs": study["pairs"],
    }

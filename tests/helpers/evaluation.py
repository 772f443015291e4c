"""A hand-made evaluation report, for the report, gallery and study tests."""

import torch

from icg.evaluation.report import METRICS


def fake_report(tmp_path, n_users=2, n_items=3):
    """A hand-made evaluation report and gallery grid (``n_users`` x ``n_items`` random covers per method)."""
    methods = {name: {m: 0.5 for m in METRICS} for name in ("title_only", "icg")}
    for row in methods.values():
        row["clip_title"] = None
    report = {
        "stage1": {"auc": 0.7, "gauc": 0.65, "oracle_auc": 0.8, "popularity_auc": 0.55},
        "methods": methods,
        "reference_covers": dict(methods["icg"]),
        "lift": {"true_click_prob": 0.1, "ci_low": 0.05, "ci_high": 0.15},
        "relevance_drop": 0.02,
        "unavailable": {"clip_title": "no CLIP weights given (clip_path)"},
        "minutes": 1.5,
    }
    n = n_users * n_items
    grid = {
        "users": [f"u{k}" for k in range(n_users)],
        "items": [f"i{k}" for k in range(n_items)],
        "titles": [f"title <{k}>" for k in range(n_items)],
        "pairs": [(u, i) for u in range(n_users) for i in range(n_items)],
        "covers": {name: torch.rand(n, 3, 8, 8) for name in ("reference", "title_only", "icg")},
        "scores": {"icg": {"true_click_prob": torch.rand(n)}},
    }
    return report, grid

"""The demo's claims on one evaluation report: guarded claims (``--check`` fails when one breaks) and targets.

Bars on the evaluation's figures (``report.json``; docs/evaluation.md defines them). A bar becomes a guarded claim
once it holds on seeds 0, 1 and 2 (docs/demo.md); until then it is a target, printed met or MISSED with its figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from icg.demo.steps import say

# The demo's claims (issue 11): what every seed must show.
MIN_LIFT = 0.25  # ICG's true click probability over title-only, relative
MAX_RELEVANCE_DROP = 0.05  # 1 - title-match accuracy of ICG / of title-only
MIN_TITLE_MATCH_ICG = 0.90
MIN_TITLE_MATCH_BASELINE = 0.85
# Issue 20's bars: personalization that beats what a platform already has (report.json's "personalization" block).
MIN_USER_SWAP_WIN = 0.70  # own cover vs other users' covers of the item at a common seed, by the true click model
MIN_PERSONAL_SHARE = 0.50  # (ICG - ICG without users) / the faithful headroom
# Issue 24's bars: the stand-in MLLM reads the item (report.json's "mllm_probe" block).
MIN_PROBE_MARGIN = 0.05  # trained stand-in over the random MLLM, held-out accuracy, on every probe


@dataclass
class Claim:
    """One claim on a report. ``guarded`` claims fail ``--check`` (CI) when broken; a target (``guarded=False``) is
    printed met or MISSED with its figures and never hidden, but does not fail the check (docs/demo.md says which
    targets hold on which seeds, and why the missed ones miss)."""

    name: str
    ok: bool
    detail: str
    guarded: bool = True


def claims(report: dict[str, Any]) -> list[Claim]:
    """The demo's claims on one evaluation report (``report.json``)."""
    methods, lift = report["methods"], report["lift"]
    acc = {name: methods.get(name, {}).get("title_match_acc") for name in ("title_only", "icg")}
    prob = {name: methods.get(name, {}).get("true_click_prob") for name in ("title_only", "icg_no_user", "icg")}
    drop = report.get("relevance_drop")

    def below(a: float | None, b: float | None) -> bool:
        return a is not None and b is not None and a < b

    value, low = lift.get("true_click_prob"), lift.get("ci_low")
    return [
        Claim("lift", value is not None and value >= MIN_LIFT and low is not None and low > 0,
              f"ICG over title-only {_pct(value)} (CI {_pct(low)} .. {_pct(lift.get('ci_high'))}); needs >= "
              f"{MIN_LIFT:+.0%} with the CI above 0"),
        Claim("relevance", drop is not None and drop <= MAX_RELEVANCE_DROP,
              f"relevance drop {_pct(drop)}; needs <= {MAX_RELEVANCE_DROP:.0%}"),
        Claim("title-match", (acc["icg"] or 0) >= MIN_TITLE_MATCH_ICG
              and (acc["title_only"] or 0) >= MIN_TITLE_MATCH_BASELINE,
              f"title-match ICG {_num(acc['icg'])} (needs >= {MIN_TITLE_MATCH_ICG}), title-only "
              f"{_num(acc['title_only'])} (needs >= {MIN_TITLE_MATCH_BASELINE})"),
        Claim("ablation", below(prob["icg_no_user"], prob["icg"]),
              f"true click probability without user refinement {_num(prob['icg_no_user'])} < ICG {_num(prob['icg'])}"),
        *_appeal_claim(report),
        *personalization_claims(report),
        *prompting_claims(report),
    ]  # fmt: skip


def _get(block: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(block, dict):
            return None
        block = block.get(key)
    return block


# Which of issue 20's bars --check enforces: those that held on seeds 0, 1 and 2 (docs/demo.md); the rest are targets.
GUARDED_PERSONALIZATION: frozenset[str] = frozenset({
    "beats the reference (clicked)",
    "beats the reference (candidates)",
    "beats pool + pick at equal cost (clicked)",
    "beats pool + pick at equal cost (candidates)",
    "personal share",
    "user swap",
})  # fmt: skip


def personalization_claims(report: dict[str, Any]) -> list[Claim]:
    """Issue 20's claims: ICG beats the item's own cover and pool + pick, on clicked pairs and candidates; a user's own
    cover beats other users' covers of the item; ICG reaches half the faithful headroom; the user moves a cover more
    than the seed does."""
    block = report.get("personalization")
    if not isinstance(block, dict):
        return []
    found = []
    for part in ("clicked", "candidates"):
        p = _get(block, part, "true_click_prob")
        icg, ref = _get(p, "icg"), _get(p, "reference")
        found.append(Claim(f"beats the reference ({part})", icg is not None and ref is not None and icg > ref,
                           f"ICG {_num(icg)} vs the item's own cover {_num(ref)}"))  # fmt: skip
        pool = _get(block, part, "pool_pick", "icg_no_user")
        equal, four = _get(pool, "equal_cost", "true_click_prob"), _get(pool, "pool", "true_click_prob")
        found.append(Claim(f"beats pool + pick at equal cost ({part})",
                           icg is not None and equal is not None and icg > equal,
                           f"ICG {_num(icg)} vs pool + pick of ICG-without-users covers {_num(equal)} "
                           f"({_num(_get(pool, 'equal_cost', 'covers_per_item'))} covers per item, as ICG); with 4 "
                           f"per item {_num(four)}"))  # fmt: skip
    share = _get(block, "clicked", "personal_share")
    value, headroom = _get(share, "value"), _get(block, "clicked", "faithful", "headroom")
    found.append(Claim("personal share", value is not None and value >= MIN_PERSONAL_SHARE,
                       f"ICG reaches {_pct_plain(value)} of the faithful headroom {_num(headroom)} "
                       f"(CI {_pct_plain(_get(share, 'ci_low'))} .. {_pct_plain(_get(share, 'ci_high'))}); needs >= "
                       f"{MIN_PERSONAL_SHARE:.0%}"))  # fmt: skip
    found += _user_swap_claims(report)
    for claim in found:
        claim.guarded = claim.name in GUARDED_PERSONALIZATION
    return found


def _user_swap_claims(report: dict[str, Any]) -> list[Claim]:
    """The user-swap test at a common seed (held-out clicked pairs; candidates in the detail), and user vs seed."""
    swap = report.get("user_swap")
    if not isinstance(swap, dict):
        return []
    win = _get(swap, "held_out", "icg", "oracle", "win_rate")
    win_candidates = _get(swap, "candidates", "icg", "oracle", "win_rate")
    distance = _get(swap, "held_out", "icg", "distance")
    ratio = _get(distance, "rmse_ratio")
    return [
        Claim("user swap", win is not None and win >= MIN_USER_SWAP_WIN,
              f"a user's own cover beats other users' covers of the item (common seed, true click model) "
              f"{_pct_plain(win)} of the time (candidates {_pct_plain(win_candidates)}); needs >= "
              f"{MIN_USER_SWAP_WIN:.0%}"),
        Claim("user effect vs seed noise", ratio is not None and ratio >= 1.0,
              f"pixel RMSE between users' covers at one seed {_num(_get(distance, 'user_rmse'))}, between one user's "
              f"covers at two seeds {_num(_get(distance, 'seed_rmse'))} (ratio {_num(ratio)}); needs >= 1"),
    ]  # fmt: skip


def probe_margins(probe: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each probe's held-out accuracy of the trained stand-in MLLM minus the random MLLM's (report's ``mllm_probe``)."""
    return {k: probe["trained"][k] - probe["random"][k] for k in probe["random"]}


def prompting_claims(report: dict[str, Any]) -> list[Claim]:
    """Issue 24's bars: the stand-in MLLM's probe above the random MLLM's on every probe (guarded: it held on seeds
    0-2); ICG through the trained stand-in MLLM (``icg_other_mllm`` in the demo) above the handcrafted personalized
    prompt on true click probability at no lower title-match (a target: it misses title-match on seeds 1 and 2)."""
    methods = report["methods"]
    found = []
    if "icg_other_mllm" in methods and "personalized_prompt" in methods:
        icg, hand = methods["icg_other_mllm"], methods["personalized_prompt"]
        p, hand_p = icg.get("true_click_prob"), hand.get("true_click_prob")
        acc, hand_acc = icg.get("title_match_acc"), hand.get("title_match_acc")
        ok = None not in (p, hand_p, acc, hand_acc) and p > hand_p and acc >= hand_acc
        found.append(Claim("trained MLLM over the handcrafted prompt", ok,
                           f"ICG through the trained MLLM {_num(p)} at title-match {_num(acc)} vs title + history "
                           f"words {_num(hand_p)} at {_num(hand_acc)}; needs higher p at no lower title-match",
                           guarded=False))  # fmt: skip
    probe = report.get("mllm_probe")
    if isinstance(probe, dict) and {"random", "trained"} <= probe.keys():
        margins = probe_margins(probe)
        worst = min(margins, key=margins.get)
        found.append(Claim("trained MLLM reads the item", margins[worst] >= MIN_PROBE_MARGIN,
                           "held-out probe accuracy, trained vs random MLLM: "
                           + ", ".join(f"{k} {probe['trained'][k]:.2f} vs {probe['random'][k]:.2f}" for k in margins)
                           + f"; needs >= +{MIN_PROBE_MARGIN:.2f} on each (worst {worst} "
                           f"{margins[worst]:+.2f})"))  # fmt: skip
    return found


def _pct_plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _appeal_claim(report: dict[str, Any]) -> list[Claim]:
    """With a (simulated) study: its Bradley-Terry scores rank ICG > ICG without users > title-only, as the oracle."""
    scores = {m: row.get("user_appeal") for m, row in report["methods"].items()}
    if "user_appeal" not in report or None in (scores.get("icg"), scores.get("icg_no_user"), scores.get("title_only")):
        return []
    order = scores["icg"] > scores["icg_no_user"] > scores["title_only"]
    return [
        Claim(
            "user appeal",
            order,
            "Bradley-Terry "
            + ", ".join(f"{m} {scores[m]:+.2f}" for m in ("icg", "icg_no_user", "title_only"))
            + "; needs ICG > no user > title-only",
        )
    ]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def say_claims(found: list[Claim]) -> bool:
    """Print the claims (guarded: ok / BROKEN) and the targets (met / MISSED); True when every guarded claim holds."""
    say("\nThe demo's claims:")
    for claim in (c for c in found if c.guarded):
        say(f"  [{'ok' if claim.ok else 'BROKEN'}] {claim.name}: {claim.detail}")
    targets = [c for c in found if not c.guarded]
    if targets:
        say("Targets (shown, not enforced by --check until they hold on seeds 0-2; docs/demo.md):")
        for claim in targets:
            say(f"  [{'met' if claim.ok else 'MISSED'}] {claim.name}: {claim.detail}")
    return all(c.ok for c in found if c.guarded)

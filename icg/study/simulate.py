"""Simulated raters for the synthetic platform: they answer a study from the oracle's true click probabilities.

A person judging covers for ICG (Bian et al., EMNLP 2025) is replaced by the synthetic platform's hidden click
model (``icg.data.oracle.Oracle``) plus noise. For a screen with covers L and R of user u, rater noise is logistic:

    d = P(click | u, L) - P(click | u, R) + temperature * eps,   eps ~ Logistic(0, 1), one draw per answer
    answer = "none" if |d| < no_preference_band, else "left" if d > 0, else "right"

so a clear difference is picked almost always, a small one is a coin flip or "no preference" (a Bradley-Terry /
logistic choice with a tie band, Rao-Kupper style). A simulated study therefore checks the whole path: covers
written by the evaluation, the study's design, storage, results, and that the ranking matches the oracle's mean
click probabilities. Two drivers: ``simulate_study`` answers through the same ``Study.answer`` the server calls;
``simulate_over_http`` is N concurrent raters posting to a running server, looking only at what a browser gets.
"""

from __future__ import annotations

import http.cookiejar
import io
import json
import logging
import threading
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from icg.data.oracle import Oracle
from icg.errors import UserError
from icg.study.screens import Study

log = logging.getLogger(__name__)


class NoOracleError(UserError, FileNotFoundError):
    """Simulated raters need the synthetic platform's hidden truth."""


@dataclass(frozen=True)
class RaterModel:
    """How a simulated rater turns two true click probabilities into an answer (see the module docstring).

    Args:
        temperature: scale of the logistic noise on the probability difference (0: always the better cover).
        no_preference_band: |noisy difference| below this is "no preference".
    """

    temperature: float = 0.05
    no_preference_band: float = 0.01

    def choose(self, p_left: float, p_right: float, rng: np.random.Generator) -> str:
        noisy = (p_left - p_right) + self.temperature * rng.logistic()
        if abs(noisy) < self.no_preference_band:
            return "none"
        return "left" if noisy > 0 else "right"


class OracleJudge:
    """True click probabilities of cover images for a user, from the platform's oracle.

    Args:
        data_root: a synthetic platform (``icg data synth``) with its ``truth/``.
    """

    def __init__(self, data_root: str | Path) -> None:
        try:
            self.oracle = Oracle.from_dataset(data_root)
        except FileNotFoundError:
            raise NoOracleError(
                f"{data_root}: no hidden truth (truth/truth.json); simulated raters need a synthetic platform "
                "(icg data synth) -- real data needs real raters (icg study serve)"
            ) from None
        self._lock = threading.Lock()

    @staticmethod
    def to_tensor(image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)

    @torch.no_grad()
    def probability(self, user_id: str, image: Image.Image | str | Path | bytes) -> float:
        """P(click) of ``user_id`` for one image (a PIL image, a file, or encoded bytes); an unknown user gets the
        population taste."""
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        elif isinstance(image, str | Path):
            image = Image.open(image)
        x = self.to_tensor(image)[None]
        with self._lock:  # one oracle shared by rater threads
            user = self.oracle.user_index([user_id], unknown="fallback")
            return float(self.oracle(x, user)[0])


def simulate_study(
    study: Study, judge: OracleJudge, raters: int = 20, model: RaterModel | None = None, seed: int = 0,
    prefix: str = "sim",
) -> int:  # fmt: skip
    """``raters`` simulated raters answer every screen of their queue through ``Study.answer``.

    Each cover's true click probability is computed once. Raters already in the database resume (answered screens
    are skipped).

    Args:
        study: the study (design, database, catalogue, screens per rater).
        judge: the oracle.
        raters: number of simulated raters (ids ``<prefix>-000``, ...).
        model: the noise model (default ``RaterModel()``).
        seed: seed of the raters' noise (rater k draws from ``default_rng([seed, k])``).
        prefix: rater id prefix.

    Returns:
        the number of answers stored now.
    """
    model = model or RaterModel()
    truth = {key: judge.probability(key[0], entry.file) for key, entry in study.design.entries.items()}
    stored = 0
    for k in range(raters):
        rater, rng = f"{prefix}-{k:03d}", np.random.default_rng([seed, k])
        answered = study.store.answered(rater)
        for cid in study.queue(rater):
            c = study.design.comparison(cid)
            left, right = study.design.sides(rater, cid)
            choice = model.choose(truth[(c.user_id, c.item_id, left)], truth[(c.user_id, c.item_id, right)], rng)
            if cid not in answered:
                stored += study.answer(rater, cid, choice)
    log.info("simulated %d raters: %d answers stored", raters, stored)
    return stored


def rater_session(base: str, rater: str, timeout: float) -> urllib.request.OpenerDirector:
    """A client holding ``rater``'s cookie, got the way a person gets it: the link ``/?rater=<id>``."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{base}/?rater={urllib.parse.quote(rater)}", timeout=timeout) as response:
        response.read()
    return opener


def simulate_over_http(
    url: str, judge: OracleJudge, raters: int = 20, workers: int | None = None, model: RaterModel | None = None,
    seed: int = 0, prefix: str = "sim", timeout_s: float = 60.0, max_screens: int = 100000,
) -> int:  # fmt: skip
    """``raters`` simulated raters at once (one thread each, up to ``workers``) against a running study server.

    Each rater joins with the link ``/?rater=<id>`` (the server's cookie says who it is from then on), reads
    ``/api/next``, downloads the two covers it is shown, judges them with the oracle and posts ``/api/answer``,
    until the server says it is done (or ``max_screens``, a bound on the loop).

    Returns:
        the number of answers the server reported as newly stored.
    """
    model = model or RaterModel()
    base = url.rstrip("/")

    def one(k: int) -> int:
        rater, rng, stored = f"{prefix}-{k:03d}", np.random.default_rng([seed, k]), 0
        session = rater_session(base, rater, timeout_s)

        def get(path: str) -> bytes:
            with session.open(base + path, timeout=timeout_s) as response:
                return response.read()

        for _ in range(max_screens):
            screen = json.loads(get("/api/next"))
            if screen["done"]:
                break
            p_left = judge.probability(screen["user_id"], get(screen["left"]))
            p_right = judge.probability(screen["user_id"], get(screen["right"]))
            body = {"comparison_id": screen["comparison_id"], "choice": model.choose(p_left, p_right, rng)}
            request = urllib.request.Request(
                f"{base}/api/answer", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            with session.open(request, timeout=timeout_s) as response:
                stored += bool(json.loads(response.read())["stored"])
        return stored

    with ThreadPoolExecutor(max_workers=workers or raters) as pool:
        total = sum(pool.map(one, range(raters)))
    log.info("simulated %d raters over %s: %d answers stored", raters, base, total)
    return total

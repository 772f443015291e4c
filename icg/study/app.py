"""The blind pairwise study as a FastAPI app: Jinja2 pages for people, a small JSON API for simulated raters.

Each screen (ICG, Bian et al., EMNLP 2025: user appeal judged by people) shows the target user's recent clicks,
the item's title and reference cover, and two covers of different methods in the rater's own random left/right
arrangement; method names appear nowhere in the page, the image URLs (``/cover/<comparison>/<left|right>``) or the
API. The rater picks the cover that user would rather click, or "no preference"; the answer is committed to the
study database before the reply (``store.py``), then the next screen is one the rater has not answered.

Routes: ``/`` (start: rater id), ``/rate`` (the next screen), ``POST /answer`` (form), ``/cover/{id}/{side}``,
``/reference/{id}``, ``/history/{id}/{k}`` (images), ``/api/next`` and ``POST /api/answer`` (JSON), ``/healthz``.

Who may ask (docs/study.md): a rater joins with the start form or the link ``/?rater=<id>`` (so a link per rater
can be handed out); either sets the ``icg_rater`` cookie, and from then on the cookie alone says who rates: pages,
``/api/next`` and every answer. The server records each screen it shows a rater (``Study.show``) and takes an answer
only for such a screen (409 otherwise). :class:`~icg.study.guard.RequestGuard` refuses a Host that is not this
server's (400) and a POST from another site's page (403).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from icg.study.design import StudyInputError, check_rater
from icg.study.guard import RequestGuard
from icg.study.screens import NotShownError, Study

TEMPLATES = Path(__file__).parent / "templates"
RATER_COOKIE = "icg_rater"
SIDES = ("left", "right")


class AnswerIn(BaseModel):
    """``POST /api/answer`` body (the rater is the cookie's; a ``rater`` field is ignored)."""

    comparison_id: int
    choice: str
    seconds: float | None = None


def create_app(study: Study, host: str | None = None, allowed_hosts: Sequence[str] = ()) -> FastAPI:  # noqa: C901, PLR0915  # the routes are nested functions of the factory, each small
    """The study's web app (serve it with ``icg.study.server``).

    Args:
        study: the study.
        host: the address it is served on (``--host``): answered to besides the loopback names.
        allowed_hosts: more host names it answers to (``--allowed_hosts``).
    """
    app = FastAPI(title="icg cover study", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, served=host, extra=allowed_hosts)
    templates = Jinja2Templates(directory=TEMPLATES)
    app.state.study = study

    def checked(rater: str) -> str:
        try:
            return check_rater(rater)
        except StudyInputError as err:
            raise HTTPException(400, str(err)) from None

    def rater_of(request: Request, required: bool = True) -> str | None:
        """The rater of the cookie (set by the start form or the ``/?rater=`` link); never a query or form field."""
        rater = request.cookies.get(RATER_COOKIE)
        if rater is None:
            if required:
                raise HTTPException(400, "no rater: open / (or the link /?rater=<your id>) first")
            return None
        return checked(rater)

    def image_rater(request: Request) -> str:
        """The rater whose left/right arrangement an image URL asks for (its ``?rater=``, else the cookie's)."""
        rater = request.query_params.get("rater")
        return checked(rater) if rater is not None else rater_of(request)

    def comparison_or_404(comparison_id: int) -> None:
        if not 1 <= comparison_id <= len(study.design.comparisons):
            raise HTTPException(404, f"no comparison {comparison_id}")

    def remember(response: Response, rater: str) -> Response:
        response.set_cookie(RATER_COOKIE, rater, max_age=180 * 86400, samesite="lax", httponly=True)
        return response

    def start_page(request: Request, error: str | None = None):
        context = {"error": error, "screens": study.screens}
        return templates.TemplateResponse(request, "start.html", context, status_code=400 if error else 200)

    @app.get("/")
    def start(request: Request):
        """The start page; the link ``/?rater=<id>`` joins as that rater (sets the cookie) and goes on to /rate."""
        try:
            link = request.query_params.get("rater")
            rater = checked(link) if link is not None else rater_of(request, required=False)
        except HTTPException as err:  # a bad ?rater= link or cookie: say why on the start page
            return start_page(request, err.detail)
        if rater is not None:
            return remember(RedirectResponse("/rate", status_code=303), rater)
        return start_page(request)

    @app.post("/start")
    def start_form(request: Request, rater: str = Form("")):
        try:
            rater = check_rater(rater)
        except StudyInputError as err:
            return start_page(request, str(err))
        return remember(RedirectResponse("/rate", status_code=303), rater)

    @app.get("/rate")
    def rate(request: Request):
        rater = rater_of(request, required=False)
        if rater is None:
            return RedirectResponse("/", status_code=303)
        upcoming, answered, total = study.show(rater)
        if upcoming is None:
            page = templates.TemplateResponse(request, "done.html", {"rater": rater, "answered": answered})
        else:
            context = {"rater": rater, "answered": answered, "total": total, "shown_at": time.time()}
            context.update(study.screen(rater, upcoming))
            page = templates.TemplateResponse(request, "rate.html", context)
        page.headers["Cache-Control"] = "no-store"
        return remember(page, rater)

    @app.post("/answer")
    def answer_form(
        request: Request, comparison_id: int = Form(), choice: str = Form(), shown_at: float | None = Form(None)
    ):
        rater = rater_of(request)
        comparison_or_404(comparison_id)
        try:
            study.answer(rater, comparison_id, choice, time.time() - shown_at if shown_at else None, shown_only=True)
        except NotShownError as err:
            raise HTTPException(409, str(err)) from None
        except StudyInputError as err:
            raise HTTPException(400, str(err)) from None
        return RedirectResponse("/rate", status_code=303)

    def image(path: Path | None) -> FileResponse:
        if path is None:
            raise HTTPException(404, "no image")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/cover/{comparison_id}/{side}")
    def cover(request: Request, comparison_id: int, side: str):
        comparison_or_404(comparison_id)
        if side not in SIDES:
            raise HTTPException(404, "side is left or right")
        method = study.design.sides(image_rater(request), comparison_id)[SIDES.index(side)]
        return image(study.design.cover(comparison_id, method).file)

    @app.get("/reference/{comparison_id}")
    def reference(comparison_id: int):
        comparison_or_404(comparison_id)
        return image(study.reference(comparison_id))

    @app.get("/history/{comparison_id}/{k}")
    def history(comparison_id: int, k: int):
        comparison_or_404(comparison_id)
        c = study.design.comparison(comparison_id)
        clicks = study.catalogue.recent_clicks(c.user_id, c.item_id)
        return image(clicks[k].image if 0 <= k < len(clicks) else None)

    @app.get("/api/next")
    def api_next(request: Request) -> dict[str, Any]:
        rater = rater_of(request)
        upcoming, answered, total = study.show(rater)
        body: dict[str, Any] = {"done": upcoming is None, "answered": answered, "total": total}
        if upcoming is not None:
            body.update(study.screen(rater, upcoming))
        return body

    @app.post("/api/answer")
    def api_answer(request: Request, answer: AnswerIn) -> dict[str, Any]:
        rater = rater_of(request)
        comparison_or_404(answer.comparison_id)
        try:
            stored = study.answer(rater, answer.comparison_id, answer.choice, answer.seconds, shown_only=True)
        except NotShownError as err:
            raise HTTPException(409, str(err)) from None
        except StudyInputError as err:
            raise HTTPException(400, str(err)) from None
        return {"stored": stored, "answered": study.progress(rater)[1]}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "fingerprint": study.design.fingerprint,
            "comparisons": len(study.design.comparisons),
            "methods": len(study.design.methods),
        }

    return app

"""The cover explorer as a FastAPI app: one page with the controls and the three covers, PNG and JSON endpoints.

Every address carries the whole request in its query string (``user``, ``item``, ``guidance_scale``, ``strength``,
``seed``, ``num_steps``, ``noise``, ``user_guidance``), so a page can be bookmarked and a cover URL alone draws that
cover. Covers are drawn when first asked for and cached (``CoverExplorer``); the page's three ``<img>`` and its score
table ask at once, and the first request draws all three while the others wait for it.

Routes: ``/`` (page), ``POST /upload`` (a title and a reference image; back to the page), ``/cover/{method}.png``,
``/reference.png``, ``/click/{k}.png`` (images), ``/api/covers`` (seed, timing, scores as JSON), ``/api/users`` and
``/api/items`` (``?q=`` search for the pickers), ``/healthz``.

Who may ask (docs/explore.md): :class:`~icg.study.guard.RequestGuard` answers only requests whose Host is this
server's (loopback, ``--host``, ``--allowed_hosts``; else 400, so a rebound DNS name reads nothing) and takes an
upload only from the explorer's own page (a cross-site POST gets 403).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from icg.explore.catalogue import ExploreCatalogue
from icg.explore.explorer import (
    MAX_GUIDANCE,
    MAX_USER_GUIDANCE,
    METHOD_LABELS,
    METHODS,
    CoverExplorer,
    ExploreInputError,
    Item,
    Settings,
    png_bytes,
)
from icg.explore.uploads import MAX_UPLOAD_BYTES
from icg.study.app import TEMPLATES as STUDY_TEMPLATES
from icg.study.guard import RequestGuard

TEMPLATES = Path(__file__).parent / "templates"
PICKER_SIZE = 500  # options in a picker before it asks the server (``/api/users?q=``)
IMAGE_HEADERS = {"Cache-Control": "private, max-age=3600"}


def create_app(  # noqa: C901, PLR0915  # the routes are nested functions of the factory, each small
    explorer: CoverExplorer, catalogue: ExploreCatalogue, host: str | None = None, allowed_hosts: Sequence[str] = ()
) -> FastAPI:
    """The explorer's web app (serve it with ``icg.study.server``).

    Args:
        explorer: draws and scores the covers.
        catalogue: users, items and clicks for the pickers and the page.
        host: the address it is served on (``--host``): answered to besides the loopback names.
        allowed_hosts: more host names it answers to (``--allowed_hosts``).
    """
    app = FastAPI(title="icg cover explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, served=host, extra=allowed_hosts)
    templates = Jinja2Templates(directory=[TEMPLATES, STUDY_TEMPLATES])  # the study's base.html
    app.state.explorer, app.state.catalogue = explorer, catalogue

    def parse(values) -> tuple[str, Item | None, Settings]:
        """(user, item or None when there is none to show, settings) of a query or form; ExploreInputError if bad."""
        user = " ".join(str(values.get("user") or catalogue.default_user).split())
        key = str(values.get("item") or catalogue.default_item or "").strip()
        settings = Settings.parse(values, explorer.defaults)
        return user, catalogue.item(key) if key else None, settings

    def parse_or_400(request: Request) -> tuple[str, Item, Settings]:
        try:
            user, item, settings = parse(request.query_params)
        except ExploreInputError as err:
            raise HTTPException(400, str(err)) from None
        if item is None:
            raise HTTPException(400, "no item: give ?item= (a dataset item id) or upload one on the page")
        return user, item, settings

    def query(user: str, item: Item, settings: Settings) -> str:
        return urlencode({"user": user, "item": item.key, **settings.query()})

    def page(request: Request, values, error: str | None = None) -> Response:
        defaults = explorer.defaults
        context: dict[str, Any] = {
            "error": error,
            "users": catalogue.search_users(limit=PICKER_SIZE),
            "items": catalogue.search_items(limit=PICKER_SIZE),
            "has_dataset": catalogue.dataset is not None,
            "labels": METHOD_LABELS,
            "methods": METHODS,
            "unavailable": explorer.unavailable,
            "max_guidance": max(15.0, defaults.guidance_scale),
            "limit_guidance": MAX_GUIDANCE,
            "max_user_guidance": min(MAX_USER_GUIDANCE, max(8.0, defaults.user_guidance)),
            "max_upload_mib": MAX_UPLOAD_BYTES // 2**20,
            "defaults": defaults,
            "item": None,
            "item_text": str(values.get("item") or ""),
        }
        try:
            user, item, settings = parse(values)
        except ExploreInputError as err:
            context["error"] = error or str(err)
            user = " ".join(str(values.get("user") or catalogue.default_user).split())
            item, settings = None, defaults
        context |= {"user": user, "settings": settings, "known_user": explorer.knows(user),
                    "taste": catalogue.taste(user)}  # fmt: skip
        if item is not None:
            q = query(user, item, settings)
            clicks = catalogue.recent_clicks(user, item.key)
            context |= {
                "item": item,
                "reference": "/reference.png?" + urlencode({"item": item.key}),
                "covers": {m: f"/cover/{m}.png?{q}" for m in explorer.methods},
                "api": f"/api/covers?{q}",
                "clicks": [
                    {
                        "title": c.title,
                        "url": f"/click/{k}.png?" + urlencode({"user": user, "item": item.key}) if c.image else None,
                        "explore": "/?" + urlencode({"user": user, "item": c.item_id, **settings.query()}),
                    }
                    for k, c in enumerate(clicks)
                ],
            }
        status = 400 if context["error"] else 200
        response = templates.TemplateResponse(request, "explore.html", context, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index(request: Request):
        return page(request, request.query_params)

    @app.post("/upload")
    async def upload(request: Request):
        form = await request.form()
        file = form.get("image")
        try:
            if not isinstance(file, UploadFile) or not file.filename:
                raise ExploreInputError("choose the item's reference image (PNG, JPEG, WebP) to upload")
            data = await file.read(MAX_UPLOAD_BYTES + 1)
            item = catalogue.uploads.add(str(form.get("title") or ""), data, file.filename)
        except ExploreInputError as err:
            return page(request, form, str(err))
        user = " ".join(str(form.get("user") or catalogue.default_user).split())
        try:
            settings = Settings.parse(form, explorer.defaults)
        except ExploreInputError:
            settings = explorer.defaults
        return RedirectResponse("/?" + query(user, item, settings), status_code=303)

    @app.get("/cover/{method}.png")
    def cover(request: Request, method: str):
        if method not in METHODS:
            raise HTTPException(404, f"no method {method!r}; one of {', '.join(METHODS)}")
        result = explorer.covers(*parse_or_400(request))
        if method not in result.png:
            raise HTTPException(404, f"no {METHOD_LABELS[method]} covers here: {explorer.unavailable}")
        return Response(result.png[method], media_type="image/png", headers=IMAGE_HEADERS)

    @app.get("/api/covers")
    def api_covers(request: Request) -> dict[str, Any]:
        user, item, settings = parse_or_400(request)
        result = explorer.covers(user, item, settings)
        q = query(user, item, settings)
        return {
            "user": user,
            "known_user": result.known_user,
            "item": item.key,
            "title": item.title,
            "settings": settings.query(),
            "seed": str(result.seed),  # 63 bits: more than a JavaScript number holds
            "seconds": round(result.seconds, 3),
            "covers": {m: f"/cover/{m}.png?{q}" for m in result.png},
            "columns": ["reference", *result.png],
            "scores": [{"name": r.name, "label": r.label, "note": r.note, "values": r.values} for r in result.scores],
        }

    @app.get("/reference.png")
    def reference(item: str):
        try:
            found = catalogue.item(item)
        except ExploreInputError as err:
            raise HTTPException(404, str(err)) from None
        if isinstance(found.image, Path):
            return FileResponse(found.image, headers=IMAGE_HEADERS)
        return Response(png_bytes(found.image), media_type="image/png", headers=IMAGE_HEADERS)

    @app.get("/click/{k}.png")
    def click(k: int, user: str, item: str):
        clicks = catalogue.recent_clicks(user, item)
        if not 0 <= k < len(clicks) or clicks[k].image is None:
            raise HTTPException(404, "no such click")
        return FileResponse(clicks[k].image, headers=IMAGE_HEADERS)

    @app.get("/api/users")
    def api_users(q: str = "") -> list[str]:
        return catalogue.search_users(q)

    @app.get("/api/items")
    def api_items(q: str = "") -> list[dict[str, str]]:
        return [{"item_id": i, "title": t} for i, t in catalogue.search_items(q)]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        gen = explorer.generator
        return {"status": "ok", "users": len(gen.users), "methods": list(explorer.methods), "device": str(gen.device)}

    return app

"""The cover service as a FastAPI app: ``GET /cover?user=U&item=I`` answers which cover to show (docs/serving.md).

Routes: ``/cover`` (JSON: user, item, cover address, score, source, note), ``/covers/{path}`` (the pool's cover
files), ``/reference/{item}`` (the dataset's reference cover of an item), ``/healthz``. An answer is dictionary
look-ups in :class:`~icg.serving.pool.CoverPool` (no disk read); an image is a file the pool listed at start-up, so
an address that is not one (``..``, another folder) is 404 before any path is built. The study's
:class:`~icg.study.guard.RequestGuard` refuses a Host that is not this server's (400): DNS rebinding cannot read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response

from icg.serving.pool import CoverPool
from icg.study.guard import RequestGuard

IMAGE_CACHE = "public, max-age=86400"  # a cover file of a pool never changes under its name


def create_app(pool: CoverPool, host: str | None = None, allowed_hosts: Sequence[str] = ()) -> FastAPI:
    """The cover service over ``pool`` (serve it with ``icg.study.server``).

    Args:
        pool: the loaded pool.
        host: the address it is served on (``--host``): answered to besides the loopback names.
        allowed_hosts: more host names it answers to (``--allowed_hosts``).
    """
    app = FastAPI(title="icg cover service", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, served=host, extra=allowed_hosts)
    app.state.pool = pool

    @app.get("/cover")
    async def cover(user: str | None = None, item: str | None = None) -> JSONResponse:
        """Which cover to show ``user`` for ``item``; async: dictionary gets only, no thread hop."""
        missing = [name for name, value in (("user", user), ("item", item)) if not value]
        if missing:
            detail = f"missing or empty query parameter(s) {', '.join(missing)}: ask /cover?user=U&item=I"
            return JSONResponse({"detail": detail}, status_code=400)
        answer = pool.answer(user, item)
        if answer is None:
            return JSONResponse({"detail": pool.unknown_item(item), "user": user, "item": item}, status_code=404)
        return JSONResponse(answer.as_dict())

    @app.get("/covers/{path:path}")
    async def cover_file(path: str) -> Response:
        file = pool.files.get(path)
        if file is None:
            return JSONResponse({"detail": f"no cover {path!r} in this pool"}, status_code=404)
        return FileResponse(file, headers={"Cache-Control": IMAGE_CACHE})

    @app.get("/reference/{item:path}")
    async def reference(item: str) -> Response:
        file = pool.references.get(item)
        if file is None:
            return JSONResponse({"detail": f"no reference cover of item {item!r}"}, status_code=404)
        return FileResponse(file, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **pool.summary()}

    return app

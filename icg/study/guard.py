"""Who may ask the local web apps (``icg study serve``, ``icg explore``): the Host allow-list and the Origin check.

Both apps listen on loopback by default, yet a web page in the user's browser can still reach them: a cross-site
form can POST to ``http://127.0.0.1:8000/answer``, and DNS rebinding (``attacker.example`` re-resolving to
127.0.0.1) lets a page *read* the replies. :class:`RequestGuard` (an ASGI middleware) refuses both:

* **Host**: every request's ``Host`` header must name one of the allowed hosts: the loopback names (``localhost``,
  ``127.0.0.1``, ``[::1]``), the address being served (``--host``) and any added with ``--allowed_hosts``. Anything
  else (a rebound name, no Host at all) gets 400 and no data.
* **Origin**: a state-changing request (any method but GET, HEAD, OPTIONS) that carries an ``Origin`` (or, without
  one, a ``Referer``) must come from the very origin it is sent to (scheme and ``Host``), or from a host added with
  ``--allowed_hosts`` (a reverse proxy's public name); else 403 and nothing is stored. ``Origin: null`` (sandboxed
  frames, privacy-stripped posts) is refused. A request with neither header is let through: browsers send
  ``Origin`` on every cross-site POST (and on same-origin ones too), so such a request comes from a program (``icg
  study simulate``, curl) that a web page cannot make on a visitor's behalf.
* **Embedding**: a request the browser marks ``Sec-Fetch-Site: cross-site`` that is not a navigation (an ``<img>``,
  ``fetch`` or frame of another site's page) gets 403: another site may link to the apps, but may not make a
  visitor's browser draw covers or load pages inside its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(host: str) -> str:
    """``host`` without its port and IPv6 brackets, lower-cased: ``[::1]:8000`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(served: str | None = None, extra: Iterable[str] = ()) -> tuple[frozenset[str], frozenset[str]]:
    """(every host name the app answers to, the names added on purpose) for an app served on ``served``.

    Args:
        served: the ``--host`` the server listens on, as typed (a wildcard such as 0.0.0.0 adds only itself: name
            the addresses people will type with ``extra``).
        extra: more names (``--allowed_hosts a,b``), e.g. the machine's name on the network or a proxy's.
    """
    added = frozenset(host_name(h) for h in extra if h.strip())
    names = set(LOOPBACK_NAMES) | added
    if served:
        names.add(host_name(served))
    return frozenset(names), added


def parse_allowed_hosts(value: str | None) -> list[str]:
    """``--allowed_hosts a,b`` as a list of names."""
    return [h.strip() for h in (value or "").split(",") if h.strip()]


class RequestGuard:
    """ASGI middleware: 400 for a Host not allowed, 403 for a cross-origin state-changing request (module docstring).

    Args:
        app: the app to guard.
        served: the address being served (``--host``).
        extra: the names added with ``--allowed_hosts``.
    """

    def __init__(self, app: ASGIApp, served: str | None = None, extra: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts, self.added = allowed_hosts(served, extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if host_name(host) not in self.hosts:
            shown = repr(host) if host else "no Host header"
            message = f"Host {shown} is not one this server answers to; start it with --allowed_hosts to add a name"
            await PlainTextResponse(message, status_code=400)(scope, receive, send)
            return
        if headers.get("sec-fetch-site") == "cross-site" and headers.get("sec-fetch-mode") != "navigate":
            message = "a page of another site may not load this server's pages or images (open it directly)"
            await PlainTextResponse(message, status_code=403)(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            refusal = self.cross_origin(headers, host, scope.get("scheme", "http"))
            if refusal is not None:
                await PlainTextResponse(refusal, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def cross_origin(self, headers: dict[str, str], host: str, scheme: str) -> str | None:
        """Why a state-changing request is refused, or None when its Origin/Referer is this server (or absent)."""
        name, sender = ("Origin", headers.get("origin")) if "origin" in headers else ("Referer", headers.get("referer"))
        if sender is None:
            return None
        parts = urlsplit(sender.strip())
        if parts.scheme and parts.netloc:
            if parts.scheme == scheme and parts.netloc.lower() == host.strip().lower():
                return None  # same origin
            if host_name(parts.netloc) in self.added:
                return None  # a name added on purpose (a reverse proxy's public address)
        return f"{name} {sender!r} is not this server: answers are taken only from its own pages"

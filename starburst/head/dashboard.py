"""The head's web dashboard: one page on 127.0.0.1, live over server-sent events.

Served by aiohttp from the head's own event loop. Like Jupyter, every route needs the random token
that is part of the URL (``http://127.0.0.1:PORT/?token=...``); the URL is in ``head.json``
(owner-only, like the rest of ``STARBURST_HOME``), printed by ``init()`` and ``starburst status``.
The page, its script and style ship inside the package: nothing is loaded from the internet.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import socket
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from aiohttp import web

    from .server import Head

log = logging.getLogger("starburst.head")

#: Seconds between live updates pushed to an open page.
UPDATE_S = 1.0

_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> str:
    return resources.files("starburst.head").joinpath("static").joinpath(name).read_text(encoding="utf-8")


class Dashboard:
    """``Dashboard(head)`` binds its socket at once, so ``url`` (with the token) is known before
    ``await start()`` has imported aiohttp (0.1-0.3 s, done on a thread) and serves the page;
    a browser that comes early waits in the socket's backlog."""

    def __init__(self, head: "Head", host: str = "127.0.0.1", port: int = 0) -> None:
        self.head = head
        self.token = secrets.token_urlsafe(24)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}/?token={self.token}"
        self._runner: web.AppRunner | None = None
        self._encoded: tuple[float, bytes] = (0.0, b"")

    def encoded(self) -> bytes:
        """The snapshot as JSON, made at most once per ``UPDATE_S`` whoever is reading (every
        viewer's stream and every /api/state ask the same)."""
        made, data = self._encoded
        now = time.monotonic()
        if not data or now - made >= UPDATE_S:
            data = json.dumps(self.snapshot(), separators=(",", ":")).encode()
            self._encoded = (now, data)
        return data

    def snapshot(self) -> dict[str, Any]:
        head = self.head
        snap = head.observer.snapshot(head.provider.status())
        snap["cluster"].setdefault("provider", head.provider.name)
        snap["head"] = {"address": head.address, "cluster_id": head.cluster_id}
        return snap

    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        from aiohttp import web

        given = request.query.get("token", "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise web.HTTPForbidden(text="starburst dashboard: open the URL with its token "
                                         "(printed by init() and 'starburst status')", headers=_HEADERS)
        response = await handler(request)
        response.headers.update(_HEADERS)
        return response

    async def _page(self, request: web.Request) -> web.Response:
        from aiohttp import web

        html = _asset("dashboard.html").replace("{{token}}", self.token)
        return web.Response(text=html, content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        from aiohttp import web

        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(text=_asset(name), content_type=_STATIC[name])

    async def _state(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(body=self.encoded(), content_type="application/json")

    async def _timeline(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response({"traceEvents": self.head.observer.trace(), "displayTimeUnit": "ms"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **_HEADERS})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"data: " + self.encoded() + b"\n\n")
                await asyncio.sleep(UPDATE_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        web = await loop.run_in_executor(None, _import_web)
        @web.middleware
        async def auth(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
            return await self._auth(request, handler)

        app = web.Application(middlewares=[auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/timeline", self._timeline)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._sock.close()


def _import_web():
    from aiohttp import web

    return web

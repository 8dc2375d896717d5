"""The dashboard's web app (Starlette): a read-only page, its updates as server-sent events,
the same data as JSON, and the page's own script and style.

Every request must carry the dashboard's token in its query (``?token=...``), compared in
constant time; any other gets 403 and no data. Only GET (and HEAD) is served: nothing here
changes anything. The page loads nothing from another host (its Content-Security-Policy
says so to the browser too).

Routes:

- ``/``: the page, with the current snapshot in it (``?job=<id>`` picks the job shown);
- ``/events``: a server-sent event stream; every ``interval`` seconds the sections of the
  page that changed, as a JSON object of section → HTML;
- ``/snapshot.json``: the snapshot as plain data;
- ``/static/dashboard.js``, ``/static/dashboard.css``: the page's script and style.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib.resources import files
from urllib.parse import parse_qs, urlsplit, urlunsplit

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from researcher.dashboard.page import page_html, sections
from researcher.dashboard.snapshot import Snapshot, StoreReader
from researcher.dashboard.watch import BrokerWatch

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
"""Headers of every response: nothing from elsewhere, no token in a referrer, no caching."""

_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


class TokenGate:
    """ASGI middleware: a request without the right ``token`` in its query gets 403."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [""])[0].encode()
        if not hmac.compare_digest(given, self._token):
            refused = Response(
                "403 forbidden: this dashboard needs the token of the URL it printed\n",
                status_code=403, media_type="text/plain", headers=SECURITY_HEADERS,
            )  # fmt: skip
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Dashboard:
    """Where the page's data comes from, and how often it is taken.

    Args:
        reader: the job store.
        watch: nodes and queues (its :meth:`~BrokerWatch.run` runs beside the app).
        token: the token every request must carry.
        interval: seconds between two snapshots sent to an open page.
    """

    def __init__(
        self, reader: StoreReader, watch: BrokerWatch, *, token: str, interval: float = 1.0
    ) -> None:
        self.reader = reader
        self.watch = watch
        self.token = token
        self.interval = interval
        self.closing = False
        """Set to end every event stream by its next update (safe from a signal handler)."""
        self._closed: anyio.Event | None = None
        self._cache: dict[str | None, tuple[float, Snapshot]] = {}

    def close(self) -> None:
        """End every event stream now, so that the server can stop without cutting one off."""
        self.closing = True
        if self._closed is not None:
            self._closed.set()

    async def snapshot(self, job_id: str | None) -> Snapshot:
        """The current snapshot; pages open at once share one taken less than half an
        interval ago."""
        now = time.monotonic()
        cached = self._cache.get(job_id)
        if cached is not None and now - cached[0] < self.interval / 2:
            return cached[1]
        store = await anyio.to_thread.run_sync(self.reader.read, job_id)
        settings = self.watch.settings
        also = store.job.job.nodes if store.job else []
        taken = Snapshot(
            taken_at=datetime.now(UTC).isoformat(), namespace=settings.namespace,
            management_url=_without_credentials(settings.management_url), store=store,
            sources=self.watch.sources(), nodes=self.watch.nodes(also),
            queues=self.watch.queues(),
        )  # fmt: skip
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[job_id] = (now, taken)
        return taken

    def app(self) -> ASGIApp:
        """The ASGI app, behind its token."""
        routes = [
            Route("/", self._page, methods=["GET"]),
            Route("/events", self._events, methods=["GET"]),
            Route("/snapshot.json", self._json, methods=["GET"]),
            Route("/static/{name}", self._static, methods=["GET"]),
        ]
        return TokenGate(Starlette(routes=routes), self.token)

    async def _page(self, request: Request) -> Response:
        job_id = request.query_params.get("job")
        snapshot = await self.snapshot(job_id)
        return HTMLResponse(page_html(snapshot, self.token, job_id), headers=SECURITY_HEADERS)

    async def _json(self, request: Request) -> Response:
        snapshot = await self.snapshot(request.query_params.get("job"))
        return JSONResponse(snapshot.as_dict(), headers=SECURITY_HEADERS)

    async def _static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response("not found\n", 404, media_type="text/plain", headers=SECURITY_HEADERS)
        body = (files("researcher.dashboard") / "static" / name).read_text(encoding="utf-8")
        return Response(body, media_type=_STATIC[name], headers=SECURITY_HEADERS)

    async def _events(self, request: Request) -> Response:
        job_id = request.query_params.get("job")
        headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(
            self._stream(job_id),
            media_type="text/event-stream", headers=headers,
        )  # fmt: skip

    async def _stream(self, job_id: str | None) -> AsyncIterator[str]:
        """The sections that changed since the last event, every interval; a comment when
        nothing did, so a closed page is noticed."""
        yield "retry: 2000\n\n"
        if self._closed is None:
            self._closed = anyio.Event()
        closed = self._closed
        sent: dict[str, str] = {}
        while not self.closing:
            snapshot = await self.snapshot(job_id)
            current = sections(snapshot, self.token)
            changed = {key: html for key, html in current.items() if sent.get(key) != html}
            if changed:
                yield f"data: {json.dumps(changed)}\n\n"
                sent = current
            else:
                yield ": nothing changed\n\n"
            with anyio.move_on_after(self.interval):
                await closed.wait()


def _without_credentials(url: str) -> str:
    """``url`` without a user or password in it, to show on the page."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))

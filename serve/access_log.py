"""One line per HTTP request for people: method, route, status, variant, milliseconds, request id.

:class:`AccessLogMiddleware` is a plain ASGI middleware around the ingress's FastAPI app. When a
response has been sent it logs one INFO record to the ``pixelfleet.access`` logger, e.g.::

    POST /v1/{family}/{operation} 200 ocr/tesseract 41 ms 3f1c0a2e...

The route is the template FastAPI matched (so ids and names in the path do not make every line
different), ``-`` for an unknown path; the variant is the ``X-Pixelfleet-Variant`` response
header the ingress sets, ``-`` where no model ran. In a Serve replica the record goes to the
replica's stderr (Ray keeps it in the worker's log file) with the prefix :data:`MARKER`;
``pixelfleet up`` prints the lines carrying it, without Ray's per-process prefix, and by default
nothing else that Ray's processes write (``serve/runner.py``, :func:`console_line`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Awaitable, Callable

logger = logging.getLogger("pixelfleet.access")
MARKER = "pixelfleet-access "
"""Prefix of every access line on a replica's stderr, for the driver to pick them out."""

VARIANT_HEADER = b"x-pixelfleet-variant"

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def install_handler() -> None:
    """Send ``pixelfleet.access`` records to the process's stderr (``sys.__stderr__``, which Ray
    keeps in the worker's log file and streams to the driver) as ``MARKER + message``, once per process;
    they do not propagate to the root logger, so they are not written twice."""
    if any(getattr(handler, "_pixelfleet_access", False) for handler in logger.handlers):
        return
    handler = logging.StreamHandler(sys.__stderr__)  # the process's own: Serve may redirect sys.stderr to its log
    handler.setFormatter(logging.Formatter(MARKER + "%(message)s"))
    handler._pixelfleet_access = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def format_line(method: str, route: str, status: int, variant: str, milliseconds: float, request_id: str) -> str:
    """``METHOD ROUTE STATUS VARIANT MS ms REQUEST_ID`` (``-`` for an empty field)."""
    return f"{method} {route or '-'} {status} {variant or '-'} {milliseconds:.0f} ms {request_id or '-'}"


def console_line(line: str) -> str | None:
    """The access line in one line of a Ray worker's output, or None for any other line."""
    position = line.find(MARKER)
    return line[position + len(MARKER):] if position >= 0 else None


class AccessLogMiddleware:
    """ASGI middleware: logs :func:`format_line` for every HTTP request once its response is sent
    (or fails: status 500). ``request_id``: a function giving the request's id (Serve's), called
    when the line is written."""

    def __init__(self, app: ASGIApp, request_id: Callable[[], str] = lambda: "") -> None:
        self.app = app
        self.request_id = request_id
        install_handler()

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, variant = 500, ""

        async def send_and_note(message: Message) -> None:
            nonlocal status, variant
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == VARIANT_HEADER:
                        variant = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "")
            request_id = self.request_id() or (scope.get("state") or {}).get("request_id", "")
            logger.info(format_line(scope.get("method", ""), route, status, variant, (time.perf_counter() - started) * 1000, request_id))

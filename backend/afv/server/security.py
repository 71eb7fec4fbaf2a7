"""Request gatekeeping in front of every route, as plain ASGI middleware.

Order of checks (first failure answers):
1. Origin: browsers add `Origin` to cross-site requests; any origin not explicitly allowed
   gets 403, so a web page cannot drive the backend even if it learned the port.
2. Host: when bound to loopback, the Host header must name a loopback host (defeats DNS
   rebinding, where a page's own hostname resolves to 127.0.0.1).
3. Bearer token on everything except GET /v1/health, compared in constant time.
4. Request bodies must declare Content-Length within the limit (411 / 413) before any byte
   of the body is read.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Awaitable, Callable

from .config import ServerConfig, is_loopback

PUBLIC_PATHS = {"/v1/health"}
log = logging.getLogger("afv.server")

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


async def send_error(send: Callable, status: int, message: str, hint: str = "", headers: list | None = None) -> None:
    body = json.dumps({"error": message, "hint": hint, "status": status}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:port
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Gatekeeper:
    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self._token = config.token.encode()
        self._origins = {o.rstrip("/").lower() for o in config.allow_origins}

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/").lower() not in self._origins:
            return await send_error(
                send, 403, f"requests from browser origin '{origin}' are refused", "start the server with --allow-origin to allow one"
            )
        if self.config.loopback and not is_loopback(_host_name(headers.get("host", "127.0.0.1"))):
            return await send_error(send, 403, "Host header does not name this loopback server", "connect to 127.0.0.1")
        if scope["path"] not in PUBLIC_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
                return await send_error(
                    send,
                    401,
                    "missing or wrong bearer token",
                    "send 'Authorization: Bearer <token>' with the token from the server's token file",
                    [(b"www-authenticate", b"Bearer")],
                )
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None:
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    return await send_error(send, 411, "request bodies must declare Content-Length")
            else:
                try:
                    n = int(length)
                except ValueError:
                    return await send_error(send, 400, f"bad Content-Length '{length}'")
                limit = self.config.limits.max_request_bytes
                if n > limit:
                    return await send_error(
                        send, 413, f"request body of {n} bytes is over the {limit}-byte limit",
                        "pass a local video_path instead of uploading, or raise --max-upload-mb",
                    )
        return await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Callable, send: Callable) -> None:
        """The app, with a last line of defence: an unexpected exception before the response
        started becomes a JSON 500 on a connection that stays usable (and one log line)."""
        started = completed = False

        async def tracking_send(message: dict) -> None:
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the bug is logged; the client gets JSON
            log.error("unhandled error on %s %s: %s: %s", scope.get("method"), scope.get("path"), type(exc).__name__,
                      str(exc)[:300], exc_info=exc)
            if completed:  # the app's own error handler answered (JSON): keep the connection
                return
            if started:
                raise
            await send_error(send, 500, f"internal error: {type(exc).__name__}", "see the server log")

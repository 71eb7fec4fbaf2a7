"""Connection hygiene uvicorn does not provide itself: a header timeout, a body idle timeout,
and error logging that cannot flood the disk.

uvicorn's h11 protocol starts its keep-alive timer only after a response, so a client that
connects and never finishes its headers, or sends a body shorter than its Content-Length,
holds a connection (and a file descriptor) forever. `TimedH11Protocol` closes a connection
whose client has been silent for `header_s` while we wait for headers, or `body_idle_s`
while we wait for the rest of a body; a request being answered is never cut.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class TimedH11Protocol(H11Protocol):
    header_s: float = 10.0
    body_idle_s: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._silence: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_silence", None) is not None:
            self._silence.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
        waiting_body = self.conn.their_state == h11.SEND_BODY
        self._silence = self.loop.call_later(self.body_idle_s if waiting_body else self.header_s, self._on_silence)

    def _on_silence(self) -> None:
        self._silence = None
        state = self.conn.their_state
        if state == h11.SEND_BODY or (state == h11.IDLE and self.cycle is None):
            self.transport.close()  # the app (if any) sees a disconnect; nothing half-done is kept
        elif not self.transport.is_closing():
            self._arm()  # a request is being handled or answered: look again later


def timed_protocol(header_s: float, body_idle_s: float) -> type[TimedH11Protocol]:
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_s": header_s, "body_idle_s": body_idle_s})


class RateLimitFilter(logging.Filter):
    """At most `burst` records per (logger, message template) per `window_s`; the rest are
    dropped and counted, and the count is reported with the next record let through."""

    def __init__(self, burst: int = 10, window_s: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._seen: dict[tuple[str, Any], list[float]] = {}  # key -> [window start, count, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 1000:
                self._seen.clear()
            start, count, dropped = self._seen.get(key, (now, 0, 0))
            if now - start > self.window_s:
                start, count = now, 0
            count += 1
            if count > self.burst:
                self._seen[key] = [start, count, dropped + 1]
                return False
            self._seen[key] = [start, count, 0]
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar messages suppressed]"
        return True


def limit_log_rate(names: tuple[str, ...] = ("uvicorn", "uvicorn.error", "asyncio", "afv.server")) -> RateLimitFilter:
    """Attach one RateLimitFilter to these loggers (filters act on records logged to them)."""
    f = RateLimitFilter()
    for name in names:
        logging.getLogger(name).addFilter(f)
    return f

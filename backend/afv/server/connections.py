"""Connection hygiene uvicorn does not provide itself: a header timeout, a body idle timeout,
and error logging that cannot flood the disk.

uvicorn's h11 protocol starts its keep-alive timer only after a response, so a client that
connects and never finishes its headers, or sends a body shorter than its Content-Length,
holds a connection (and a file descriptor) forever. `TimedH11Protocol` closes a connection
whose request headers are not complete `header_s` after we started waiting for them (silent
or trickling), or whose body has been silent for `body_idle_s`; a request being handled or
answered is never cut.
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
        self._headers_by: float | None = None  # deadline for the headers of the request being awaited
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_headers() and self.loop.time() > self._headers_by:
            self.transport.close()  # headers trickled in for longer than header_s (slow loris)
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_silence", None) is not None:
            self._silence.cancel()
        super().connection_lost(exc)

    def _waiting_headers(self) -> bool:
        """True while the next request's headers are awaited; sets their deadline on entry."""
        if self.conn.their_state != h11.IDLE:
            self._headers_by = None
            return False
        if self._headers_by is None:
            self._headers_by = self.loop.time() + self.header_s
        return True

    def _arm(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
        if self._waiting_headers():
            delay = max(0.0, self._headers_by - self.loop.time())
        else:
            delay = self.body_idle_s if self.conn.their_state == h11.SEND_BODY else self.header_s
        self._silence = self.loop.call_later(delay, self._on_silence)

    def _on_silence(self) -> None:
        self._silence = None
        if self.transport.is_closing():
            return
        if getattr(self.flow, "read_paused", False):
            self._arm()  # we stopped reading (the app has not taken the last chunk yet): not the client's silence
        elif self._waiting_headers():
            if self.loop.time() >= self._headers_by:
                self.transport.close()  # no complete request headers in time: idle socket or slow headers
            else:
                self._arm()
        elif self.conn.their_state == h11.SEND_BODY:
            self.transport.close()  # the body stalled: the app sees a disconnect; nothing half-done is kept
        else:
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

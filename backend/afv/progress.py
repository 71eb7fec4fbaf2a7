"""Progress reporting and cooperative cancellation shared by every engine.

Engines declare their stages with relative weights, report fractions within the current
stage and call `check()` between steps; `check()` raises Cancelled once the token is set,
so a cancel takes effect within one step (engines keep steps well under a second).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from .errors import Cancelled


class CancelToken:
    """Thread-safe flag set by whoever wants the work to stop (CLI Ctrl-C, server cancel)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # current stage name, e.g. "tracking"
    fraction: float  # overall progress in [0, 1]
    stage_fraction: float  # progress within the stage in [0, 1]
    elapsed_s: float
    eta_s: float | None  # None until there is enough progress to extrapolate


class Progress:
    """Maps (stage, fraction within stage) to overall progress and calls `on_event`.

    stages: ordered {name: relative weight}. Unknown stage names are allowed (weight 0) so
    an engine can report fine-grained sub-steps without touching the plan.
    """

    def __init__(
        self,
        stages: dict[str, float] | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.cancel_token = cancel or CancelToken()
        self._on_event = on_event
        self._t0 = time.monotonic()
        self._stage = ""
        self._stage_fraction = 0.0
        self._timings: dict[str, float] = {}
        self._stage_t0 = self._t0
        self.set_plan(stages or {})

    def set_plan(self, stages: dict[str, float]) -> None:
        total = sum(stages.values()) or 1.0
        self._weights = {k: v / total for k, v in stages.items()}
        self._order = list(stages)

    def _done_before(self, stage: str) -> float:
        if stage not in self._weights:
            return self._last_fraction if hasattr(self, "_last_fraction") else 0.0
        idx = self._order.index(stage)
        return sum(self._weights[s] for s in self._order[:idx])

    def start(self, stage: str) -> None:
        """Begin `stage`; the previous stage's wall time goes into `timings`."""
        self.check()
        now = time.monotonic()
        if self._stage:
            self._timings[self._stage] = self._timings.get(self._stage, 0.0) + now - self._stage_t0
        self._stage, self._stage_t0, self._stage_fraction = stage, now, 0.0
        self._emit()

    def update(self, stage_fraction: float) -> None:
        """Report progress within the current stage, and honour a pending cancel."""
        self.check()
        self._stage_fraction = min(max(float(stage_fraction), 0.0), 1.0)
        self._emit()

    def finish(self) -> dict[str, float]:
        """Close the last stage; returns per-stage wall times in seconds."""
        now = time.monotonic()
        if self._stage:
            self._timings[self._stage] = self._timings.get(self._stage, 0.0) + now - self._stage_t0
        self._stage = "done"
        self._stage_fraction = 1.0
        self._last_fraction = 1.0
        if self._on_event:
            self._on_event(ProgressEvent("done", 1.0, 1.0, now - self._t0, 0.0))
        return dict(self._timings)

    @property
    def timings(self) -> dict[str, float]:
        return dict(self._timings)

    def check(self) -> None:
        self.cancel_token.raise_if_cancelled()

    def _emit(self) -> None:
        w = self._weights.get(self._stage, 0.0)
        frac = min(self._done_before(self._stage) + w * self._stage_fraction, 1.0)
        # never move the bar backwards (engines may revisit work, e.g. window refinement)
        frac = max(frac, getattr(self, "_last_fraction", 0.0))
        self._last_fraction = frac
        elapsed = time.monotonic() - self._t0
        eta = elapsed * (1.0 - frac) / frac if frac > 0.02 else None
        if self._on_event:
            self._on_event(ProgressEvent(self._stage, frac, self._stage_fraction, elapsed, eta))

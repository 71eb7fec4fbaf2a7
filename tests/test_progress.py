"""Progress fractions, timings and cancel bookkeeping."""

from __future__ import annotations

import pytest

from afv.errors import Cancelled
from afv.progress import CancelToken, Progress


def test_progress_fractions_timings_and_cancel():
    events = []
    token = CancelToken()
    p = Progress({"a": 1, "b": 3}, on_event=events.append, cancel=token)
    p.start("a")
    p.update(1.0)
    p.start("b")
    p.update(0.5)
    assert events[-1].fraction == pytest.approx(0.25 + 0.75 * 0.5)
    p.update(0.2)  # an engine going back within its stage does not move the bar backwards
    assert events[-1].fraction == pytest.approx(0.25 + 0.75 * 0.5)
    timings = p.finish()
    assert set(timings) == {"a", "b"} and events[-1].fraction == 1.0
    token.cancel()
    with pytest.raises(Cancelled):
        p.update(0.1)

"""CPU thread count for optimisers made of many small tensor ops."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def cpu_threads(device: torch.device, n: int):
    """Run with n torch intra-op threads on CPU devices (restored afterwards). The fit's inner
    loop is thousands of small tensor ops: with more threads each op pays a hand-off, and the
    fit ran 4x slower with 2 threads than with 1 on a 2-core machine. n <= 0 or a GPU device:
    unchanged."""
    before = torch.get_num_threads()
    change = device.type == "cpu" and n > 0 and n != before
    if change:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)

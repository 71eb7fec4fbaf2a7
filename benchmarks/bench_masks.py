"""Time and score the computed mask sources on synthetic clips at working resolution.

Usage: python benchmarks/bench_masks.py [--size 512] [--frames 48]
Prints one line per method: seconds per frame and mean IoU against the rendered alpha.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from afv_dev import synthetic as S  # noqa: E402
from afv.geometry.silhouette import mask_iou as iou  # noqa: E402
from afv.masks import chroma_key, keep_consistent_components, median_subtraction  # noqa: E402
from test_masks import GREEN, composite, sliding_box, textured_background  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=48)
    a = ap.parse_args()
    size = (a.size, a.size)
    cyl = S.render_sequence(S.bending_cylinder(n_frames=a.frames, size=size))
    slide = S.render_sequence(sliding_box(n_frames=a.frames, size=size))
    cases = {
        "chroma": (lambda f: chroma_key(f)[0], composite(cyl, GREEN, 3.0, 0), cyl[..., 3] > 127),
        "median": (lambda f: median_subtraction(f)[0], composite(slide, textured_background(a.size, a.size, 1), 3.0, 0), slide[..., 3] > 127),
    }
    for name, (fn, frames, gt) in cases.items():
        t0 = time.perf_counter()
        m = fn(frames)
        t1 = time.perf_counter()
        m = keep_consistent_components(m)
        t2 = time.perf_counter()
        score = np.mean([iou(p, g) for p, g in zip(m, gt)])
        print(f"{name:7s} {a.size}px x {a.frames}: {1000 * (t1 - t0) / a.frames:6.1f} ms/frame + consistency {1000 * (t2 - t1) / a.frames:5.1f} ms/frame, mean IoU {score:.4f}")


if __name__ == "__main__":
    main()

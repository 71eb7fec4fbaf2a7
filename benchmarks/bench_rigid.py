"""Benchmark: decode + masks + `rigid` on 240 frames at 512 px with a ~25k-vertex mesh.

The clip is the textured rigid box (afv_dev.synthetic.rigid_sequence) written as PNG frames
with alpha (masks = alpha); the mesh given to the engine is the same box subdivided to
24,578 vertices (flat faces, so the rendering is identical). Prints per-stage wall times
and the per-vertex error against the ground truth. Usage:
    python benchmarks/bench_rigid.py [--frames 240] [--size 512] [--subdiv 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from afv.mesh import Mesh
from afv.pipeline import animate, parse_request
from afv.progress import Progress
from afv_dev.synthetic import render_sequence, rigid_sequence, write_png_folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--subdiv", type=int, default=6)
    ap.add_argument("--option", "-o", action="append", default=[])
    ap.add_argument("--cache", help="an .npy file for the rendered RGBA frames (rendering is not timed and slow)")
    args = ap.parse_args()

    t0 = time.monotonic()
    if args.cache and Path(args.cache).is_file():
        rgba = np.load(args.cache)
    else:
        view = rigid_sequence(args.frames, (args.size, args.size), subdivisions=3)
        rgba = render_sequence(view, background=(0.25, 0.3, 0.35))
        if args.cache:
            np.save(args.cache, rgba)
    dense = rigid_sequence(args.frames, (args.size, args.size), subdivisions=args.subdiv)
    print(f"setup: rendered {args.frames} frames at {args.size} px in {time.monotonic() - t0:.1f}s; "
          f"mesh {dense.mesh.n_vertices} vertices, {len(dense.mesh.faces)} faces")
    with tempfile.TemporaryDirectory(prefix="afv-bench-rigid-") as tmp:
        write_png_folder(rgba, Path(tmp) / "frames")
        opts = dict(o.split("=", 1) for o in args.option)
        req = parse_request(mesh=Mesh(dense.mesh.vertices, dense.mesh.faces), video=Path(tmp) / "frames",
                             masks="alpha", camera=dense.camera, engine="rigid", device="cpu", max_size=args.size,
                             fps=24.0, options=opts)
        t1 = time.monotonic()
        tracks = animate(req, Progress())
        total = time.monotonic() - t1
    diag = dense.mesh.bbox_diagonal()
    err = np.linalg.norm(tracks.displacements - dense.displacements, axis=2) / diag
    print("timings_s:", json.dumps(tracks.meta["timings_s"]))
    print(f"total: {total:.2f}s for {args.frames} frames ({args.frames / total:.1f} fps)")
    print(f"error (% of bbox diagonal): mean {100 * err.mean():.2f}, p95 {100 * np.percentile(err, 95):.2f}, "
          f"max {100 * err.max():.2f}; seeds {tracks.meta['info']['seeds']}, re-lifts {tracks.meta['info']['relifts']}, "
          f"failed frames {tracks.meta['info']['failed_frames']}")


if __name__ == "__main__":
    main()

"""Benchmark the automatic skeleton (afv.deform.skeleton.auto_rig): set-up time, bones, progress.

Usage: PYTHONPATH=backend python benchmarks/bench_skeleton.py [--data ../shared/data] [--large 217000]
Prints one line per mesh: vertices, seconds, bones, and the longest gap between progress
callbacks (the bar must keep moving). Meshes: the procedural rigged figure (its own rig dropped),
the real assets when the data folder is there, and a large mesh (the figure, subdivided to about
--large vertices). Target (issue 13): a 217k-vertex mesh set up in <= 20 s on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from afv.deform.skeleton import auto_rig
from afv.mesh import Mesh, load_mesh
from afv_dev import synthetic


def large_figure(n_target: int) -> Mesh:
    """The figure at a coarse spacing, midpoint-subdivided twice: about n_target vertices."""
    import trimesh.remesh

    spacing = 0.03 * np.sqrt(7546 * 16 / n_target)  # 7.5k vertices at 0.03; x16 per two subdivisions
    m = synthetic.figure_rig_mesh(spacing=spacing)
    v, f = m.vertices, m.faces
    for _ in range(2):
        v, f = trimesh.remesh.subdivide(v, f)
    return Mesh(np.asarray(v, np.float32), np.asarray(f, np.int32))


def bench(name: str, mesh: Mesh) -> None:
    mesh = Mesh(mesh.vertices, mesh.faces)  # never the asset's own rig
    stamps: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    rig = auto_rig(mesh, progress=lambda f: stamps.append((time.perf_counter() - t0, f)))
    dt = time.perf_counter() - t0
    times = [0.0] + [t for t, _ in stamps] + [dt]
    gap = max(np.diff(times))
    print(f"{name}: N={mesh.n_vertices} auto_rig {dt:.2f}s, {rig.n_bones} bones, "
          f"{len(stamps)} progress calls, longest gap {gap:.2f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--large", type=int, default=217_000)
    args = ap.parse_args()
    bench("figure", synthetic.figure_rig_mesh())
    assets = Path(args.data) / "assets"
    for name in ("Fox.glb", "CesiumMan.glb", "RobotExpressive.glb", "RiggedSimple.glb"):
        if (assets / name).is_file():
            bench(name, load_mesh(assets / name))
    if args.large:
        bench("figure_large", large_figure(args.large))


if __name__ == "__main__":
    main()

"""Score and time the `fit` engine on the procedural sequences (ground truth by construction).

Usage: python benchmarks/bench_fit.py [--device cpu|cuda] [--size 512] [--frames 16]
           [--vertices 20000] [--sequences bending_cylinder,multi_part] [--no-estimate]
Per sequence prints: mean per-vertex error (% of bbox diagonal) of fit with the known camera,
of fit with an estimated camera, of the static baseline; jitter (mean |acceleration|, % of
diagonal) of fit and of the ground truth; per-stage wall times; and the process's peak RSS so far
(resource.getrusage: run one long clip, e.g. --frames 240 --size 128, to check that memory stays bounded). --vertices densifies the
mesh by midpoint subdivision (its ground truth subdivides the same way) to time large meshes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from afv_dev import synthetic as S  # noqa: E402
from afv.engines.base import EngineInput  # noqa: E402
from afv.engines.fit import FitEngine, FitOptions  # noqa: E402
from afv.mesh import Mesh  # noqa: E402
from afv.progress import Progress  # noqa: E402
from afv.video import VideoClip  # noqa: E402


def densify(seq: S.Sequence, min_vertices: int) -> S.Sequence:
    """Midpoint-subdivide until the mesh has >= min_vertices; every frame the same way."""
    import trimesh.remesh

    v, f, pos = seq.mesh.vertices, seq.mesh.faces, seq.positions
    while len(v) < min_vertices:
        nv, nf = trimesh.remesh.subdivide(v, f)
        pos = np.stack([trimesh.remesh.subdivide(p, f)[0] for p in pos]).astype(np.float32)
        v, f = nv.astype(np.float32), nf.astype(np.int32)
    return replace(seq, mesh=Mesh(v, f), positions=pos)


def err_pct(seq: S.Sequence, disp: np.ndarray) -> float:
    return float(np.linalg.norm(disp - seq.displacements, axis=-1).mean() / seq.mesh.bbox_diagonal() * 100)


def jitter_pct(seq: S.Sequence, disp: np.ndarray) -> float:
    p = seq.mesh.vertices[None] + disp
    return float(np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=-1).mean() / seq.mesh.bbox_diagonal() * 100)


def run(seq, rgba, camera, device, options) -> tuple[np.ndarray, dict, float]:
    T, H, W = rgba.shape[:3]
    clip = VideoClip(np.ascontiguousarray(rgba[..., :3]), None, np.arange(T, dtype=np.int32), seq.fps, (W, H), 1.0)
    prog = Progress(FitEngine.stages)
    t0 = time.perf_counter()
    out = FitEngine(FitOptions(**options)).run(EngineInput(seq.mesh, clip, rgba[..., 3] > 0, camera, device, 0), prog)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    return out.displacements, {k: round(v, 2) for k, v in prog.finish().items()}, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--vertices", type=int, default=0)
    ap.add_argument("--sequences", default="bending_cylinder,waving_sheet,multi_part,rigid_box")
    ap.add_argument("--no-estimate", action="store_true")
    ap.add_argument("--option", action="append", default=[], help="fit option key=value (repeatable)")
    a = ap.parse_args()
    device = torch.device(a.device)
    options = dict(kv.split("=", 1) for kv in a.option)
    from afv.engines.base import parse_options

    options = {k: getattr(parse_options(FitOptions, options), k) for k in options}
    for name in a.sequences.split(","):
        seq = S.SEQUENCES[name](n_frames=a.frames, size=(a.size, a.size))
        if a.vertices:
            seq = densify(seq, a.vertices)
        rgba = S.render_sequence(seq, background=(0.25, 0.3, 0.35), device=a.device)
        disp, timings, total = run(seq, rgba, seq.camera, device, options)
        line = (f"{name:17s} {seq.mesh.n_vertices:6d} v {a.frames:3d} f {a.size}px  fit {err_pct(seq, disp):5.2f}%  "
                f"static {err_pct(seq, 0 * disp):5.2f}%  jitter {jitter_pct(seq, disp):.3f}% (gt {jitter_pct(seq, seq.displacements):.3f}%)  "
                f"{total:6.1f}s {timings}")
        if not a.no_estimate:
            disp_e, timings_e, total_e = run(seq, rgba, None, device, options)
            line += f"  | estimated camera: {err_pct(seq, disp_e):5.2f}%  {total_e:6.1f}s"
        import resource

        line += f"  | peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        print(line, flush=True)


if __name__ == "__main__":
    main()

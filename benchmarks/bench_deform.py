"""Benchmark the dense-motion core: precompute (weld + geodesics + landmarks + weights) and skinning.

Usage: PYTHONPATH=backend python benchmarks/bench_deform.py [--device cpu|cuda] [--sizes 20000 200000]
       [--landmarks 1000] [--frames 240] [--skin-vertices 20000] [--threads N]
       [--method auto|heat|dijkstra] [--no-skin]
Prints one line per measurement. Meshes are procedural tori (one island, no external data).
Targets: skinning 1,000 landmarks -> 20k vertices x 240 frames < 5 s CPU, < 0.5 s H100.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from afv.deform import GeodesicSolver, build_skinning, build_surface, sample_landmarks, skin
from afv.mesh import Mesh


def torus(n_vertices: int, R: float = 1.0, r: float = 0.35) -> Mesh:
    """A torus grid with about n_vertices vertices (u ring 2x the v ring)."""
    nv = max(8, int(round(np.sqrt(n_vertices / 2))))
    nu = max(8, int(round(n_vertices / nv)))
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, nu, endpoint=False), np.linspace(0, 2 * np.pi, nv, endpoint=False), indexing="ij")
    x = np.stack([(R + r * np.cos(v)) * np.cos(u), (R + r * np.cos(v)) * np.sin(u), r * np.sin(v)], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    a = (i * nv + j).ravel()
    b = (((i + 1) % nu) * nv + j).ravel()
    c = (i * nv + (j + 1) % nv).ravel()
    d = (((i + 1) % nu) * nv + (j + 1) % nv).ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)])
    return Mesh(x.astype(np.float32), f.astype(np.int32))


def bench_precompute(n: int, k: int, method: str) -> None:
    mesh = torus(n)
    t0 = time.perf_counter()
    surface = build_surface(mesh)
    t1 = time.perf_counter()
    lm = sample_landmarks(mesh, k, surface=surface)
    t2 = time.perf_counter()
    solver = GeodesicSolver(mesh, surface=surface) if method == "heat" else None
    w = build_skinning(mesh, lm, solver=solver, method=method)
    t3 = time.perf_counter()
    print(f"precompute N={mesh.n_vertices} K={len(lm)} ({method}): weld+islands {t1 - t0:.2f}s, landmarks {t2 - t1:.2f}s, "
          f"neighbourhoods+weights {t3 - t2:.2f}s, total {t3 - t0:.2f}s, sigma={w.sigma:.4f}", flush=True)


def bench_skin(n: int, k: int, frames: int, device: str, dtype: torch.dtype) -> None:
    mesh = torus(n)
    lm = sample_landmarks(mesh, k)
    w = build_skinning(mesh, lm)
    dev = torch.device(device)
    rest = torch.tensor(mesh.vertices, device=dev, dtype=dtype)
    rl = rest[torch.as_tensor(lm, device=dev)]
    g = torch.Generator().manual_seed(0)
    # A smooth twisting motion plus noise: representative work (the cost does not depend on values).
    ang = torch.linspace(0, 1.0, frames)[:, None] * rl[:, 2].cpu()[None]
    c, s = torch.cos(ang), torch.sin(ang)
    x, y, z = rl.cpu().unbind(-1)
    tgt = torch.stack([c * x - s * y, s * x + c * y, z.expand_as(c)], -1) + 0.001 * torch.randn(frames, len(lm), 3, generator=g)
    tgt = tgt.to(dev, dtype)
    skin(rest, rl, tgt[:2], w)  # warm-up (allocations, CUDA kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = skin(rest, rl, tgt, w)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    print(f"skin K={len(lm)} -> N={mesh.n_vertices} x T={frames} on {device} ({dtype}): {t1 - t0:.2f}s "
          f"({(t1 - t0) / (frames * mesh.n_vertices) * 1e9:.0f} ns per vertex-frame), out {tuple(out.shape)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="*", default=[20_000, 200_000], help="vertex counts for the precompute benchmark")
    ap.add_argument("--landmarks", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--skin-vertices", type=int, default=20_000)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--method", default="auto", choices=["auto", "heat", "dijkstra"], help="build_skinning geodesic method")
    ap.add_argument("--no-skin", action="store_true", help="only the precompute benchmark")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}", flush=True)
    if not args.no_skin:
        bench_skin(args.skin_vertices, args.landmarks, args.frames, args.device, getattr(torch, args.dtype))
    for n in args.sizes:
        bench_precompute(n, args.landmarks, args.method)


if __name__ == "__main__":
    main()

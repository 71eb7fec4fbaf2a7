"""How well can a rig express real motion? Best-fit LBS error of the automatic skeleton vs the asset's own rig.

Usage: PYTHONPATH=backend python benchmarks/bench_rig_fit.py [--data ../shared/data] [--frames 16] [--iters 150]
For each clip (RobotExpressive's Jump is held out: never used), the ground truth is the file's own
skinning at `--frames` times over the clip (afv.gltf). Per frame, bone rotations (6D) and the root
translation are fitted to it by L-BFGS through afv.deform.kinematics, for (a) the rig
`auto_rig` builds from the mesh alone and (b) the asset's own rig. Printed: mean per-vertex error
as a percentage of the bounding-box diagonal for the still mesh, (a) and (b). This is the floor
an articulated engine reaches with perfect evidence; the gap between (a) and (b) is the price of
not being given the rig.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from afv.deform.kinematics import RigTensors, rotation_6d_to_matrix
from afv.deform.skeleton import auto_rig
from afv.gltf import read_gltf
from afv.mesh import Mesh

CLIPS = {"Fox.glb": None, "CesiumMan.glb": None, "RiggedSimple.glb": None, "RobotExpressive.glb": ["Walking", "Wave", "Dance"]}


def best_fit(rig, rest: np.ndarray, gt: np.ndarray, iters: int) -> np.ndarray:
    """Per-frame mean error (T,) of the best LBS fit of `rig` to gt (T, N, 3)."""
    rt = RigTensors.from_rig(rig, dtype=torch.float64)
    T, B = gt.shape[0], rig.n_bones
    eye6 = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64)
    d6 = eye6.repeat(T, B, 1).requires_grad_()
    u = torch.zeros(T, 3, dtype=torch.float64, requires_grad=True)
    v0 = torch.as_tensor(rest, dtype=torch.float64)
    target = torch.as_tensor(gt, dtype=torch.float64)
    opt = torch.optim.LBFGS([d6, u], lr=1, max_iter=iters, line_search_fn="strong_wolfe", tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = ((rt.pose(v0, rotation_6d_to_matrix(d6), u) - target) ** 2).sum(-1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (rt.pose(v0, rotation_6d_to_matrix(d6), u) - target).norm(dim=-1).mean(-1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--assets", nargs="*", default=None, help="e.g. Fox.glb RobotExpressive.glb#Wave")
    args = ap.parse_args()
    torch.set_num_threads(1)
    todo = CLIPS
    if args.assets:
        todo = {}
        for a in args.assets:
            n, _, c = a.partition("#")
            todo.setdefault(n, []).extend([c] if c else [])
        todo = {n: (c or None) for n, c in todo.items()}
    for name, clips in todo.items():
        path = Path(args.data) / "assets" / name
        if not path.is_file():
            continue
        sc = read_gltf(path)
        mesh = Mesh(sc.vertices, sc.faces, sc.rig)
        auto = auto_rig(Mesh(mesh.vertices, mesh.faces))
        diag = mesh.bbox_diagonal()
        for clip in clips or sc.clips():
            if clip == "Jump":
                continue
            dur = sc.clip_duration(clip)
            times = np.linspace(0, dur, args.frames, endpoint=False)
            gt = np.stack([sc.skinned_vertices(sc.node_trs(clip, t)) for t in times])
            still = np.linalg.norm(gt - mesh.vertices, axis=-1).mean(-1)
            t0 = time.perf_counter()
            e_auto = best_fit(auto, mesh.vertices, gt, args.iters)
            e_own = best_fit(mesh.rig, mesh.vertices, gt, args.iters)
            print(f"{name}#{clip}: still {100 * still.mean() / diag:.2f} %, auto rig ({auto.n_bones} bones) "
                  f"{100 * e_auto.mean() / diag:.2f} % (worst frame {100 * e_auto.max() / diag:.2f} %), own rig "
                  f"({mesh.rig.n_bones} bones) {100 * e_own.mean() / diag:.2f} % [{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()

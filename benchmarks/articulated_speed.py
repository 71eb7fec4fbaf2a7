"""Speed of the `articulated` engine end to end: 16 frames x ~20k vertices at 512 px.

The procedurally rigged figure (afv_dev.synthetic) at a fine marching-cubes spacing, rendered
with known bone rotations; the engine gets RGB frames, alpha masks, the camera and the rig.
A small warm-up run first (CUDA context, kernels), then `--repeat` timed runs. Prints JSON.

  python benchmarks/articulated_speed.py --device cuda --spacing 0.0175 --size 512 --frames 16
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import replace

import numpy as np
import torch

from afv.engines.articulated import ArticulatedEngine
from afv.engines.base import EngineInput
from afv.progress import Progress
from afv.video import VideoClip
from afv_dev import synthetic


def clip_of(rgba: np.ndarray) -> VideoClip:
    T, H, W = rgba.shape[:3]
    return VideoClip(np.ascontiguousarray(rgba[..., :3]), None, np.arange(T, dtype=np.int32), 24.0, (W, H), 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--spacing", type=float, default=0.0175)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--norig", action="store_true", help="drop the rig: the automatic skeleton is built (set-up timing)")
    ap.add_argument("--option", "-o", action="append", default=[], help="engine option key=value (repeatable), e.g. cuda_graphs=false")
    a = ap.parse_args()
    from afv.cli import parse_kv
    from afv.engines import get_engine_spec

    opts = get_engine_spec("articulated").parse_options(parse_kv(a.option))
    dev = torch.device(a.device)
    t0 = time.perf_counter()
    mesh = synthetic.figure_rig_mesh(a.spacing)
    rot, root = synthetic.figure_pose(a.frames, 1.0)
    base = synthetic.rigged_figure(n_frames=a.frames, size=(a.size, a.size))  # camera framing for the default spacing
    from afv.deform.kinematics import RigTensors, axis_angle_to_matrix

    rt = RigTensors.from_rig(mesh.rig, dtype=torch.float64)
    with torch.no_grad():
        pos = rt.pose(torch.as_tensor(mesh.vertices, dtype=torch.float64), axis_angle_to_matrix(torch.as_tensor(rot, dtype=torch.float64)),
                      torch.as_tensor(root, dtype=torch.float64)).numpy().astype(np.float32)
    seq = synthetic.Sequence("figure", mesh, pos, base.camera)
    rgba = synthetic.render_sequence(seq, background=(0.25, 0.3, 0.35), device=a.device)
    build_s = time.perf_counter() - t0
    inp_mesh = replace(mesh, rig=None) if a.norig else mesh
    masks = rgba[..., 3] > 0
    # warm-up on 3 frames (CUDA context, allocator, kernels)
    ArticulatedEngine(opts).run(EngineInput(mesh, clip_of(rgba[:3]), masks[:3], seq.camera, dev), Progress(ArticulatedEngine.stages))
    runs = []
    for _ in range(a.repeat):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        p = Progress(ArticulatedEngine.stages)
        t = time.perf_counter()
        out = ArticulatedEngine(opts).run(EngineInput(inp_mesh, clip_of(rgba), masks, seq.camera, dev), p)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        err = float(np.linalg.norm(out.displacements - seq.displacements, axis=-1)[1:].mean() / mesh.bbox_diagonal() * 100)
        still = float(np.linalg.norm(seq.displacements, axis=-1)[1:].mean() / mesh.bbox_diagonal() * 100)
        run = {"seconds": round(dt, 3), "stages_s": {k: round(v, 3) for k, v in p.finish().items()}, "err_pct": round(err, 2),
               "still_pct": round(still, 2), "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None}
        if dev.type == "cuda":  # what a long-lived server keeps between jobs: memory still held once the result is out
            del out
            run["gpu_mib_after"] = round(torch.cuda.memory_allocated() / 2**20)
            gc.collect()
            run["gpu_mib_after_gc"] = round(torch.cuda.memory_allocated() / 2**20)
            run["gpu_reserved_mib"] = round(torch.cuda.memory_reserved() / 2**20)
        runs.append(run)
    print(json.dumps({"device": str(dev), "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None, "torch": torch.__version__,
                      "vertices": mesh.n_vertices, "bones": mesh.rig.n_bones, "frames": a.frames, "size": a.size, "rig_given": not a.norig, "options": a.option,
                      "build_s": round(build_s, 1), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()

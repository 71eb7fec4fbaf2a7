"""Add-on main-thread costs in real Blender (bpy module): prints numbers, asserts nothing.

  key write: 240 shape keys x ~20k vertices with their animation (target < 1.5 s)
  modal poll step: what one timer tick does on the UI thread while a job runs (target ~50 ms)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="afv-bench-"))
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "backend")]

import numpy as np  # noqa: E402

import bpy  # noqa: E402
from addon_support import install_addon, module, reset_scene  # noqa: E402


def main() -> None:
    install_addon(Path(tempfile.mkdtemp(prefix="afv-dist-")))
    reset_scene()
    bpy.ops.mesh.primitive_uv_sphere_add(segments=200, ring_count=101, radius=1.0)
    obj = bpy.context.object
    N, T = len(obj.data.vertices), 240
    disp = (np.random.default_rng(0).normal(size=(T, N, 3)) * 0.01).astype(np.float32)
    frames = module("timing").scene_frames(np.arange(T), 30.0, 24.0, 1)
    sk = module("shape_keys")
    times = []
    for _ in range(3):  # the second and third runs also remove the previous keys (replace path)
        t = time.perf_counter()
        sk.write_tracks(obj, disp, frames)
        times.append(time.perf_counter() - t)
    print(f"key write {T} keys x {N} vertices: first {times[0]:.3f} s, replace {min(times[1:]):.3f} s (target < 1.5 s)")

    # One modal timer tick: snapshot the worker's state + update the UI properties.
    job_mod = module("job")
    cfg = module("backend_session").BackendConfig()
    job = job_mod.AnimateJob(module("runtime").STATE.session, cfg, job_mod.JobRequest(b"", 0, ""), tempfile.mkdtemp())
    job._set(state="running", stage="engine", progress=0.4)  # never started: only the UI-side reads are timed
    wm = bpy.context.window_manager
    ticks = []
    for _ in range(2000):
        t = time.perf_counter()
        st = job.snapshot()
        wm.afv.progress, wm.afv.stage = st.progress, st.stage
        ticks.append(time.perf_counter() - t)
    print(f"modal poll tick: median {1e3 * np.median(ticks):.4f} ms, max {1e3 * max(ticks):.3f} ms (target ~50 ms); "
          f"the final tick is the key write above")


if __name__ == "__main__":
    main()

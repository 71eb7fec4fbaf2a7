"""Score and time the salient-object masks (afv masks --method saliency) on the DAVIS clips.

Usage: python benchmarks/bench_footage_masks.py [--clips davis_dog davis_camel] [--model-every 1 2]
       [--data ../shared/data]
Per clip and setting: mean / min IoU against the annotations at 854x480 and frames per second of
the whole step (network, flow, both tracking passes, full-resolution masks), decoding excluded.
Also the raw network (each frame on its own, threshold 0.5) for comparison, and the camera's pan
on each clip (afv.camera_motion with the annotated masks, a 50 deg field of view).
Wall-clock frames/s depend on how loaded the CPU is (printed); the process CPU time per frame does
not (much): on 2 idle cores the frame rate lies between 1 / cpu and 2 / cpu (one or both cores busy).
Record the numbers in docs/masks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from afv.camera import intrinsics  # noqa: E402
from afv.camera_motion import estimate_camera_motion  # noqa: E402
from afv.geometry.silhouette import mask_iou  # noqa: E402
from afv.masks import load_mask_folder  # noqa: E402
from afv.saliency import load_saliency_model  # noqa: E402
from afv.segment import SegmentOptions, segment_main_object  # noqa: E402
from afv.video import load_video  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", nargs="+", default=["davis_dog", "davis_camel"])
    ap.add_argument("--model-every", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    a = ap.parse_args()
    model = load_saliency_model()
    print(f"model {model.path.name} ({model.source}); cpus {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    for name in a.clips:
        d = Path(a.data) / "video" / name
        clip = load_video(d / "img", None, max_size=None)
        gt = load_mask_folder(d / "mask", clip)
        T = clip.n_frames
        t0, c0 = time.perf_counter(), time.process_time()
        raw = np.stack([model.predict(f) > 0.5 for f in clip.frames])
        t_raw, c_raw = time.perf_counter() - t0, time.process_time() - c0
        r = mask_iou(raw, gt)
        print(f"{name} {T} frames {clip.size[0]}x{clip.size[1]}: raw network  mean IoU {r.mean():.3f} min {r.min():.3f}  "
              f"{T / t_raw:.1f} frames/s wall, {1000 * c_raw / T:.0f} ms CPU a frame")
        for k in a.model_every:
            t0, c0 = time.perf_counter(), time.process_time()
            res = segment_main_object(clip.frames, model, SegmentOptions(model_every=k))
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            r = mask_iou(res.masks, gt)
            print(f"{name}: saliency model_every={k}  mean IoU {r.mean():.3f} min {r.min():.3f}  {T / dt:.1f} frames/s wall, "
                  f"{1000 * cpu / T:.0f} ms CPU a frame  {res.timings_s}")
        W, H = clip.size
        cm = estimate_camera_motion(clip.frames, gt, intrinsics(W, H, 50.0))
        print(f"{name}: camera {cm.model}, rotation up to {cm.rotation_deg.max():.1f} deg (50 deg fov), background {cm.background_fraction:.2f}")
        print(f"load average now {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

"""Score and time the salient-object masks (afv masks --method saliency) on the DAVIS clips.

Usage: python benchmarks/bench_footage_masks.py [--clips davis_dog davis_camel] [--model-every 2 1]
       [--net-pixels 86016 0] [--repeat 3] [--raw] [--command] [--camera] [--data ../shared/data]
Per clip and setting: mean / min IoU against the annotations at 854x480, and the frame rate of the
whole step (network, flow, both tracking passes, full-resolution masks; decoding excluded), best
and median of --repeat runs, with the process CPU time per frame and the load average.
--net-pixels: the network's input budget (0: its export size, 320 x 320, squeezing the frame).
--raw: also the network alone (each frame on its own, threshold 0.5) at each size.
--command: also the whole `afv masks` command in a fresh process (start-up, decoding, auto's
checks, masks, PNG writing), best and median of --repeat runs.
--camera: also the camera's pan on each clip (afv.camera_motion with the annotated masks, 50 deg fov).
Wall-clock rates depend on how loaded the 2-core CPU is (the load average is printed); the CPU
time per frame does not (much): on 2 idle cores the rate is about 2 / cpu. Numbers: docs/masks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from afv.camera import intrinsics  # noqa: E402
from afv.camera_motion import estimate_camera_motion  # noqa: E402
from afv.geometry.silhouette import mask_iou  # noqa: E402
from afv.masks import load_mask_folder  # noqa: E402
from afv.saliency import load_saliency_model, network_size  # noqa: E402
from afv.segment import SegmentOptions, segment_main_object  # noqa: E402
from afv.video import load_video  # noqa: E402


def load() -> float:
    return os.getloadavg()[0]


def best_median(xs: list[float]) -> str:
    return f"best {max(xs):.2f} median {float(np.median(xs)):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", nargs="+", default=["davis_dog", "davis_camel"])
    ap.add_argument("--model-every", nargs="+", type=int, default=[SegmentOptions.model_every, 1])
    ap.add_argument("--net-pixels", nargs="+", type=int, default=[SegmentOptions.net_pixels])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--raw", action="store_true")
    ap.add_argument("--command", action="store_true")
    ap.add_argument("--camera", action="store_true")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    a = ap.parse_args()
    model = load_saliency_model(threads=1)  # as afv.masks loads it: one thread an inference, one inference a core
    print(f"model {model.path.name} ({model.source}), resizable {model.resizable}; cpus {os.cpu_count()}; "
          f"load average {load():.1f}", flush=True)
    for name in a.clips:
        d = Path(a.data) / "video" / name
        clip = load_video(d / "img", None, max_size=None)
        gt = load_mask_folder(d / "mask", clip)
        T = clip.n_frames
        W, H = clip.size
        print(f"{name}: {T} frames {W}x{H}", flush=True)
        if a.raw:
            for px in a.net_pixels:
                net = network_size(W, H, px) if px else model.input_size
                t0, c0 = time.perf_counter(), time.process_time()
                raw = np.stack([model.predict(f, net_size=net) > 0.5 for f in clip.frames])
                dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                r = mask_iou(raw, gt)
                print(f"  raw network {net[0]}x{net[1]}: mean IoU {r.mean():.3f} min {r.min():.3f}  "
                      f"{1000 * cpu / T:.0f} ms CPU a frame (one thread)", flush=True)
        for px in a.net_pixels:
            for k in a.model_every:
                fps, cpus, ious, loads = [], [], None, []
                for _ in range(a.repeat):
                    loads.append(load())
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = segment_main_object(clip.frames, model, SegmentOptions(model_every=k, net_pixels=px))
                    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                    fps.append(T / dt)
                    cpus.append(1000 * cpu / T)
                    r = mask_iou(res.masks, gt)
                    assert ious is None or np.array_equal(r, ious), "the masks differ between runs"
                    ious = r
                print(f"  saliency k={k} net={res.notes[0].split(' at ')[1].split(',')[0]}: mean IoU {ious.mean():.3f} "
                      f"min {ious.min():.3f}  frames/s {best_median(fps)} ({a.repeat} runs)  "
                      f"CPU {min(cpus):.0f} ms a frame  stages of the last run {res.timings_s}  "
                      f"load average {min(loads):.1f}-{max(loads):.1f}", flush=True)
        if a.camera:
            cm = estimate_camera_motion(clip.frames, gt, intrinsics(W, H, 50.0))
            print(f"  camera {cm.model}, rotation up to {cm.rotation_deg.max():.1f} deg (50 deg fov), "
                  f"background {cm.background_fraction:.2f}", flush=True)
        if a.command:
            fps, loads = [], []
            env = dict(os.environ, PYTHONPATH=str(ROOT / "backend") + os.pathsep + os.environ.get("PYTHONPATH", ""))
            for _ in range(a.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    loads.append(load())
                    t0 = time.perf_counter()
                    out = subprocess.run([sys.executable, "-m", "afv", "masks", "--video", str(d / "img"), "--out",
                                          str(Path(tmp) / "m"), "--json", "-q"], capture_output=True, text=True, env=env)
                    dt = time.perf_counter() - t0
                    if out.returncode:
                        raise SystemExit(out.stderr)
                    fps.append(T / dt)
            method = json.loads(out.stdout.strip().splitlines()[-1])["method"]
            print(f"  afv masks (whole command, {method}): frames/s {best_median(fps)} ({a.repeat} runs)  "
                  f"load average {min(loads):.1f}-{max(loads):.1f}", flush=True)


if __name__ == "__main__":
    main()

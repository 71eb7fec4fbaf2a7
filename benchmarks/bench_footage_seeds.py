"""Computed masks against the annotation on real footage, over many seeds (issue #9's parity target).

The fit is chaotic: one run per mask source cannot tell a 0.01 IoU difference from run-to-run
spread. This runs the direct pipeline (the same request the add-on sends) for each mask source and
seed, in parallel processes, and prints each source's mean IoU (rendered silhouette vs the
annotation), its spread and standard error, and where in the clip the sources differ.

    # the add-on's request mesh and rig for an asset (needs the bpy module)
    python benchmarks/bench_footage_seeds.py export-mesh --asset Fox.glb --out out/seeds/fox.npz
    # the masks `auto` computes at the working size, as a folder (needs onnxruntime + the network)
    python benchmarks/bench_footage_seeds.py export-masks --out out/seeds/auto
    # the study (torch + OpenCV; no bpy, and no onnxruntime for folder sources: e.g. the device's 16 cores)
    python benchmarks/bench_footage_seeds.py run --mesh out/seeds/fox.npz \\
        --source given=annotation --source auto=out/seeds/auto --seeds 0-15 --jobs 16 --out out/seeds/res.json

A source is NAME=PATH (a mask folder), NAME=annotation (the clip's own masks) or NAME=auto (computed
live). Data: ../shared/data, read at run time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
SHARED = REPO.parent / "shared" / "data"


def export_mesh(asset: Path, out: Path, clip_dir: Path, max_size: int) -> None:
    """The mesh + rig npz the add-on would send for `asset` (Blender's glTF import, object space, +z up)."""
    os.environ.setdefault("BLENDER_USER_RESOURCES", str(out.parent / "blender_user"))
    import importlib
    import tempfile

    import bpy
    from afv_dev.blender_demo import PKG, install_and_enable

    with tempfile.TemporaryDirectory() as tmp:
        install_and_enable(Path(tmp))
    animate, rig_io = (importlib.import_module(f"{PKG}.{n}") for n in ("animate", "rig_io"))
    scene = bpy.context.scene
    bpy.ops.import_scene.gltf(filepath=str(asset))
    obj = next(o for o in scene.objects if o.type == "MESH" and rig_io.armature_modifier(o) is not None)
    bpy.context.view_layer.objects.active = obj
    s = scene.afv
    s.video_path, s.camera_mode, s.max_size = str(sorted((clip_dir / "img").glob("*.jpg"))[0]), "ESTIMATE", max_size
    s.mask_mode, s.mask_path = "PATH", str(clip_dir / "mask")
    req, _ = animate.build_request(scene, obj, s, bpy.context.evaluated_depsgraph_get())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(req.mesh_npz)
    print(f"{asset}: request mesh -> {out} ({req.params})")


def export_masks(clip_dir: Path, out: Path, max_size: int) -> None:
    """The masks `auto` computes for the clip at the working size, one 0/255 PNG per frame."""
    import cv2

    from afv.masks import resolve_masks
    from afv.video import load_video

    d = clip_dir
    video = load_video(str(d / "img"), None, max_size=max_size)
    res = resolve_masks("auto", video, n_source_frames=video.n_frames)
    names = sorted((d / "img").glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    for k, fi in enumerate(video.frame_indices):
        cv2.imwrite(str(out / names[fi].with_suffix(".png").name), res.masks[k].astype(np.uint8) * 255)
    print(f"{clip_dir.name}: {res.method} masks at {video.size} -> {out}; " + "; ".join(res.notes))


def _one(job: tuple) -> dict:
    """One pipeline run (single-threaded: the study runs many side by side) -> its per-frame IoU."""
    name, masks, seed, mesh_path, d, frames, max_size, first_pose, iou_size = job
    import cv2
    import torch

    torch.set_num_threads(1)  # many runs side by side: one thread each
    cv2.setNumThreads(1)
    from afv.geometry.silhouette import camera_mask_iou
    from afv.mesh import load_mesh
    from afv.pipeline import animate
    from afv.progress import Progress
    from afv.request import check_request, parse_request, probe_inputs

    mesh = load_mesh(mesh_path)
    req = parse_request(mesh=mesh, video=str(d / "img"), masks=masks, frames=frames, max_size=max_size, up_axis="+z",
                        first_pose=first_pose, device="cpu", seed=seed)
    probe = probe_inputs(req)
    check_request(req, probe)
    t0 = time.perf_counter()
    tracks = animate(req, Progress(), probe)
    names = sorted((d / "img").glob("*.jpg"))
    ious = []
    for k, fi in enumerate(tracks.frame_indices):
        gt = cv2.imread(str(d / "mask" / names[fi].with_suffix(".png").name), cv2.IMREAD_GRAYSCALE) > 127
        ious.append(float(camera_mask_iou(mesh.vertices + tracks.displacements[k], mesh.faces, tracks.camera.K,
                                          tracks.camera.mesh_to_camera[k], gt, long_side=iou_size)))
    return {"source": name, "seed": seed, "ious": ious, "mean": float(np.mean(ious)), "seconds": time.perf_counter() - t0}


def _seeds(text: str) -> list[int]:
    a, _, b = text.partition("-")
    return list(range(int(a), int(b) + 1)) if b else [int(a)]


def summarize(results: list[dict], block: int = 10) -> str:
    """Per source: mean IoU over seeds, spread, standard error; then each source minus the first, per block of frames."""
    by: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(r["source"] for r in results):
        by[name] = np.array([r["ious"] for r in results if r["source"] == name])
    lines = ["| source | seeds | mean IoU | std over seeds | std. error | min / max run |", "|---|---|---|---|---|---|"]
    for name, a in by.items():
        m = a.mean(1)
        se = m.std(ddof=1) / np.sqrt(len(m)) if len(m) > 1 else float("nan")
        lines.append(f"| {name} | {len(m)} | {m.mean():.4f} | {m.std(ddof=1) if len(m) > 1 else 0:.4f} | {se:.4f} | {m.min():.4f} / {m.max():.4f} |")
    names = list(by)
    seeds = {n: [r["seed"] for r in results if r["source"] == n] for n in names}
    for other in names[1:]:
        d = by[other].mean(0) - by[names[0]].mean(0)
        blocks = " ".join(f"{i}-{min(i + block, len(d)) - 1}: {d[i:i + block].mean():+.3f}" for i in range(0, len(d), block))
        lines.append(f"\n{other} - {names[0]}, mean over seeds per block of frames: {blocks}")
        if seeds[other] == seeds[names[0]] and len(seeds[other]) > 1:  # the same seeds: paired by seed
            g = by[other].mean(1) - by[names[0]].mean(1)
            lines.append(f"{other} - {names[0]}, paired by seed: {g.mean():+.4f} (std. error {g.std(ddof=1) / np.sqrt(len(g)):.4f}); "
                         f"{other} higher on {int((g > 0).sum())} of {len(g)} seeds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("export-mesh", "export-masks", "run"):
        p = sub.add_parser(name)
        p.add_argument("--clip", type=Path, default=SHARED / "video" / "davis_dog", help="a clip folder with img/ and mask/")
        p.add_argument("--max-size", type=int, default=384)
        p.add_argument("--out", type=Path, required=True)
        if name == "export-mesh":
            p.add_argument("--asset", type=Path, default=SHARED / "assets" / "Fox.glb")
        if name == "run":
            p.add_argument("--mesh", required=True)
            p.add_argument("--source", action="append", required=True, help="NAME=PATH | NAME=annotation | NAME=auto")
            p.add_argument("--seeds", default="0-7")
            p.add_argument("--frames", default="0:60")
            p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
            p.add_argument("--no-first-pose", action="store_true", help="without Pose to First Frame")
            p.add_argument("--iou-size", type=int, default=427, help="long side (px) the silhouettes are compared at (427: half a DAVIS frame)")
    a = ap.parse_args(argv)
    if a.cmd == "export-mesh":
        export_mesh(a.asset, a.out, a.clip, a.max_size)
        return 0
    if a.cmd == "export-masks":
        export_masks(a.clip, a.out, a.max_size)
        return 0
    sources = []
    for s in a.source:
        name, eq, path = s.partition("=")
        if not (name and eq and path):
            ap.error(f"--source {s!r}: expected NAME=PATH, NAME=annotation or NAME=auto")
        sources.append((name, {"annotation": str(a.clip / "mask"), "auto": "auto"}.get(path, path)))
    jobs = [(n, m, seed, a.mesh, a.clip, a.frames, a.max_size, not a.no_first_pose, a.iou_size)
            for n, m in sources for seed in _seeds(a.seeds)]
    results = []
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, a.jobs)) as pool:
        for r in pool.map(_one, jobs):
            print(f"{r['source']} seed {r['seed']}: IoU {r['mean']:.4f} ({r['seconds']:.0f} s)", flush=True)
            results.append(r)
            a.out.write_text(json.dumps(results))  # as they come: a failing run keeps the others
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

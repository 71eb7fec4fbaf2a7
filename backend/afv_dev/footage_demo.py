"""Real footage through the add-on, headless: a DAVIS clip animating a bundled rigged asset.

    python -m afv_dev.footage_demo --out out/footage [--clip davis_dog] [--asset Fox.glb]
        [--masks given|auto] [--frames 0:60:2] [--max-size 384] [--engine NAME] [--sheet docs/images/x.png]

What a user does in Blender, driven through the add-on's own code: import the glTF asset (its
armature and the rig's own action come with it), pick the clip's first image (the folder is the
sequence), masks from the clip's annotation folder (or `auto`), Camera: Estimate, run the job
against a backend the add-on launches, write the result (shape keys + bone keys when the engine
returns them, the rig's action muted, the estimated camera with the video as background, the scene
range). Then Blender's Workbench renders the asset from that camera, composited over the video, as a
contact sheet; the rendered silhouette is compared with the clip's annotated masks (IoU).
Prints a JSON summary. Data: ../shared/data (read at run time, never copied).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
PKG = "bl_ext.user_default.animate_from_video"


def _frame_list(text: str, n: int) -> list[int]:
    a, b, c = (text.split(":") + ["", "", ""])[:3]
    return list(range(int(a or 0), int(b) if b else n, int(c or 1)))


def run(out_dir, clip: str = "davis_dog", asset: str = "Fox.glb", masks: str = "given", frames: str = "0:60:2",
        max_size: int = 384, engine: str | None = None, sheet: str | None = None, python_exe: str | None = None,
        columns: int = 6, tile_width: int = 160, timeout_s: float = 3000.0, options: dict | None = None,
        first_pose: bool = False) -> dict:
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BLENDER_USER_RESOURCES", str(out / "blender_user"))  # before bpy is imported
    import bpy  # noqa: PLC0415 (only the test extra installs bpy)
    import cv2

    from afv_dev.blender_demo import install_and_enable

    video_dir, mask_dir = SHARED / "video" / clip / "img", SHARED / "video" / clip / "mask"
    asset_path = SHARED / "assets" / asset
    for p in (video_dir, asset_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: this demo reads the development data in {SHARED}")
    t0 = time.monotonic()
    install_and_enable(out / "dist")
    mod = {n: importlib.import_module(f"{PKG}.{n}") for n in ("animate", "job", "runtime", "rig_io")}

    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    bpy.ops.import_scene.gltf(filepath=str(asset_path))
    obj = next(o for o in scene.objects if o.type == "MESH" and mod["rig_io"].armature_modifier(o) is not None)
    arm = mod["rig_io"].armature_modifier(obj).object
    rig_action = arm.animation_data.action.name if arm.animation_data and arm.animation_data.action else None
    bpy.context.view_layer.objects.active = obj

    images = sorted(video_dir.glob("*.jpg"))
    s = scene.afv
    s.video_path, s.camera_mode, s.start_frame, s.max_size = str(images[0]), "ESTIMATE", 1, max_size
    a, b, c = (frames.split(":") + ["", "", ""])[:3]
    s.frame_start, s.frame_end, s.frame_step = int(a or 0), int(b or 0), int(c or 1)
    if masks == "given":
        s.mask_mode, s.mask_path = "PATH", str(mask_dir)
    else:
        s.mask_mode = "AUTO"
    if engine:
        s.engine = engine
    s.first_pose = first_pose
    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.backend_mode, prefs.python_path, prefs.data_dir = "LAUNCH", python_exe or sys.executable, str(out / "backend")

    req, warnings = mod["animate"].build_request(scene, obj, s, bpy.context.evaluated_depsgraph_get())
    if options:  # engine options (the panel has no field for them; a script can set them like this)
        req.params["options"] = dict(options)
    cfg = mod["animate"].config_from_prefs(prefs, str(out / "backend"))
    job = mod["job"].AnimateJob(mod["runtime"].STATE.session, cfg, req, out / "results").start()
    stages, deadline = [], time.monotonic() + timeout_s
    while not job.snapshot().finished:
        st = job.snapshot()
        if not stages or stages[-1] != st.stage:
            stages.append(st.stage)
        if time.monotonic() > deadline:
            job.cancel()
        time.sleep(0.5)
    st = job.snapshot()
    mod["runtime"].shutdown()
    if st.state != "done":
        raise RuntimeError(f"the job ended '{st.state}': {st.message} ({st.hint})")
    job_s = time.monotonic() - t0
    summary = mod["animate"].apply_result(scene, obj, job.result, s)

    # ---- Workbench render from the result's camera, over the video ----
    r = scene.render
    r.engine, r.film_transparent = "BLENDER_WORKBENCH", True
    scene.display.shading.light, scene.display.shading.color_type = "STUDIO", "SINGLE"
    scene.display.shading.single_color = (0.95, 0.55, 0.2)
    scene.display.shading.show_cavity = False
    r.resolution_percentage = 50
    for o in scene.objects:  # only the animated asset in the picture
        o.hide_render = o.name != obj.name
    sel = _frame_list(frames, len(images))
    key_frames = summary["first_frame"] + (np.array(sel) - sel[0]) * (summary["last_frame"] - summary["first_frame"]) / max(sel[-1] - sel[0], 1)
    video_tiles, comp_tiles, ious = [], [], []
    for t, (vf, kf) in enumerate(zip(sel, key_frames)):
        scene.frame_set(int(round(kf)))
        r.filepath = str(out / "render" / f"{vf:05d}.png")
        bpy.ops.render.render(write_still=True)
        rgba = cv2.imread(r.filepath, cv2.IMREAD_UNCHANGED)
        frame = cv2.imread(str(images[vf]))
        frame = cv2.resize(frame, (rgba.shape[1], rgba.shape[0]), interpolation=cv2.INTER_AREA)
        alpha = rgba[..., 3:4].astype(np.float32) / 255
        comp = (alpha * rgba[..., :3] + (1 - alpha) * frame).astype(np.uint8)
        gt = cv2.imread(str(mask_dir / images[vf].with_suffix(".png").name), cv2.IMREAD_GRAYSCALE)
        if gt is not None:
            gt = cv2.resize(gt, (rgba.shape[1], rgba.shape[0]), interpolation=cv2.INTER_NEAREST) > 127
            sil = alpha[..., 0] > 0.5
            ious.append(float((gt & sil).sum() / max((gt | sil).sum(), 1)))
        video_tiles.append(frame)
        comp_tiles.append(comp)
    cols = np.unique(np.linspace(0, len(sel) - 1, min(columns, len(sel))).round().astype(int))
    rows = []
    for tiles, label in ((video_tiles, "video"), (comp_tiles, "Blender")):
        row = []
        for i in cols:
            tile = cv2.resize(tiles[i], (tile_width, round(tiles[i].shape[0] * tile_width / tiles[i].shape[1])),
                              interpolation=cv2.INTER_AREA)
            cv2.putText(tile, f"{label} {sel[i]}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            row.append(tile)
        rows.append(np.concatenate(row, 1))
    sheet_path = Path(sheet) if sheet else out / "footage_contact_sheet.png"
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(sheet_path), np.concatenate(rows, 0), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cam = scene.camera
    result = {
        "clip": clip, "asset": asset, "masks": masks, "frames": frames, "max_size": max_size, "options": options or {},
        "first_pose": first_pose,
        "engine": summary["engine"], "mode": summary["mode"], "keys": summary["keys"],
        "scene_range": [scene.frame_start, scene.frame_end],
        "camera": summary["camera"], "camera_moves": bool(job.result.camera is not None and job.result.camera.moves),
        "camera_animated": bool(cam is not None and cam.animation_data is not None and cam.animation_data.action is not None),
        "rig_action_before": rig_action,
        "silhouette_iou_mean": round(float(np.mean(ious)), 3) if ious else None,
        "silhouette_iou_min": round(float(np.min(ious)), 3) if ious else None,
        "silhouette_iou": [round(float(x), 3) for x in ious],
        "warnings": warnings + job.notes + summary["warnings"], "notes": summary["notes"], "stages": stages,
        "job_s": round(job_s, 1), "total_s": round(time.monotonic() - t0, 1),
        "contact_sheet": str(sheet_path), "contact_sheet_kb": round(sheet_path.stat().st_size / 1024, 1),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--clip", default="davis_dog")
    ap.add_argument("--asset", default="Fox.glb")
    ap.add_argument("--masks", default="given", choices=["given", "auto"])
    ap.add_argument("--frames", default="0:60:2")
    ap.add_argument("--max-size", type=int, default=384)
    ap.add_argument("--engine")
    ap.add_argument("--sheet", help="where to write the contact sheet PNG (default: OUT/footage_contact_sheet.png)")
    ap.add_argument("--option", "-o", action="append", default=[], help="engine option key=value (repeatable)")
    ap.add_argument("--first-pose", action="store_true", help="the panel's Pose to First Frame")
    a = ap.parse_args(argv)
    options = dict(kv.split("=", 1) for kv in a.option)
    print(json.dumps(run(a.out, a.clip, a.asset, a.masks, a.frames, a.max_size, a.engine, a.sheet, options=options,
                         first_pose=a.first_pose), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

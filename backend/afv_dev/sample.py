"""`afv sample` writes a bundled sample (mesh, video, camera, ground truth); `afv demo` runs the
main job on it and writes a tracks file and a contact sheet a person can look at."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from afv.atomic import atomic_path
from afv.mesh import save_mesh_npz
from afv_dev.synthetic import SEQUENCES, render_sequence, write_video

DEFAULT_SAMPLE = "bending_cylinder"


def write_sample(out: str | Path, name: str = DEFAULT_SAMPLE, n_frames: int = 24, size: int = 384, fps: float = 24.0) -> dict[str, Path]:
    """Render a procedural sequence to out/: mesh.npz, video.mp4, camera.json, ground_truth.npz."""
    if name not in SEQUENCES:
        raise SystemExit(f"unknown sample '{name}'; choose from {sorted(SEQUENCES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seq = SEQUENCES[name](n_frames=n_frames, size=(size, size))
    rgba = render_sequence(seq, background=(0.32, 0.34, 0.38))
    paths = {"mesh": out / "mesh.npz", "video": out / "video.mp4", "camera": out / "camera.json", "ground_truth": out / "ground_truth.npz"}
    save_mesh_npz(seq.mesh, paths["mesh"])
    with atomic_path(paths["video"]) as tmp:
        write_video(rgba[..., :3], tmp, fps=fps)
    with atomic_path(paths["camera"]) as tmp:
        tmp.write_text(json.dumps(seq.camera.to_json(), indent=1))
    with atomic_path(paths["ground_truth"]) as tmp:
        np.savez(tmp, positions=seq.positions)
    return paths


def cmd_sample(args: argparse.Namespace) -> int:
    paths = write_sample(args.out, args.sequence, args.frames, args.size)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from afv.cli import StderrBar
    from afv.pipeline import animate, parse_request
    from afv.preview import save_contact_sheet
    from afv.progress import Progress

    out = Path(args.out)
    t0 = time.monotonic()
    paths = write_sample(out / "sample", args.sequence, args.frames, args.size)
    req = parse_request(mesh=paths["mesh"], video=paths["video"], camera=None if args.estimate_camera else paths["camera"], engine=args.engine or _default_engine(), device=args.device)
    tracks = animate(req, Progress(on_event=StderrBar()))
    tracks.save(out / "tracks.npz")
    save_contact_sheet(req, tracks, out / "contact_sheet.png")
    gt = np.load(paths["ground_truth"])["positions"]
    rest = np.load(paths["mesh"])["vertices"]
    err = np.linalg.norm(tracks.positions(rest) - gt, axis=-1)
    diag = float(np.linalg.norm(rest.max(0) - rest.min(0)))
    summary = {
        "engine": tracks.meta["engine"],
        "tracks": str((out / "tracks.npz").resolve()),
        "contact_sheet": str((out / "contact_sheet.png").resolve()),
        "frames": tracks.n_frames,
        "vertices": tracks.n_vertices,
        "mean_error_pct_of_bbox_diagonal": round(100 * float(err.mean()) / diag, 3),
        "backend_seconds": round(time.monotonic() - t0, 2),
    }
    if not args.no_blender:
        summary["blender"] = _blender_demo(out / "blender", paths, args)
    print(json.dumps(summary, indent=1))
    return 0


def _default_engine() -> str:
    from afv.engines import DEFAULT_ENGINE

    return DEFAULT_ENGINE


def _blender_demo(out: Path, paths: dict[str, Path], args: argparse.Namespace):
    """The add-on path, headless, when bpy is installed (the test extra)."""
    try:
        from afv_dev.blender_demo import run_blender_demo
    except ModuleNotFoundError as exc:
        return f"skipped: {exc}"
    return run_blender_demo(out, paths, python_exe=sys.executable)


def register(sub) -> None:
    s = sub.add_parser("sample", help="write the bundled sample (mesh.npz, video.mp4, camera.json, ground truth)")
    s.add_argument("--out", required=True)
    s.add_argument("--sequence", default=DEFAULT_SAMPLE, choices=sorted(SEQUENCES))
    s.add_argument("--frames", type=int, default=24)
    s.add_argument("--size", type=int, default=384)
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="run the main job on the bundled sample: tracks, contact sheet, Blender scene")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--sequence", default=DEFAULT_SAMPLE, choices=sorted(SEQUENCES))
    d.add_argument("--frames", type=int, default=24)
    d.add_argument("--size", type=int, default=384)
    d.add_argument("--engine", help="engine (default: the registry default)")
    d.add_argument("--device", default="auto")
    d.add_argument("--estimate-camera", action="store_true", help="do not give the engine the sample's camera")
    d.add_argument("--no-blender", action="store_true", help="skip the headless Blender part")
    d.set_defaults(func=cmd_demo)

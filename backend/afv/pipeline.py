"""The one path from user inputs to a Tracks result, shared by the CLI and the server.

decode video -> masks -> camera to working resolution -> engine -> Tracks (source resolution)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .camera import Camera, load_camera
from .engines import DEFAULT_ENGINE, EngineInput, get_engine_spec
from .errors import InputError
from .masks import MaskResult, resolve_masks
from .mesh import Mesh, load_mesh, parse_up_axis
from .progress import Progress
from .tracks import Tracks
from .video import FrameRange, list_images, load_video


@dataclass
class AnimateRequest:
    mesh: str | Path | Mesh
    video: str | Path
    masks: str | None = "auto"  # see masks.py for the accepted sources
    camera: str | Path | Camera | None = None
    frames: str | None = None  # "start:end:step"
    engine: str = DEFAULT_ENGINE
    device: str = "auto"  # auto | cpu | cuda[:i]
    max_size: int = 512  # working resolution, long side in pixels
    fps: float | None = None  # overrides the container's fps (needed for image folders)
    options: dict[str, Any] = field(default_factory=dict)  # engine options
    seed: int = 0
    up_axis: str | None = None  # the mesh's up direction (mesh.parse_up_axis); the add-on sends the object's world Z


COMPUTED_MASKS = ("chroma", "median", "saliency")  # estimated from the pixels, so they can be wrong
MIN_MASK_CAMERA_IOU = 0.5


def mask_camera_iou(mask0: np.ndarray, mesh: Mesh, camera: Camera) -> float:
    """IoU of a (H, W) bool mask with the mesh's silhouette seen through `camera` at frame 0."""
    from .render import rasterize

    M = camera.pose(0)
    verts = torch.as_tensor(mesh.vertices @ M[:3, :3].T + M[:3, 3], dtype=torch.float32)
    sil = rasterize(verts, torch.as_tensor(mesh.faces).long(), torch.as_tensor(camera.K), camera.image_size).mask.numpy()
    union = np.logical_or(sil, mask0).sum()
    return float(np.logical_and(sil, mask0).sum() / union) if union else 0.0


def reject_masks_contradicting_camera(result: MaskResult, mesh: Mesh, camera: Camera) -> MaskResult:
    """Drop computed masks whose first frame disagrees with the mesh seen by the given camera.

    A user-given camera and mesh are stronger evidence than a chroma key or background model
    (e.g. median subtraction fails when the object hardly moves); engines trust masks, so
    wrong ones would do more harm than none.
    """
    iou = mask_camera_iou(result.masks[0], mesh, camera)
    if iou >= MIN_MASK_CAMERA_IOU:
        return result
    note = (f"{result.method} masks ignored: frame 0 overlaps the mesh seen by the given camera with IoU {iou:.2f} "
            f"(< {MIN_MASK_CAMERA_IOU}); give masks explicitly (--masks PATH) for this clip")
    return MaskResult(None, "none", [], [*result.notes, note])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available", "use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device '{name}'", "use auto, cpu or cuda") from None


def _stage_plan(engine_stages: dict[str, float]) -> dict[str, float]:
    return {"decode": 0.1, "masks": 0.05, **engine_stages}


def animate(req: AnimateRequest, progress: Progress | None = None) -> Tracks:
    """Run the whole job. Raises InputError / EngineError / Cancelled; writes nothing."""
    progress = progress or Progress()
    spec = get_engine_spec(req.engine)
    engine = spec.create(req.options)  # validates options before any heavy work
    device = resolve_device(req.device)
    progress.set_plan(_stage_plan(engine.stages))

    mesh = req.mesh if isinstance(req.mesh, Mesh) else load_mesh(req.mesh)
    camera = req.camera if isinstance(req.camera, Camera) or req.camera is None else load_camera(req.camera)
    rng = FrameRange.parse(req.frames)
    up_axis = parse_up_axis(req.up_axis)

    progress.start("decode")
    clip = load_video(
        req.video, rng, max_size=req.max_size, fps=req.fps, on_frame=lambda i, n: progress.update(i / max(n, i))
    )
    if camera is not None:
        if tuple(camera.image_size) != tuple(clip.source_size):
            raise InputError(
                f"camera image_size {list(camera.image_size)} does not match the video's {list(clip.source_size)}",
                "the camera's intrinsics must be for the video's own resolution",
            )
        if len(camera.mesh_to_camera) not in (1, clip.n_frames):
            raise InputError(f"camera has {len(camera.mesh_to_camera)} poses but {clip.n_frames} frames are selected")
        work_cam = camera.scaled(clip.size[0] / clip.source_size[0], clip.size[1] / clip.source_size[1])
    else:
        work_cam = None
        if spec.needs_camera:
            raise InputError(f"engine '{spec.name}' needs a camera", "pass --camera cam.json (see docs/contracts.md)")

    progress.start("masks")
    video_path = Path(req.video)
    n_source = len(list_images(video_path)) if video_path.is_dir() else None  # exact only for image folders
    mask_result = resolve_masks(req.masks, clip, n_source_frames=n_source, progress=progress)
    if work_cam is not None and mask_result.method in COMPUTED_MASKS and mask_result.masks is not None:
        mask_result = reject_masks_contradicting_camera(mask_result, mesh, work_cam)
    masks = mask_result.masks

    torch.manual_seed(req.seed)
    out = engine.run(EngineInput(mesh, clip, masks, work_cam, device, req.seed, up_axis), progress)
    timings = progress.finish()

    disp = np.asarray(out.displacements, np.float32)
    if disp.shape != (clip.n_frames, mesh.n_vertices, 3):
        raise RuntimeError(f"engine {spec.name} returned displacements {disp.shape}, expected {(clip.n_frames, mesh.n_vertices, 3)}")
    out_cam = None
    if out.camera is not None:  # back to source resolution, per frame
        out_cam = out.camera.scaled(clip.source_size[0] / clip.size[0], clip.source_size[1] / clip.size[1])
        out_cam = replace(out_cam, image_size=tuple(clip.source_size)).with_frames(clip.n_frames)
    meta = {
        "engine": spec.name,
        "version": __version__,
        "options": {k: v for k, v in asdict(engine.options).items()} if hasattr(engine, "options") else {},
        "frames": str(rng),
        "working_size": list(clip.size),
        "source_size": list(clip.source_size),
        "device": str(device),
        "seed": req.seed,
        "masks": req.masks,
        "masks_result": mask_result.to_meta(),  # method actually used, empty frames, notes
        "camera_given": camera is not None,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "created_unix": time.time(),
        "info": json.loads(json.dumps(out.info, default=str)),
    }
    return Tracks(disp, clip.frame_indices, clip.fps, out.confidence, out_cam, meta,
                  out.bone_rotations, out.root_translation).validate(mesh.n_vertices)

"""The one path from a typed request to a Tracks result, shared by the CLI and the server.

check (afv.request) -> decode video -> masks -> camera to working resolution -> engine -> Tracks
(source resolution). Requests are built by `afv.request.parse_request`; nothing here parses a
user string.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .camera import Camera, intrinsics
from .camera_motion import CameraMotion, estimate_camera_motion
from .engines import EngineInput, get_engine_spec
from .errors import InputError
from .geometry.silhouette import camera_mask_iou
from .masks import MaskResult, resolve_masks
from .mesh import Mesh, load_mesh
from .progress import Progress
from .request import AnimateRequest, InputProbe, check_request, parse_request, probe_inputs
from .tracks import Tracks
from .video import load_video


COMPUTED_MASKS = ("chroma", "median", "saliency")  # estimated from the pixels, so they can be wrong
MIN_MASK_CAMERA_IOU = 0.5


def check_masks_against_camera(result: MaskResult, mesh: Mesh, camera: Camera) -> tuple[MaskResult, list[str]]:
    """The first mask against the mesh seen by a given camera (silhouette IoU, frame 0), for
    every engine. -> (masks to use, notes for the camera warnings).

    Below MIN_MASK_CAMERA_IOU, who made the evidence decides (docs/contracts.md, "Masks against
    the camera"): computed masks (chroma key, background model, saliency) are weaker evidence
    than the user's camera and mesh (e.g. median subtraction fails when the object hardly moves),
    and engines trust masks, so wrong ones would do more harm than none: they are dropped. Given
    masks (a path, or the clip's alpha) and a given camera are both the user's: both reach the
    engine, which uses the camera as given, so a mismatch (usually a wrong pose, lens or image
    size) is reported in the job's warnings.
    """
    if result.masks is None:
        return result, []
    iou = camera_mask_iou(mesh.vertices, mesh.faces, camera.K, camera.pose(0), result.masks[0])
    if iou >= MIN_MASK_CAMERA_IOU:
        return result, []
    if result.method in COMPUTED_MASKS:
        note = (f"{result.method} masks ignored: frame 0 overlaps the mesh seen by the given camera with IoU {iou:.2f} "
                f"(< {MIN_MASK_CAMERA_IOU}); give masks explicitly (--masks PATH) for this clip")
        return MaskResult(None, "none", [], [*result.notes, note]), []
    return result, [f"the given camera does not match the first mask (IoU {iou:.2f}); it is used as given "
                    f"(IoU >= {MIN_MASK_CAMERA_IOU} expected): check its pose, field of view and image size, or the masks"]


def resolve_device(name: str) -> torch.device:
    """A device name that check_request accepted -> torch.device ("auto": CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _stage_plan(engine_stages: dict[str, float], load: bool = False) -> dict[str, float]:
    return {**({"load_weights": 0.1} if load else {}), "decode": 0.1, "masks": 0.05, "camera_motion": 0.03, **engine_stages}


MIN_BACKGROUND_FRACTION = 0.2  # below this share of the frame, the background cannot tell the camera's motion
DEFAULT_FOV_DEG = 50.0  # a phone's main camera, roughly; only for the camera motion when no camera is given


def plane_reference(mesh: Mesh, M0: np.ndarray, up_axis: np.ndarray | None) -> np.ndarray:
    """The object's lowest point in camera-0 coordinates (M0: mesh -> camera 0): where it stands on
    the ground, the scale reference of a translating camera (afv.camera_motion). Lowest along
    `up_axis` (mesh coordinates) when known, else along the image's down direction."""
    v = mesh.vertices @ M0[:3, :3].T + M0[:3, 3]
    if up_axis is not None:
        i = int(np.argmin(mesh.vertices @ np.asarray(up_axis, float)))
    else:
        i = int(np.argmax(v[:, 1] / np.maximum(v[:, 2], 1e-6)))
    return v[i]


def collect_warnings(engine_warnings, mask_result: MaskResult, camera_notes: list[str]) -> list[str]:
    """Every warning and fallback note of a job as plain strings, for tracks.meta["info"]["warnings"]
    (docs/contracts.md): the engine's own, then the mask source's notes ("masks: ..."; why `auto`
    chose what it chose, masks ignored), empty mask frames, then the camera's ("camera: ...": a
    given camera against given masks, the camera motion)."""
    if isinstance(engine_warnings, str):
        engine_warnings = [engine_warnings]
    out = [str(w) for w in (engine_warnings or [])]
    out += [f"masks: {n}" for n in mask_result.notes]
    if mask_result.empty_frames:
        e = mask_result.empty_frames
        out.append(f"masks: empty in {len(e)} frame(s) (first: {e[0]})")
    out += [f"camera: {n}" for n in camera_notes]
    return out


def camera_motion_for(clip, masks: np.ndarray | None, work_cam: Camera | None, mesh: Mesh, up_axis,
                      progress: Progress) -> tuple[CameraMotion | None, list[str]]:
    """Estimate the camera's own motion when it can be seen and is not given: at least 2 frames,
    object masks (else the object's own motion would count as background) and a static given
    camera or none. -> (motion or None, notes for the warnings)."""
    if clip.n_frames < 2:
        return None, []
    if work_cam is not None and len(work_cam.mesh_to_camera) > 1 and not np.allclose(work_cam.mesh_to_camera, work_cam.mesh_to_camera[0]):
        return None, []  # the user gave a camera per frame: trust it
    if masks is None:
        return None, ["camera motion not estimated: no object masks to tell the background from the object"]
    W, H = clip.size
    K = work_cam.K if work_cam is not None else intrinsics(W, H, DEFAULT_FOV_DEG)
    ref = plane_reference(mesh, work_cam.pose(0), up_axis) if work_cam is not None else None
    motion = estimate_camera_motion(clip.frames, masks, K, ref, progress=progress)
    if motion.background_fraction < MIN_BACKGROUND_FRACTION:
        return None, [f"camera motion not estimated: the object leaves only {100 * motion.background_fraction:.0f} % of the frame as background"]
    return motion, list(motion.notes)


def _oracle_at_working_size(oracle: tuple[np.ndarray, np.ndarray] | None, clip, mesh: Mesh) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Dev-only oracle tracks (source-resolution pixels) scaled to the working resolution, shapes checked."""
    if oracle is None:
        return None, None
    tracks = np.asarray(oracle[0], np.float32)
    visible = np.asarray(oracle[1], bool)
    if tracks.shape != (clip.n_frames, mesh.n_vertices, 2) or visible.shape != tracks.shape[:2]:
        raise InputError(f"oracle tracks {tracks.shape} / visibility {visible.shape} do not match "
                         f"{clip.n_frames} frames x {mesh.n_vertices} vertices")
    scale = np.array([clip.size[0] / clip.source_size[0], clip.size[1] / clip.source_size[1]], np.float32)
    return tracks * scale, visible


def animate(req: AnimateRequest, progress: Progress | None = None, probe: InputProbe | None = None,
            oracle: tuple[np.ndarray, np.ndarray] | None = None) -> Tracks:
    """Run the whole job. Raises InputError / EngineError / Cancelled; writes nothing.

    The request is checked first (check_request on `probe`, or on a fresh probe of the files:
    they may have changed since a server checked them at submit).
    oracle: dev-only (`afv bench --oracle`), never from users: ground-truth tracks of every vertex
    ((T, N, 2) source-resolution pixels, (T, N) visibility) handed to the engine (docs/contracts.md).
    """
    progress = progress or Progress()
    probe = probe or probe_inputs(req)
    check_request(req, probe)
    spec = get_engine_spec(req.engine)
    engine = spec.create(req.options)
    device = resolve_device(req.device)
    prefetch = getattr(engine, "prefetch", None)  # engines with weights start loading them before the decode
    progress.set_plan(_stage_plan(engine.stages, load=prefetch is not None))
    if prefetch is not None:
        progress.start("load_weights")
        prefetch(device)
    mesh = req.mesh if isinstance(req.mesh, Mesh) else load_mesh(req.mesh)
    camera = req.camera
    rng = req.frames

    progress.start("decode")
    clip = load_video(
        req.video, rng, max_size=req.max_size, fps=req.fps, on_frame=lambda i, n: progress.update(i / max(n, i))
    )
    work_cam = None
    if camera is not None:  # checked against the probe; with_frames also holds when a container's count was approximate
        work_cam = camera.scaled(clip.size[0] / clip.source_size[0], clip.size[1] / clip.source_size[1])
        work_cam = replace(work_cam, mesh_to_camera=camera.with_frames(clip.n_frames).mesh_to_camera)

    progress.start("masks")
    n_source = probe.video_frames if probe.video_is_folder else None  # exact only for image folders
    mask_result = resolve_masks(req.masks, clip, n_source_frames=n_source, progress=progress)
    camera_notes: list[str] = []
    if work_cam is not None:
        mask_result, camera_notes = check_masks_against_camera(mask_result, mesh, work_cam)
    masks = mask_result.masks

    progress.start("camera_motion")
    motion, motion_notes = camera_motion_for(clip, masks, work_cam, mesh, req.up_axis, progress)
    engine_motion = None
    if motion is not None and motion.moves:
        if work_cam is not None:  # the object's placement stays; the camera moves around it
            work_cam = replace(work_cam, mesh_to_camera=motion.world_to_cam @ work_cam.pose(0))
        else:
            engine_motion = motion
            motion_notes.append(f"no camera given: the estimated camera motion (with a {DEFAULT_FOV_DEG:.0f} deg field of view) is offered to the engine as EngineInput.camera_motion")

    oracle_tracks, oracle_visible = _oracle_at_working_size(oracle, clip, mesh)
    torch.manual_seed(req.seed)
    out = engine.run(EngineInput(mesh, clip, masks, work_cam, device, req.seed, req.up_axis, first_pose=req.first_pose,
                                 camera_motion=engine_motion, oracle_tracks=oracle_tracks, oracle_visible=oracle_visible), progress)
    timings = progress.finish()

    disp = np.asarray(out.displacements, np.float32)
    if disp.shape != (clip.n_frames, mesh.n_vertices, 3):
        raise RuntimeError(f"engine {spec.name} returned displacements {disp.shape}, expected {(clip.n_frames, mesh.n_vertices, 3)}")
    out_cam = None
    used_cam = out.camera if out.camera is not None else (work_cam if motion is not None and motion.moves else None)
    if used_cam is not None:  # back to source resolution, per frame
        out_cam = used_cam.scaled(clip.source_size[0] / clip.size[0], clip.source_size[1] / clip.size[1])
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
        "masks": str(req.masks),
        "masks_result": mask_result.to_meta(),  # method actually used, empty frames, notes
        "camera_given": camera is not None,
        "camera_motion": motion.summary() if motion is not None else None,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "created_unix": time.time(),
        "info": json.loads(json.dumps(out.info, default=str)),
    }
    # one list the add-on shows: the engine's warnings, then the pipeline's fallbacks (masks, camera)
    meta["info"]["warnings"] = collect_warnings(meta["info"].get("warnings"), mask_result, camera_notes + motion_notes)
    if req.first_pose and not spec.first_pose:  # an engine that can but does not (no masks) says why itself
        meta["info"]["warnings"].append(f"engine {spec.name} does not pose the first frame (first_pose): frame 0 is the rest pose")
    return Tracks(disp, clip.frame_indices, clip.fps, out.confidence, out_cam, meta,
                  out.bone_rotations, out.root_translation).validate(mesh.n_vertices)


def animate_to_file(req: AnimateRequest, out: str | Path, progress: Progress | None = None,
                    probe: InputProbe | None = None) -> Tracks:
    """animate() and write the tracks atomically to `out` (the server's job and the CLI)."""
    progress = progress or Progress()
    tracks = animate(req, progress, probe)
    progress.check()  # a cancel during the last engine step must not leave a result
    t0 = time.monotonic()
    tracks.save(out)
    tracks.meta.setdefault("timings_s", {})["write"] = round(time.monotonic() - t0, 4)
    return tracks


__all__ = ["AnimateRequest", "animate", "animate_to_file", "parse_request", "resolve_device"]

"""Procedural sequences with known motion: ground truth by construction.

Each sequence is a mesh, its vertex positions over time and a camera; `render_sequence`
turns it into RGBA frames with a solid texture that moves with the surface, so optical
flow can track it. Used by the tests, the benchmark and the bundled sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from afv.camera import Camera, default_camera, intrinsics, look_at
from afv.mesh import Mesh
from afv.geometry.projection import transform_points
from afv.geometry.raster import interpolate, rasterize
from afv.geometry.surface import vertex_normals

# Bump when sequences or their rendering change, so cached renders (afv bench) are rebuilt.
SYNTHETIC_VERSION = 2


@dataclass
class Sequence:
    name: str
    mesh: Mesh  # rest pose = frame 0
    positions: np.ndarray  # (T, N, 3) float32 ground-truth vertex positions, mesh coordinates
    camera: Camera  # static, mesh_to_camera (1, 4, 4)
    fps: float = 24.0
    # articulated sequences (mesh.rig set): the true motion in the tracks' convention (docs/contracts.md)
    bone_rotations: np.ndarray | None = None  # (T, B, 4) float32 wxyz, relative to the parent, mesh axes
    root_translation: np.ndarray | None = None  # (T, 3) float32

    @property
    def displacements(self) -> np.ndarray:
        return self.positions - self.mesh.vertices[None]


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * Kx + (1 - np.cos(angle)) * Kx @ Kx


def rigid_sequence(n_frames: int = 16, size=(256, 256), subdivisions: int = 3) -> Sequence:
    """A textured rounded box turning and sliding: 6-DoF rigid motion."""
    box = trimesh.creation.box(extents=(1.0, 0.7, 0.5))
    for _ in range(subdivisions):
        box = box.subdivide()
    v = np.asarray(box.vertices, np.float32)
    t = np.linspace(0, 1, n_frames)
    pos = []
    for s in t:
        R = _rot([0.2, 1.0, 0.1], 0.6 * s) @ _rot([1, 0, 0], 0.25 * np.sin(np.pi * s))
        tr = np.array([0.25 * s, 0.1 * np.sin(np.pi * s), -0.15 * s])
        pos.append(v @ R.T + tr)
    mesh = Mesh(v, np.asarray(box.faces, np.int32))
    return Sequence("rigid_box", mesh, np.stack(pos).astype(np.float32), default_camera(v, size))


def bending_cylinder(n_frames: int = 16, size=(256, 256), max_angle: float = 1.2) -> Sequence:
    """A capsule along +y bending about its base: smooth non-rigid motion."""
    cyl = trimesh.creation.capsule(height=2.0, radius=0.25, count=[24, 24])
    v = np.asarray(cyl.vertices, np.float32)
    v[:, [1, 2]] = v[:, [2, 1]]  # capsule axis z -> y
    v[:, 1] += 1.25  # base at y = 0
    faces = np.asarray(cyl.faces, np.int32)[:, [0, 2, 1]]  # keep outward winding after the swap
    length = 2.5
    pos = []
    for s in np.linspace(0, 1, n_frames):
        ang = max_angle * np.sin(0.5 * np.pi * s)
        pos.append(_bend(v, ang, length))
    mesh = Mesh(v, faces)
    return Sequence("bending_cylinder", mesh, np.stack(pos).astype(np.float32), default_camera(v, size, direction=(0.0, 0.0, 1.0)))


def _bend(v: np.ndarray, angle: float, length: float) -> np.ndarray:
    """Bend along y towards +x by total `angle` over `length` (circular arc)."""
    if abs(angle) < 1e-6:
        return v.copy()
    rad = length / angle
    y = np.clip(v[:, 1], 0, None)
    theta = y / rad
    x = v[:, 0]
    out = v.copy()
    out[:, 0] = rad - (rad - x) * np.cos(theta)
    out[:, 1] = (rad - x) * np.sin(theta)
    return out


def waving_sheet(n_frames: int = 16, size=(256, 256), amplitude: float = 0.25) -> Sequence:
    """A square sheet with a travelling wave: a thin, strongly non-rigid surface."""
    n = 32
    xs, ys = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-0.7, 0.7, n))
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], 1).astype(np.float32)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)]).astype(np.int32)
    pos = []
    for s in np.linspace(0, 1, n_frames):
        p = v.copy()
        p[:, 2] = amplitude * np.sin(2.5 * (v[:, 0] + 1) - 2 * np.pi * s) * (v[:, 0] + 1) / 2 * np.sin(np.pi * s * 0.999 + 1e-3)
        pos.append(p)
    mesh = Mesh(v, faces)
    return Sequence("waving_sheet", mesh, np.stack(pos).astype(np.float32), default_camera(v, size, direction=(0.3, -0.4, 1.0)))


def multi_part(n_frames: int = 16, size=(256, 256)) -> Sequence:
    """Three separate boxes (disconnected parts) moving independently."""
    parts, motions = [], []
    specs = [((-0.8, 0, 0), [0, 1, 0], 0.8, (0, 0.2, 0)), ((0, 0, 0), [1, 0, 0], -0.6, (0, 0, 0.2)), ((0.8, 0, 0), [0, 0, 1], 0.7, (0.1, -0.2, 0))]
    for centre, axis, ang, tr in specs:
        b = trimesh.creation.box(extents=(0.5, 0.5, 0.5)).subdivide().subdivide()
        parts.append((np.asarray(b.vertices) + centre, np.asarray(b.faces), np.asarray(centre), axis, ang, np.asarray(tr)))
    v_all, f_all, off = [], [], 0
    for v, f, *_ in parts:
        v_all.append(v)
        f_all.append(f + off)
        off += len(v)
    v0 = np.concatenate(v_all).astype(np.float32)
    pos = []
    for s in np.linspace(0, 1, n_frames):
        frame = []
        for v, f, c, axis, ang, tr in parts:
            R = _rot(axis, ang * s)
            frame.append((v - c) @ R.T + c + tr * s)
        pos.append(np.concatenate(frame))
    mesh = Mesh(v0, np.concatenate(f_all).astype(np.int32))
    return Sequence("multi_part", mesh, np.stack(pos).astype(np.float32), default_camera(v0, size, direction=(0.2, -0.5, 1.0)))


# ---------------------------------------------------------------- a rigged multi-limb figure

# (name, parent, head, tail, limb, radius): a quadruped-like figure along +x, +y up. The primitive of
# each bone is the capsule head -> tail (the body's spans its whole length, the head's ends in a
# ball); "limb" is the construction label (body, four legs, head) that automatic rigs are scored on.
_FIGURE_BONES = (
    ("body", -1, (0.0, 0.9, 0.0), (0.62, 0.9, 0.0), "body", 0.27),
    ("head", 0, (0.55, 1.02, 0.0), (0.88, 1.38, 0.0), "head", 0.11),
    ("leg_fl_upper", 0, (0.45, 0.86, 0.17), (0.45, 0.5, 0.19), "leg_fl", 0.1),
    ("leg_fl_lower", 2, (0.45, 0.5, 0.19), (0.45, 0.1, 0.19), "leg_fl", 0.09),
    ("leg_fr_upper", 0, (0.45, 0.86, -0.17), (0.45, 0.5, -0.19), "leg_fr", 0.1),
    ("leg_fr_lower", 4, (0.45, 0.5, -0.19), (0.45, 0.1, -0.19), "leg_fr", 0.09),
    ("leg_hl_upper", 0, (-0.45, 0.86, 0.17), (-0.45, 0.5, 0.19), "leg_hl", 0.1),
    ("leg_hl_lower", 6, (-0.45, 0.5, 0.19), (-0.45, 0.1, 0.19), "leg_hl", 0.09),
    ("leg_hr_upper", 0, (-0.45, 0.86, -0.17), (-0.45, 0.5, -0.19), "leg_hr", 0.1),
    ("leg_hr_lower", 8, (-0.45, 0.5, -0.19), (-0.45, 0.1, -0.19), "leg_hr", 0.09),
)
FIGURE_LIMBS = ("body", "head", "leg_fl", "leg_fr", "leg_hl", "leg_hr")
FIGURE_HEAD_BALL = ((0.92, 1.42, 0.0), 0.19)  # the head bone's ball: centre, radius
FIGURE_BODY_SPAN = ((-0.62, 0.9, 0.0), (0.62, 0.9, 0.0))  # the body capsule's axis (its bone starts mid-body)


def _capsule_sdf(p: np.ndarray, a, b, r: float) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1) - r


def figure_primitives(p: np.ndarray) -> np.ndarray:
    """(..., 3) points -> (..., B) signed distance to each bone's primitive of the rigged figure."""
    out = []
    for name, _, h, t, _, r in _FIGURE_BONES:
        if name == "body":
            d = _capsule_sdf(p, *FIGURE_BODY_SPAN, r)
        else:
            d = _capsule_sdf(p, h, t, r)
        if name == "head":
            c, rb = FIGURE_HEAD_BALL
            d = np.minimum(d, np.linalg.norm(p - np.asarray(c), axis=-1) - rb)
        out.append(d)
    return np.stack(out, -1)


def _smooth_min(d: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum over the last axis (blends primitives into one surface)."""
    m = d[..., 0]
    for i in range(1, d.shape[-1]):
        h = np.clip(0.5 + 0.5 * (d[..., i] - m) / k, 0.0, 1.0)
        m = d[..., i] * (1 - h) + m * h - k * h * (1 - h)
    return m


def figure_limb_labels(vertices: np.ndarray) -> np.ndarray:
    """(N,) index into FIGURE_LIMBS of the limb each vertex belongs to by construction (nearest primitive)."""
    bone = figure_primitives(vertices).argmin(-1)
    limb_of_bone = np.array([FIGURE_LIMBS.index(b[4]) for b in _FIGURE_BONES])
    return limb_of_bone[bone]


def figure_rig_mesh(spacing: float = 0.03, blend: float = 0.05, k_influences: int = 4):
    """The figure's mesh (one connected surface: smooth union of its primitives, marching cubes)
    and its rig: bones as in _FIGURE_BONES, skin weights from the distance to each primitive."""
    from skimage.measure import marching_cubes

    from afv.rig import validate_rig

    lo = np.array([-1.0, -0.05, -0.5])
    hi = np.array([1.2, 1.7, 0.5])
    n = np.ceil((hi - lo) / spacing).astype(int) + 1
    axes = [lo[i] + spacing * np.arange(n[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    sdf = _smooth_min(figure_primitives(grid), blend)
    verts, faces, _, _ = marching_cubes(sdf.astype(np.float32), 0.0, spacing=(spacing,) * 3)
    verts = verts + lo  # (skimage's default winding is outward for a field negative inside: checked by volume > 0)
    d = figure_primitives(verts)
    # weights fall off over ~blend from the nearest primitive: smooth across joints, rigid elsewhere
    k = min(k_influences, d.shape[1])
    joints = np.argsort(d, 1)[:, :k]
    dj = np.take_along_axis(d, joints, 1)
    w = np.exp(-(dj - dj[:, :1]) / (0.35 * blend))
    w[w < 1e-3] = 0.0
    names, parents, heads, tails, _, _ = zip(*_FIGURE_BONES)
    rig = validate_rig(names, np.array(parents), np.array(heads), np.array(tails), joints, w, n_vertices=len(verts))
    return Mesh(verts.astype(np.float32), faces.astype(np.int32), rig)


def figure_pose(n_frames: int, amplitude: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Known bone motion of the figure: a walk cycle. Returns local rotations (T, B, 3) axis-angle
    (relative to the parent, mesh axes, per docs/contracts.md) and the root translation (T, 3)."""
    B = len(_FIGURE_BONES)
    T = n_frames
    s = np.linspace(0.0, 1.0, T)
    ph = 2 * np.pi * s  # one stride over the clip
    rot = np.zeros((T, B, 3))
    a = amplitude
    # legs swing about z (the side axis), diagonal pairs in phase; knees only bend backwards
    for up, lo, phase in ((2, 3, 0.0), (8, 9, 0.0), (4, 5, np.pi), (6, 7, np.pi)):
        rot[:, up, 2] = 0.45 * a * np.sin(ph + phase)
        rot[:, lo, 2] = -0.5 * a * np.clip(np.sin(ph + phase + 0.8), 0, None)
    rot[:, 1, 2] = 0.25 * a * np.sin(2 * ph)  # head nods
    rot[:, 1, 1] = 0.35 * a * np.sin(ph)  # and turns
    rot[:, 0, 0] = 0.08 * a * np.sin(2 * ph)  # the body rolls a little
    rot[:, 0, 1] = 0.2 * a * s  # and turns
    root = np.stack([0.15 * a * s, 0.03 * a * np.sin(2 * ph), np.zeros(T)], 1)
    rot -= rot[:1]  # frame 0 is the rest pose (Sequence contract: mesh = frame 0)
    root -= root[:1]
    return rot.astype(np.float32), root.astype(np.float32)


def rigged_figure(n_frames: int = 16, size=(256, 256), amplitude: float = 1.0, spacing: float = 0.03) -> Sequence:
    """A quadruped-like figure (body, four two-bone legs, head; one welded surface) carrying its
    own Rig, moved by known bone rotations through afv.deform.kinematics (LBS): articulated
    ground truth. figure_pose gives the rotations, figure_limb_labels the construction parts."""
    from afv.deform.kinematics import RigTensors, axis_angle_to_matrix, axis_angle_to_quaternion

    mesh = figure_rig_mesh(spacing)
    rot, root = figure_pose(n_frames, amplitude)
    rt = RigTensors.from_rig(mesh.rig, dtype=torch.float64)
    with torch.no_grad():
        pos = rt.pose(torch.as_tensor(mesh.vertices, dtype=torch.float64),
                      axis_angle_to_matrix(torch.as_tensor(rot, dtype=torch.float64)), torch.as_tensor(root, dtype=torch.float64))
    cam = default_camera(mesh.vertices, size, direction=(0.35, 0.3, 1.0), dist_factor=1.7)
    quat = axis_angle_to_quaternion(torch.as_tensor(rot, dtype=torch.float64)).numpy().astype(np.float32)
    return Sequence("rigged_figure", mesh, pos.numpy().astype(np.float32), cam, bone_rotations=quat, root_translation=root)


SEQUENCES = {"rigid_box": rigid_sequence, "bending_cylinder": bending_cylinder, "waving_sheet": waving_sheet, "multi_part": multi_part,
             "rigged_figure": rigged_figure}


def solid_texture(points: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    """(N, 3) rest positions -> (N, 3) float colours in [0, 1]: a 3D sum-of-sines pattern.

    A texture defined on rest positions moves with the surface, giving optical flow
    something to track on any mesh without UVs. `scale` is the object size.
    """
    rng = np.random.default_rng(seed)
    p = points / scale
    col = np.zeros((len(points), 3))
    freqs = (3.0, 7.0, 15.0, 29.0)
    for freq in freqs:
        dirs = rng.normal(size=(3, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        phase = rng.uniform(0, 2 * np.pi, 3)
        col += np.sin(freq * 2 * np.pi * p @ dirs.T / 4 + phase) / np.sqrt(freq)
    # a fixed mapping to [0, 1] (not per call), so a surface point keeps its colour in every frame
    bound = sum(1 / np.sqrt(f) for f in freqs)
    return (0.5 + 0.65 * col / bound).clip(0, 1).astype(np.float32)


def render_sequence(seq: Sequence, background: tuple[float, float, float] | None = None, seed: int = 0, device: str = "cpu") -> np.ndarray:
    """Render every frame; returns (T, H, W, 4) uint8 RGBA (alpha = object).

    The texture is evaluated per pixel from interpolated rest positions, so it stays
    sharp on coarse meshes. Mild Lambert shading from a light at the camera.
    background: RGB in [0, 1] painted where alpha is 0 (None leaves black).
    """
    dev = torch.device(device)
    W, H = seq.camera.image_size
    K = torch.as_tensor(seq.camera.K, dtype=torch.float32, device=dev)
    faces = torch.as_tensor(seq.mesh.faces, dtype=torch.long, device=dev)
    rest = torch.as_tensor(seq.mesh.vertices, device=dev)
    scale = seq.mesh.bbox_diagonal()
    out = np.zeros((len(seq.positions), H, W, 4), np.uint8)
    for t, p in enumerate(seq.positions):
        M = seq.camera.pose(t)
        pc = torch.as_tensor(transform_points(p, M), dtype=torch.float32, device=dev)
        r = rasterize(pc, faces, K, (W, H))
        rest_px = interpolate(r, rest, faces)[r.mask].cpu().numpy()
        n = interpolate(r, vertex_normals(pc, faces), faces)[r.mask]
        view = -interpolate(r, pc, faces)[r.mask]
        shade = (torch.nn.functional.normalize(n, dim=1) * torch.nn.functional.normalize(view, dim=1)).sum(1).abs()
        col = solid_texture(rest_px, scale, seed) * (0.55 + 0.45 * shade.cpu().numpy()[:, None])
        img = np.zeros((H, W, 3), np.float32)
        if background is not None:
            img[:] = background
        m = r.mask.cpu().numpy()
        img[m] = col
        out[t, ..., :3] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        out[t, ..., 3] = m * 255
    return out


def write_png_folder(frames_rgba: np.ndarray, folder) -> None:
    import cv2
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames_rgba):
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGBA2BGRA))


def write_video(frames_rgb: np.ndarray, path, fps: float = 24.0) -> None:
    """(T, H, W, 3) uint8 RGB -> mp4 (mp4v) or avi (MJPG) via OpenCV."""
    import cv2
    from pathlib import Path

    path = Path(path)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    T, H, W = frames_rgb.shape[:3]
    wr = cv2.VideoWriter(str(path), fourcc, fps, (W, H))
    if not wr.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for f in frames_rgb:
        wr.write(cv2.cvtColor(f[..., :3], cv2.COLOR_RGB2BGR))
    wr.release()


@dataclass
class MovingCameraScene:
    """A still object on a textured ground plane, filmed by a camera that pans and dollies."""

    mesh: Mesh  # the object, standing on the plane y = 0 (mesh coordinates = world, +y up)
    frames: np.ndarray  # (T, H, W, 4) uint8 RGBA, alpha = the object (the ground is background)
    camera: Camera  # the true camera, mesh_to_camera (T, 4, 4)


def moving_camera_scene(n_frames: int = 16, size=(256, 192), pan: float = 0.9, dolly: float = 0.9, fov: float = 50.0,
                        seed: int = 0) -> MovingCameraScene:
    """Render a rounded box resting on a 12 x 12 textured ground; the camera's target slides
    sideways by `pan` and its eye moves `dolly` towards the object (world units) over the clip."""
    box = trimesh.creation.box(extents=(1.0, 0.7, 0.5))
    for _ in range(2):
        box = box.subdivide()
    obj = np.asarray(box.vertices, np.float32) + np.array([0, 0.35, 0], np.float32)
    n = 48  # ground grid: small triangles keep the screen-space interpolation close to perspective-correct
    gx, gz = np.meshgrid(np.linspace(-6, 6, n + 1), np.linspace(-6, 6, n + 1))
    ground = np.stack([gx.ravel(), np.zeros(gx.size), gz.ravel()], 1).astype(np.float32)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    gfaces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)]) + len(obj)
    verts = np.concatenate([obj, ground])
    faces = np.concatenate([np.asarray(box.faces), gfaces]).astype(np.int64)
    n_obj_faces = len(box.faces)
    W, H = size
    K = intrinsics(W, H, fov)
    poses = []
    for s in np.linspace(0, 1, n_frames):
        eye = np.array([0.3, 1.7, 4.2]) + np.array([0, 0, -dolly * s])
        target = np.array([0.0, 0.35, 0.0]) + np.array([pan * s, 0, 0])
        poses.append(look_at(eye, target))
    poses = np.stack(poses)
    Kt = torch.as_tensor(K, dtype=torch.float32)
    ft = torch.as_tensor(faces)
    out = np.zeros((n_frames, H, W, 4), np.uint8)
    for t, M in enumerate(poses):
        pc = torch.as_tensor(verts @ M[:3, :3].T + M[:3, 3], dtype=torch.float32)
        r = rasterize(pc, ft, Kt, (W, H))
        m = r.mask.numpy()
        rest = interpolate(r, torch.as_tensor(verts), ft)[r.mask].numpy()
        img = np.zeros((H, W, 3), np.float32)
        img[m] = solid_texture(rest, 1.2, seed)
        out[t, ..., :3] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        out[t, ..., 3] = ((r.face_id.numpy() >= 0) & (r.face_id.numpy() < n_obj_faces)) * 255
    return MovingCameraScene(Mesh(obj, np.asarray(box.faces, np.int32)), out, Camera((W, H), K, poses))

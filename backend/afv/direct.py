"""Direct (photometric) alignment of a rigid textured model to an image.

Given 3D surface points X with reference colours seen in a keyframe, the 6-DoF pose of
the current frame is refined so that the current image, sampled at the projections of X,
reproduces the reference colours (Gauss-Newton with Huber weights). Unlike flow + PnP,
every pixel of every colour channel constrains the same 6 parameters, so there is no
aperture problem and per-patch flow errors do not become pose error.

Images are compared after local contrast normalisation (per channel: subtract a Gaussian
blur, divide by the local RMS contrast), which removes slow shading and the multiplicative
brightness change of a surface turning relative to the light.
"""

from __future__ import annotations

import cv2
import numpy as np

from .geometry.projection import project_points, transform_points


def normalized_image(frame: np.ndarray, sigma: float = 5.0, eps: float = 4.0) -> np.ndarray:
    """(H, W, C) or (H, W) uint8 -> (H, W, C) float32 local-contrast-normalised channels.

    sigma: px of the Gaussian giving the local mean and contrast; eps: contrast floor
    (grey levels) so flat areas stay near 0 instead of amplifying noise.
    """
    x = np.asarray(frame, np.float32)
    if x.ndim == 2:
        x = x[..., None]
    hp = x - cv2.GaussianBlur(x, (0, 0), sigma).reshape(x.shape)
    rms = np.sqrt(cv2.GaussianBlur(hp * hp, (0, 0), sigma).reshape(x.shape) + eps * eps)
    return (hp / rms).astype(np.float32)


def image_with_gradients(img: np.ndarray) -> np.ndarray:
    """(H, W, C) float32 -> (H, W, 3C) float32: channels, then d/dx, then d/dy (central differences)."""
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=1, scale=0.5).reshape(img.shape)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=1, scale=0.5).reshape(img.shape)
    return np.concatenate([img, gx, gy], axis=2)


def sample_pixels(field: np.ndarray | list[np.ndarray], uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of (H, W, D) float32 at (P, 2) pixel coords (centres at +0.5) -> (P, D).

    field may also be given as channel_chunks(field) (reused across calls: no copies).
    """
    chunks = channel_chunks(field) if isinstance(field, np.ndarray) else field
    mx = (uv[:, 0] - 0.5).astype(np.float32).reshape(-1, 1)
    my = (uv[:, 1] - 0.5).astype(np.float32).reshape(-1, 1)
    parts = [cv2.remap(c, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for c in chunks]
    return np.concatenate([p.reshape(len(uv), -1) for p in parts], axis=1)


def channel_chunks(field: np.ndarray) -> list[np.ndarray]:
    """(H, W, D) -> contiguous pieces of at most 4 channels (what cv2.remap handles reliably)."""
    return [np.ascontiguousarray(field[..., i : i + 4]) for i in range(0, field.shape[2], 4)]


def _rodrigues(w: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(w, np.float64).reshape(3, 1))[0]


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W, 3) float32: signed distance (px) to the mask boundary, > 0 outside,
    then its d/dx and d/dy (the layout image_with_gradients gives)."""
    m = mask.astype(np.uint8)
    out = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5) - cv2.distanceTransform(m, cv2.DIST_L2, 5)
    # the boundary lies half-way between an inside and an outside pixel centre
    sd = np.where(m > 0, out + 0.5, out - 0.5).astype(np.float32)
    return image_with_gradients(sd[..., None])


def silhouette_points(X: np.ndarray, faces: np.ndarray, adjacency: np.ndarray, adjacency_edges: np.ndarray, M: np.ndarray, spacing: float) -> np.ndarray:
    """Points on the mesh's occluding contour under pose M (4, 4): (S, 3) in mesh coords.

    adjacency: (E, 2) pairs of faces sharing an edge; adjacency_edges: (E, 2) its vertices
    (trimesh.Trimesh.face_adjacency / face_adjacency_edges). An edge is on the contour when
    one of its faces looks towards the camera and the other away; points are spread along it
    every `spacing` mesh units.
    """
    Xc = transform_points(X, M)
    tri = Xc[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    facing = (n * tri.mean(1)).sum(1) < 0
    e = adjacency_edges[facing[adjacency[:, 0]] != facing[adjacency[:, 1]]]
    if len(e) == 0:
        return np.zeros((0, 3))
    a, b = X[e[:, 0]], X[e[:, 1]]
    k = np.maximum(np.ceil(np.linalg.norm(b - a, axis=1) / spacing).astype(np.int64), 1)
    idx = np.repeat(np.arange(len(e)), k)
    frac = (np.arange(len(idx)) - np.repeat(np.cumsum(k) - k, k) + 0.5) / np.repeat(k, k)
    return a[idx] + frac[:, None] * (b[idx] - a[idx])


def refine_pose(
    P: np.ndarray, X: np.ndarray, ref: np.ndarray, field: np.ndarray, K: np.ndarray, usable: np.ndarray | None = None,
    iters: int = 8, huber: float = 1.345, margin: float = 2.0,
    sil_X: np.ndarray | None = None, sil_field: np.ndarray | None = None, sil_weight: float = 1.0,
) -> tuple[np.ndarray, float]:
    """Refine a mesh-to-camera pose by photometric alignment.

    P: (4, 4) initial pose; X: (P, 3) model points; ref: (P, C) their reference values;
    field: (H, W, 3C) current image_with_gradients; K: (3, 3); usable: (H, W) bool where
    samples may land (e.g. the eroded object mask) or None.
    huber: threshold in robust standard deviations (MAD) of the residuals.
    sil_X: (S, 3) model points on the occluding contour, pulled onto the zero level of
    sil_field (H, W, 3) = signed_distance(mask); sil_weight: weight of one contour point
    (px of contour distance) relative to one photometric sample (normalised units).
    Returns the refined (4, 4) pose and the fraction of points used at the end (0 if the
    problem was degenerate: the input pose is returned unchanged).
    """
    H, W = field.shape[:2]
    C = ref.shape[1]
    fx, fy = K[0, 0], K[1, 1]
    R, t = P[:3, :3].copy(), P[:3, 3].copy()
    used = 0.0
    field_c = channel_chunks(field)
    sil_c = channel_chunks(sil_field) if sil_field is not None else None
    for _ in range(iters):
        Xc = X @ R.T + t
        z = Xc[:, 2]
        uv = project_points(Xc, K, min_depth=1e-9)
        ok = (z > 1e-6) & (uv[:, 0] >= margin) & (uv[:, 0] < W - margin) & (uv[:, 1] >= margin) & (uv[:, 1] < H - margin)
        if usable is not None:
            xi = np.clip(uv[:, 0].astype(np.int64), 0, W - 1)
            yi = np.clip(uv[:, 1].astype(np.int64), 0, H - 1)
            ok &= usable[yi, xi]
        if ok.sum() < 12:
            return P, 0.0
        Xc, z, uv, rf = Xc[ok], z[ok, None], uv[ok], ref[ok]
        s = sample_pixels(field_c, uv)
        r = s[:, :C] - rf  # (Q, C)
        g = np.stack([s[:, C : 2 * C], s[:, 2 * C :]], axis=2)  # (Q, C, 2)
        J = _jacobian(Xc, z, g, fx, fy).reshape(-1, 6)
        rr = r.reshape(-1).astype(np.float64)
        sd = 1.4826 * np.median(np.abs(rr)) + 1e-6
        a = np.abs(rr) / (huber * sd)
        w = np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-12))
        if sil_X is not None and len(sil_X) and sil_c is not None:
            Js, rs = _point_terms(sil_X, R, t, K, sil_c)
            a = np.abs(rs) / 1.5  # px: contour points further off are probably occluded or mis-segmented
            ws = sil_weight**2 * np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-12))
            J, rr, w = np.concatenate([J, Js]), np.concatenate([rr, rs]), np.concatenate([w, ws])
        Hm = (J * w[:, None]).T @ J
        b = (J * w[:, None]).T @ rr
        try:
            d = -np.linalg.solve(Hm + 1e-9 * np.trace(Hm) * np.eye(6), b)
        except np.linalg.LinAlgError:
            return P, 0.0
        dR = _rodrigues(d[:3])
        R, t = dR @ R, dR @ t + d[3:]
        used = float(ok.mean())
        if np.linalg.norm(d[:3]) < 1e-6 and np.linalg.norm(d[3:]) < 1e-6 * max(np.linalg.norm(t), 1e-9):
            break
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R, t
    return out, used


def _point_terms(Xs: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, field: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (S,) = field value (channel_chunks of an (H, W, 3) value + gradient field) at the
    projections of Xs (S, 3), and their (S, 6) Jacobian."""
    fx, fy = K[0, 0], K[1, 1]
    Xc = Xs @ R.T + t
    z = np.maximum(Xc[:, 2:3], 1e-9)
    uv = project_points(Xc, K, min_depth=1e-9)
    s = sample_pixels(field, uv)
    return _jacobian(Xc, z, s[:, None, 1:3], fx, fy)[:, 0], s[:, 0].astype(np.float64)


def _jacobian(Xc: np.ndarray, z: np.ndarray, g: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """d(value)/d(pose) for values with image gradients g (Q, C, 2) sampled at the projections of
    camera points Xc (Q, 3) (z: (Q, 1) depths) -> (Q, C, 6) for the left perturbation
    d Xc = w x Xc + v, columns (w, v)."""
    x, y, zz = Xc[:, None, 0], Xc[:, None, 1], z[:, None, 0]
    gu, gv = g[..., 0], g[..., 1]
    jx = np.stack([gu * fx / zz, gv * fy / zz, -(gu * fx * x + gv * fy * y) / zz**2], 2)  # d value / d Xc
    return np.concatenate([np.cross(Xc[:, None, :], jx), jx], 2)

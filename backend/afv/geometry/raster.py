"""A small non-differentiable triangle rasteriser in torch (CPU or CUDA).

Used for visibility (which vertices the camera sees), silhouettes, previews and the
synthetic test clips. Written here because the usual GPU rasterisers (nvdiffrast,
pytorch3d) need CUDA builds that are unavailable on the CPU machines we support.

Method: every face is expanded to the pixels of its clipped bounding box in chunks,
barycentric coordinates decide coverage, and a z-buffer (scatter_reduce amin on
pixel index) keeps the nearest surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .projection import project_points


@dataclass
class Raster:
    face_id: torch.Tensor  # (H, W) int64, -1 where no surface
    bary: torch.Tensor  # (H, W, 3) float32 barycentric weights of face_id's corners
    depth: torch.Tensor  # (H, W) float32 camera z, +inf where no surface

    @property
    def mask(self) -> torch.Tensor:
        return self.face_id >= 0


@torch.no_grad()
def rasterize(
    verts_cam: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    size: tuple[int, int],
    max_pairs: int = 4_000_000,
) -> Raster:
    """Rasterise triangles seen by a pinhole camera.

    verts_cam: (N, 3) float camera coordinates (z forward); faces: (F, 3) int64;
    K: (3, 3); size: (W, H). Faces behind the near plane are skipped. Pixel centres are
    at integer + 0.5 (OpenCV convention: pixel (0,0) covers [0,1)^2).
    """
    W, H = size
    dev = verts_cam.device
    faces = faces.to(dev).long()
    K = K.to(dev, torch.float32)
    v = verts_cam.float()
    uv = project_points(v, K)  # (N, 2)
    tri = uv[faces]  # (F, 3, 2)
    z = v[faces][..., 2]  # (F, 3)
    ok = (z > 1e-4).all(1)
    lo = tri.min(1).values.floor().clamp(min=0)
    hi = tri.max(1).values.ceil().clamp(max=torch.tensor([W, H], device=dev, dtype=torch.float32))
    ok &= (hi[:, 0] > lo[:, 0]) & (hi[:, 1] > lo[:, 1])
    fidx = torch.nonzero(ok).squeeze(1)
    lo, hi = lo[fidx].long(), hi[fidx].long()
    bw, bh = hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
    counts = bw * bh

    zbuf = torch.full((H * W,), float("inf"), device=dev)
    best_face = torch.full((H * W,), -1, device=dev, dtype=torch.long)
    # chunk faces so the (face, pixel) pair list stays bounded in memory
    csum = torch.cumsum(counts, 0)
    start = 0
    pairs_per_chunk: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    while start < len(fidx):
        base = csum[start - 1] if start > 0 else torch.tensor(0, device=dev)
        end = int(torch.searchsorted(csum, base + max_pairs, right=True))
        end = max(end, start + 1)
        sl = slice(start, end)
        c = counts[sl]
        f_rep = torch.repeat_interleave(torch.arange(start, end, device=dev), c)
        offs = torch.arange(int(c.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        px = lo[f_rep, 0] + offs % bw[f_rep]
        py = lo[f_rep, 1] + torch.div(offs, bw[f_rep], rounding_mode="floor")
        face = fidx[f_rep]
        t = tri[face]  # (P, 3, 2)
        p = torch.stack([px.float() + 0.5, py.float() + 0.5], 1)
        a, b, cc = t[:, 0], t[:, 1], t[:, 2]
        v0, v1, v2 = b - a, cc - a, p - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        valid = den.abs() > 1e-12
        den = torch.where(valid, den, torch.ones_like(den))
        w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        w0 = 1 - w1 - w2
        inside = valid & (w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6)
        face, px, py = face[inside], px[inside], py[inside]
        w = torch.stack([w0, w1, w2], 1)[inside]
        # perspective-correct depth: interpolate 1/z in screen space
        zf = z[face]
        depth = 1.0 / (w / zf).sum(1)
        pix = py * W + px
        zbuf.scatter_reduce_(0, pix, depth, reduce="amin")
        pairs_per_chunk.append((pix, face, depth))
        start = end
    for pix, face, depth in pairs_per_chunk:
        win = depth <= zbuf[pix]
        best_face[pix[win]] = face[win]
    face_id = best_face.view(H, W)
    # barycentrics for the winning face at every covered pixel (perspective-correct)
    bary = torch.zeros(H * W, 3, device=dev)
    cov = torch.nonzero(best_face >= 0).squeeze(1)
    if len(cov):
        f = best_face[cov]
        t = tri[f]
        p = torch.stack([(cov % W).float() + 0.5, torch.div(cov, W, rounding_mode="floor").float() + 0.5], 1)
        a, b, cc = t[:, 0], t[:, 1], t[:, 2]
        v0, v1, v2 = b - a, cc - a, p - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        den = torch.where(den.abs() > 1e-12, den, torch.ones_like(den))
        w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        w = torch.stack([1 - w1 - w2, w1, w2], 1) / z[f]
        bary[cov] = w / w.sum(1, keepdim=True)
    return Raster(face_id, bary.view(H, W, 3), zbuf.view(H, W))


def interpolate(raster: Raster, attr: torch.Tensor, faces: torch.Tensor, background: float = 0.0) -> torch.Tensor:
    """Per-vertex attribute (N, C) -> per-pixel (H, W, C) through the raster's barycentrics."""
    faces = faces.to(attr.device).long()
    fid = raster.face_id.clamp_min(0)
    corners = attr[faces[fid]]  # (H, W, 3, C)
    out = (corners * raster.bary[..., None]).sum(-2)
    return torch.where(raster.mask[..., None], out, torch.full_like(out, background))


def visible_vertices(raster: Raster, verts_cam: torch.Tensor, K: torch.Tensor, tol: float = 1e-2) -> torch.Tensor:
    """(N,) bool: vertex projects inside the image and is not behind the z-buffer.

    tol is relative depth slack so vertices on the visible surface count as visible.
    """
    H, W = raster.depth.shape
    uv = project_points(verts_cam.float(), K.to(verts_cam.device, torch.float32))
    x, y = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H) & (verts_cam[:, 2] > 1e-4)
    zb = torch.full_like(verts_cam[:, 2], float("inf"))
    # use the minimum depth in a 3x3 neighbourhood so silhouette vertices are not lost
    dmin = -torch.nn.functional.max_pool2d(-raster.depth[None, None], 3, 1, 1)[0, 0]
    zb[inside] = dmin[y[inside], x[inside]]
    return inside & (verts_cam[:, 2] <= zb * (1 + tol) + 1e-6)

"""An automatic skeleton (afv.rig.Rig) from the mesh alone, for meshes that come without a rig.

Method (a Reeb graph of a geodesic function, then bones along its branches):
1. Weld the mesh and split it into islands (afv.deform.surface); coarse meshes are subdivided
   (midpoints only: the shape is unchanged) so level sets are resolved; fine meshes are used as is.
2. Islands large enough get a skeleton of their own; they are joined into one tree by their
   proximity (minimum spanning tree over the closest-point distances, root = the largest island).
   Small islands (eyes, buttons) follow the nearest skinned vertex of a larger one.
3. On each skeleton island a scalar f: on the main island the mean geodesic distance to a set of
   farthest-point sources (low in the middle of the body, rising along every limb, so its level
   sets are rings around limbs and torso alike); on attached islands the geodesic distance from
   the point where they touch their parent island.
4. Level sets of f, cut into bands, split into connected rings: the Reeb graph. Its maximum
   spanning tree (by shared edges) is rooted at the lowest ring. Chains of rings between branch
   points are the skeleton's branches; short stubby leaf branches (bumps, ears, noise at saddle
   points) are folded into their parent.
5. Each branch becomes one or more bones of about equal length (L0: from the branches themselves,
   or chosen so the bone count is near `n_parts`). A branch's first joint is where it leaves its
   parent: the centroid of the boundary ring, moved back along the branch's axis to the parent's
   axis (a hip sits inside the body, not on its surface). The root bone's head is its part's centroid.
6. Skin weights: each vertex belongs to its bone's part; within a width proportional to the ring
   radius of each joint, weight is shared with the bone across the joint by a smoothstep of the
   geodesic distance to the joint's boundary ring (K <= 4 influences), so LBS bends smoothly.
Distances are shortest paths along mesh edges (scipy's Dijkstra; ~10 % above true geodesics,
consistently, which is all the Reeb function and the blend widths need).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra, minimum_spanning_tree
from scipy.spatial import cKDTree

from ..errors import InputError
from ..mesh import Mesh
from ..rig import Rig, validate_rig
from .surface import Surface, build_surface

ANALYSIS_VERTICES = 40_000  # coarse meshes are subdivided to about this many vertices for the analysis
N_SOURCES = 16  # farthest-point sources of the mean geodesic distance
MAX_SKELETON_ISLANDS = 64
ISLAND_AREA_FRAC = 0.01  # islands below this fraction of the total area, and
ISLAND_EXTENT_FRAC = 0.1  # shorter than this fraction of the mesh's diagonal, follow their nearest neighbour
MAX_INFLUENCES = 4
MAX_PARTS = 40  # at most about this many bones when n_parts is not given (a humanoid rig has 20-60)
BACK_RADII = 4.0  # a branch joint moves back along its axis by at most this many ring radii
CLAIM_RADII = 1.3  # parent-part vertices this close to a branch's first bone (past its joint) join it
SMOOTH_STEPS = 12  # neighbour-averaging steps over the blended weights
BLEND_RADII = 1.0  # weights are shared across a joint within this many ring radii of its boundary


@dataclass
class _Chain:
    nodes: list[int]  # Reeb nodes along the branch, from its start
    parent: int  # parent chain (-1 for the island's root chain)
    children: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)  # folded sub-branches (nodes) that follow this chain
    start: np.ndarray | None = None  # (3,) joint where the chain leaves its parent
    radius: float = 0.0  # ring radius at the start
    length: float = 0.0


@dataclass
class _Island:
    verts: np.ndarray  # analysis vertex ids (global)
    comp: np.ndarray  # (m,) Reeb node of each island vertex (local)
    centroid: np.ndarray  # (C, 3)
    area: np.ndarray  # (C,)
    tree_parent: np.ndarray  # (C,) Reeb tree parent, -1 at the root
    ring: np.ndarray  # (C, 3) centroid of the boundary ring with the tree parent
    ring_r: np.ndarray  # (C,) its radius
    chains: list[_Chain]
    attach: tuple[int, np.ndarray] | None  # (parent island's contact vertex, contact point), None for the main island


def _report(progress: Callable[[float], None] | None, frac: float) -> None:
    if progress is not None:
        progress(float(min(max(frac, 0.0), 1.0)))


def _vertex_areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    a = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    return np.bincount(f.ravel(), weights=np.repeat(a / 3.0, 3), minlength=len(v))


def _analysis_surface(surf: Surface) -> tuple[Surface, np.ndarray]:
    """The welded surface, subdivided where coarse. Returns it and, per welded vertex, its analysis vertex."""
    import trimesh.remesh

    v, f = surf.welded.vertices, surf.faces
    if len(f) == 0:
        return surf, np.arange(surf.n_welded)
    edges = np.linalg.norm(v[f[:, [1, 2, 0]]] - v[f], axis=-1)
    # a face whose longest edge is L ends up as ~(L / e)^2 faces, ~half as many vertices: pick e
    # for about ANALYSIS_VERTICES (long slivers count by their long side, unlike an area estimate)
    e = float(np.sqrt((edges.max(1) ** 2).sum() / (2.0 * ANALYSIS_VERTICES)))
    if len(v) >= ANALYSIS_VERTICES or edges.max() <= e:
        return surf, np.arange(surf.n_welded)
    halvings = int(np.ceil(np.log2(edges.max() / e))) + 1
    vs, fs = trimesh.remesh.subdivide_to_size(v, f, max_edge=e, max_iter=halvings)
    if not np.array_equal(vs[: len(v)], v):  # originals first is what the mapping relies on
        raise RuntimeError("subdivision reordered the original vertices")
    sub = build_surface(Mesh(vs.astype(np.float64), fs.astype(np.int64)), tol_rel=1e-9)
    return sub, sub.welded.index[: len(v)]


def _edge_graph(pos: np.ndarray, faces: np.ndarray, M: int) -> tuple[np.ndarray, csr_matrix]:
    """Unique undirected edges (E, 2) and the symmetric (M, M) graph of their lengths.

    Plain mesh edges: shortest paths overestimate geodesics by ~10 % (a graph with shortcuts across
    faces does better, at ~3x the build time); the Reeb function and the blend widths only need
    distances that are consistent, so speed wins here."""
    if len(faces) == 0:
        return np.zeros((0, 2), np.int64), csr_matrix((M, M))
    a = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]]).astype(np.int64)
    b = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]]).astype(np.int64)
    key = np.unique(np.minimum(a, b) * M + np.maximum(a, b))
    e = np.stack([key // M, key % M], 1)
    w = np.maximum(np.linalg.norm(pos[e[:, 0]] - pos[e[:, 1]], axis=1), 1e-12)
    g = coo_matrix((np.concatenate([w, w]), (np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]]))), shape=(M, M)).tocsr()
    return e, g


def _farthest_sources(g: csr_matrix, k: int, start: int, tick: Callable[[float], None] = lambda f: None) -> np.ndarray:
    """Geodesic farthest-point sampling: (k, m) distances from k well-spread sources."""
    d0 = dijkstra(g, indices=start)
    src = [int(np.argmax(np.where(np.isfinite(d0), d0, -1)))]
    rows = []
    dmin = np.full(g.shape[0], np.inf)
    for it in range(k):
        d = dijkstra(g, indices=src[-1])
        tick((it + 1) / k)
        rows.append(d)
        dmin = np.minimum(dmin, d)
        src.append(int(np.argmax(np.where(np.isfinite(dmin), dmin, -1))))
    return np.stack(rows)


def _reeb(pos: np.ndarray, area: np.ndarray, edges: np.ndarray, fval: np.ndarray, root_vertex: int | None,
          edge_len: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reeb tree of f on one island (local indices).

    Returns comp (m,), centroid (C,3), node area (C,), tree parent (C,), boundary ring centroid (C,3)
    and radius (C,) between each node and its tree parent.
    """
    m = len(pos)
    lo, hi = float(fval.min()), float(fval.max())
    span = max(hi - lo, 1e-12)
    # bands ~3 edges wide keep each ring connected; 12..64 bands over the range
    n_levels = int(np.clip(span / (3.0 * edge_len), 12, 64))
    band = np.minimum(((fval - lo) / span * n_levels).astype(np.int64), n_levels - 1)
    e0, e1 = edges[:, 0], edges[:, 1]
    same = band[e0] == band[e1]
    g = coo_matrix((np.ones(int(same.sum())), (e0[same], e1[same])), shape=(m, m))
    _, comp = connected_components(g, directed=False)
    total = float(area.sum())
    # fold tiny rings (single vertices at saddles, slivers) into the neighbour they share most edges with
    for _ in range(8):
        C = int(comp.max()) + 1
        carea = np.bincount(comp, weights=area, minlength=C)
        tiny = carea < 2e-3 * total
        if not tiny.any():
            break
        ca, cb = comp[e0], comp[e1]
        cross = ca != cb
        adj = coo_matrix((np.ones(int(cross.sum())), (ca[cross], cb[cross])), shape=(C, C)).tocsr()
        adj = adj + adj.T
        target = np.arange(C)
        changed = False
        for c in np.flatnonzero(tiny):
            row = adj.getrow(c)
            if row.nnz == 0:
                continue
            nb = row.indices
            # the biggest-contact neighbour that is not itself tiny, else the biggest-contact one
            score = row.data + 1e9 * (~tiny[nb])
            target[c] = nb[np.argmax(score)]
            changed = True
        if not changed:
            break
        # resolve chains of reassignments (a -> b -> c) without cycles
        for _ in range(C):
            nxt = target[target]
            if np.array_equal(nxt, target):
                break
            target = nxt
        comp = np.unique(target[comp], return_inverse=True)[1]
    C = int(comp.max()) + 1
    carea = np.bincount(comp, weights=area, minlength=C)
    wsum = np.maximum(carea, 1e-30)
    centroid = np.stack([np.bincount(comp, weights=area * pos[:, i], minlength=C) for i in range(3)], 1) / wsum[:, None]
    cf = np.bincount(comp, weights=area * fval, minlength=C) / wsum
    ca, cb = comp[e0], comp[e1]
    cross = ca != cb
    a, b = np.minimum(ca[cross], cb[cross]), np.maximum(ca[cross], cb[cross])
    if C == 1:
        return comp, centroid, carea, np.array([-1]), centroid.copy(), np.zeros(1)
    w = coo_matrix((np.ones(len(a)), (a, b)), shape=(C, C)).tocsr()
    w.sum_duplicates()
    # maximum spanning tree by shared edge count (weights must stay positive)
    mst = minimum_spanning_tree(_invert_weights(w))
    mst = mst + mst.T
    root = int(comp[root_vertex]) if root_vertex is not None else int(np.argmin(cf))
    order, pred = _bfs(mst, root)
    parent = np.where(pred < 0, -1, pred).astype(np.int64)
    parent[root] = -1
    # nodes the tree does not reach (the Reeb graph is always connected on a connected island,
    # but stay safe) hang from the root
    unreached = np.setdiff1d(np.arange(C), order)
    parent[unreached] = root
    # boundary rings: crossing edges' midpoints grouped by (child, parent) tree edge
    mid = 0.5 * (pos[e0[cross]] + pos[e1[cross]])
    ca_x, cb_x = ca[cross], cb[cross]
    child = np.where(parent[ca_x] == cb_x, ca_x, np.where(parent[cb_x] == ca_x, cb_x, -1))
    ok = child >= 0
    cnt = np.bincount(child[ok], minlength=C).astype(np.float64)
    ring = np.stack([np.bincount(child[ok], weights=mid[ok, i], minlength=C) for i in range(3)], 1)
    has = cnt > 0
    ring[has] /= cnt[has, None]
    ring[~has] = centroid[~has]
    rdist = np.linalg.norm(mid[ok] - ring[child[ok]], axis=1)
    ring_r = np.bincount(child[ok], weights=rdist, minlength=C) / np.maximum(cnt, 1)
    return comp, centroid, carea, parent, ring, ring_r


def _invert_weights(w: csr_matrix) -> csr_matrix:
    """Positive weights that are smaller where w is larger (for a maximum spanning tree)."""
    out = w.copy().astype(np.float64)
    out.data = (w.data.max() + 1.0) - w.data
    return out


def _bfs(tree: csr_matrix, root: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse.csgraph import breadth_first_order

    order, pred = breadth_first_order(tree, root, directed=False, return_predecessors=True)
    return order, pred


def _chains(parent: np.ndarray, root: int) -> list[_Chain]:
    """Split the Reeb tree into branches: maximal single-child paths; the root chain first."""
    C = len(parent)
    kids: list[list[int]] = [[] for _ in range(C)]
    for c in range(C):
        if parent[c] >= 0:
            kids[parent[c]].append(c)
    chains: list[_Chain] = []
    stack = [(root, -1)]
    while stack:
        start, pc = stack.pop()
        nodes = [start]
        while len(kids[nodes[-1]]) == 1:
            nodes.append(kids[nodes[-1]][0])
        ci = len(chains)
        chains.append(_Chain(nodes, pc))
        if pc >= 0:
            chains[pc].children.append(ci)
        for k in kids[nodes[-1]]:
            stack.append((k, ci))
    return chains


def _polyline(ch: _Chain, centroid: np.ndarray) -> np.ndarray:
    pts = centroid[ch.nodes]
    return pts if ch.start is None else np.concatenate([ch.start[None], pts])


def _prune(chains: list[_Chain], centroid: np.ndarray, area: np.ndarray, ring: np.ndarray, ring_r: np.ndarray,
           island_area: float) -> list[_Chain]:
    """Fold stubby leaf branches into their parent; merge pass-through junctions. Returns live chains."""
    alive = [True] * len(chains)

    def length(ci: int) -> float:
        p = _polyline(chains[ci], centroid)
        return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) if len(p) > 1 else 0.0

    def subtree_area(ci: int) -> float:
        ch = chains[ci]
        return float(area[ch.nodes].sum() + area[ch.extra].sum() + sum(subtree_area(k) for k in ch.children))

    for ci, ch in enumerate(chains):
        if ch.parent >= 0:
            ch.start = ring[ch.nodes[0]]
            ch.radius = float(ring_r[ch.nodes[0]])
    changed = True
    while changed:
        changed = False
        for ci, ch in enumerate(chains):
            if not alive[ci] or ch.parent < 0 or ch.children:
                continue
            # a limb is longer than it is thick; tiny-area branches are noise
            if length(ci) < 1.5 * max(ch.radius, 1e-12) or subtree_area(ci) < 0.01 * island_area:
                par = chains[ch.parent]
                par.extra.extend(ch.nodes + ch.extra)
                par.children.remove(ci)
                alive[ci] = False
                changed = True
        for ci, ch in enumerate(chains):
            # a short link between two branch points (e.g. where legs and neck leave one ring
            # after another) is not a bone: its children hang from its parent
            if alive[ci] and ch.parent >= 0 and ch.children and length(ci) < 1.5 * max(ch.radius, 1e-12):
                par = chains[ch.parent]
                par.extra.extend(ch.nodes + ch.extra)
                par.children.remove(ci)
                for g in ch.children:
                    chains[g].parent = ch.parent
                    par.children.append(g)
                alive[ci] = False
                changed = True
        for ci, ch in enumerate(chains):
            if alive[ci] and len(ch.children) == 1:
                k = ch.children[0]
                kid = chains[k]
                ch.nodes += kid.nodes
                ch.extra += kid.extra
                ch.children = kid.children
                for g in kid.children:
                    chains[g].parent = ci
                alive[k] = False
                changed = True
    for ci, ch in enumerate(chains):
        ch.length = length(ci)
    return [ci for ci in range(len(chains)) if alive[ci]]


def _chain_cuts(ch: _Chain, isl: "_Island", L0: float) -> np.ndarray:
    """Arc-length positions where a branch is cut into bones: at its bends (Douglas-Peucker
    corners of the centroid polyline, tolerance ~half the ring radius), then each straight
    stretch into pieces of about L0."""
    poly = _polyline(ch, isl.centroid)
    if len(poly) < 2:
        return np.zeros(0)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(poly, axis=0), axis=1))])
    r = float(np.median(isl.ring_r[ch.nodes])) if len(ch.nodes) else 0.0
    corners = _douglas_peucker(poly, max(0.5 * r, 1e-12))
    knots = list(s[corners])
    # no bone much shorter than L0: drop the corner next to the shortest stretch until none is
    while len(knots) > 2:
        seg = np.diff(knots)
        k = int(np.argmin(seg))
        if seg[k] >= 0.5 * L0:
            break
        del knots[k + 1 if k + 1 < len(knots) - 1 else k]
    knots = np.asarray(knots)
    cuts = []
    for a, b in zip(knots[:-1], knots[1:]):
        n = max(1, int(round((b - a) / L0)))
        cuts.extend(a + (b - a) * np.arange(1, n) / n)
        cuts.append(b)
    return np.asarray(cuts[:-1])  # the last knot is the branch's end, not a cut


def _douglas_peucker(poly: np.ndarray, tol: float) -> list[int]:
    """Indices of the corners kept by Douglas-Peucker simplification (first and last included)."""
    keep = {0, len(poly) - 1}
    stack = [(0, len(poly) - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        d = poly[b] - poly[a]
        nd = np.linalg.norm(d)
        rel = poly[a + 1:b] - poly[a]
        if nd < 1e-12:
            dist = np.linalg.norm(rel, axis=1)
        else:
            dist = np.linalg.norm(rel - np.outer(rel @ d / nd ** 2, d), axis=1)
        k = int(np.argmax(dist))
        if dist[k] > tol:
            keep.add(a + 1 + k)
            stack += [(a, a + 1 + k), (a + 1 + k, b)]
    return sorted(keep)


def _closest_on_line(point: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> float:
    return float((point - origin) @ direction)


def auto_rig(mesh: Mesh, n_parts: int | None = None, progress: Callable[[float], None] | None = None) -> Rig:
    """An automatic skeleton and skin weights for `mesh` (see the module docstring).

    n_parts: about how many bones (None: from the shape, about two per limb, at most about
    MAX_PARTS); progress: called
    with the fraction done in [0, 1] (it may raise to cancel). Bones are parent-first, named
    "bone_000"...; heads/tails are in mesh coordinates; every vertex has up to 4 influences.
    """
    if n_parts is not None and n_parts < 1:
        raise InputError(f"n_parts must be at least 1, got {n_parts}")
    _report(progress, 0.0)
    surf = build_surface(mesh)
    _report(progress, 0.05)
    asurf, welded_to_a = _analysis_surface(surf)
    _report(progress, 0.12)
    pos = asurf.welded.vertices
    faces = asurf.faces
    M = len(pos)
    varea = _vertex_areas(pos, faces) if len(faces) else np.zeros(M)
    e, g = _edge_graph(pos, faces, M)
    edge_len = float(np.median(np.linalg.norm(pos[e[:, 0]] - pos[e[:, 1]], axis=1))) if len(e) else 1.0
    island = asurf.island
    n_isl = asurf.n_islands
    isl_area = np.bincount(island, weights=varea, minlength=n_isl)
    total_area = float(isl_area.sum())
    order = np.argsort(-isl_area, kind="stable")
    # own bones: islands with some area, or long ones (a robot's thin arm segments); small compact
    # ones (eyes, rivets) follow their neighbour
    diag = float(np.linalg.norm(np.ptp(pos, 0))) if M else 0.0
    lo = np.full((n_isl, 3), np.inf)
    hi = np.full((n_isl, 3), -np.inf)
    np.minimum.at(lo, island, pos)
    np.maximum.at(hi, island, pos)
    ext = np.linalg.norm(hi - lo, axis=1)
    own = (isl_area >= ISLAND_AREA_FRAC * total_area) | (ext >= ISLAND_EXTENT_FRAC * diag)
    big = [int(i) for i in order if own[i] and (island == i).sum() >= 4][:MAX_SKELETON_ISLANDS]
    if not big:
        big = [int(order[0])]

    # --- islands into one tree: MST over closest-point distances, rooted at the largest
    attach: dict[int, tuple[int, int, np.ndarray]] = {}  # island -> (parent island, parent contact vertex, contact point)
    if len(big) > 1:
        members = {i: np.flatnonzero(island == i) for i in big}
        trees = {i: cKDTree(pos[members[i]]) for i in big}
        nb = len(big)
        dist = np.zeros((nb, nb))
        pair = {}
        for a in range(nb):
            _report(progress, 0.12 + 0.08 * a / nb)
            for b in range(a + 1, nb):
                ia, ib = big[a], big[b]
                d, j = trees[ia].query(pos[members[ib]])
                k = int(np.argmin(d))
                dist[a, b] = dist[b, a] = max(float(d[k]), 1e-12)
                pair[(a, b)] = (int(members[ia][j[k]]), int(members[ib][k]))
        mst = minimum_spanning_tree(csr_matrix(np.triu(dist)))
        # root: of the islands with at least a quarter of the largest's area, the one whose centre
        # is nearest the whole mesh's (a robot's torso rather than its big head)
        cen = np.stack([(pos[members[i]] * varea[members[i], None]).sum(0) / max(varea[members[i]].sum(), 1e-30) for i in big])
        allc = (pos * varea[:, None]).sum(0) / max(varea.sum(), 1e-30)
        cand = [k for k in range(nb) if isl_area[big[k]] >= 0.25 * isl_area[big[0]]]
        root_k = min(cand, key=lambda k: float(np.linalg.norm(cen[k] - allc)))
        border, pred = _bfs(mst + mst.T, root_k)
        for b in border[1:]:
            a = int(pred[b])
            va, vb = pair[(min(a, b), max(a, b))]
            if a > b:
                va, vb = vb, va
            attach[big[b]] = (big[a], va, vb)
        big = [big[i] for i in border]
    _report(progress, 0.2)

    # --- Reeb tree of each skeleton island
    islands: list[_Island] = []
    for n_done, i in enumerate(big):
        verts = np.flatnonzero(island == i)
        loc = np.full(M, -1, np.int64)
        loc[verts] = np.arange(len(verts))
        gi = g[verts][:, verts]
        sel = (loc[e[:, 0]] >= 0)
        ei = loc[e[sel]]
        if i in attach:
            _, pv, cv = attach[i]
            root_v = int(loc[cv])
            fval = dijkstra(gi, indices=root_v)
            contact = (int(pv), 0.5 * (pos[pv] + pos[cv]))
        else:
            root_v = None
            lo_f, hi_f = 0.2 + 0.5 * n_done / len(big), 0.2 + 0.5 * (n_done + 0.9) / len(big)
            D = _farthest_sources(gi, min(N_SOURCES, len(verts)), 0, lambda f: _report(progress, lo_f + (hi_f - lo_f) * f))
            D[~np.isfinite(D)] = 0.0
            fval = D.mean(0)
            contact = None
        fval = np.where(np.isfinite(fval), fval, np.nanmax(np.where(np.isfinite(fval), fval, np.nan)))
        comp, centroid, carea, parent, ring, ring_r = _reeb(pos[verts], varea[verts], ei, fval, root_v, edge_len)
        root = int(np.flatnonzero(parent < 0)[0])
        chains = _chains(parent, root)
        live = _prune(chains, centroid, carea, ring, ring_r, float(isl_area[i]))
        chains = _reindex_chains(chains, live)
        isl = _Island(verts, comp, centroid, carea, parent, ring, ring_r, chains, contact)
        for ch in chains:
            if ch.parent >= 0:  # branches start at their joint (inside the parent), and are that long
                ch.start = _joint(ch, isl, _polyline(ch, centroid))
                ch.length = float(np.linalg.norm(np.diff(_polyline(ch, centroid), axis=0), axis=1).sum())
        islands.append(isl)
        _report(progress, 0.2 + 0.5 * (n_done + 1) / len(big))

    # --- bone length L0: about two bones per typical limb, or n_parts bones in all
    leaf_len = [ch.length for isl in islands for ch in isl.chains if not ch.children and ch.parent >= 0]
    all_len = [ch.length for isl in islands for ch in isl.chains]
    scale = max(max(all_len, default=0.0), edge_len)
    L0 = 0.55 * float(np.median(leaf_len)) if leaf_len else scale
    L0 = max(L0, 1e-9)
    if n_parts is not None:
        L0 = _fit_L0(islands, n_parts, scale)
    elif sum(sum(_chain_bone_counts(isl, L0)) for isl in islands) > MAX_PARTS:
        # many short leaf branches (a robot's plates, fingers, noise) make L0 tiny and the bones
        # hundreds: every bone is three unknowns per frame the video cannot pin down
        L0 = _fit_L0(islands, MAX_PARTS, scale)

    # --- bones
    names: list[str] = []
    parents: list[int] = []
    heads: list[np.ndarray] = []
    tails: list[np.ndarray] = []
    label = np.full(M, -1, np.int64)  # analysis vertex -> bone
    widths: dict[int, float] = {}  # bone -> blend width at its joint(s), for skinning
    for isl in islands:
        _island_bones(isl, pos, varea, L0, label, names, parents, heads, tails, widths, edge_len)
    _report(progress, 0.75)

    # --- skin weights on the analysis surface, then back to input vertices
    rows, cols, vals = _skin(label, widths, g, e)
    _report(progress, 0.82)
    rows, cols, vals = _smooth_weights(rows, cols, vals, e, M, len(names), tick=lambda f: _report(progress, 0.82 + 0.1 * f))
    _report(progress, 0.92)
    joints, weights = _top_k(rows, cols, vals, M)
    skinned = label >= 0
    if not skinned.all():  # small islands follow their nearest skinned vertex
        src = np.flatnonzero(skinned)
        _, j = cKDTree(pos[src]).query(pos[~skinned])
        joints[~skinned] = joints[src[j]]
        weights[~skinned] = weights[src[j]]
    vmap = welded_to_a[surf.welded.index]
    tails_arr = np.array(tails, np.float64)
    heads_arr = np.array(heads, np.float64)
    # a bone needs a direction: degenerate ones point up by a small fraction of the mesh size
    short = np.linalg.norm(tails_arr - heads_arr, axis=1) < 1e-6 * max(mesh.bbox_diagonal(), 1e-9)
    tails_arr[short] = heads_arr[short] + np.array([0.0, 0.0, 0.05 * max(mesh.bbox_diagonal(), 1e-6)])
    rig = validate_rig(names, np.array(parents, np.int32), heads_arr, tails_arr, joints[vmap], weights[vmap],
                       n_vertices=mesh.n_vertices)
    _report(progress, 1.0)
    return rig


def _reindex_chains(chains: list[_Chain], live: list[int]) -> list[_Chain]:
    new = {old: k for k, old in enumerate(live)}
    out = []
    for old in live:
        ch = chains[old]
        ch.parent = new.get(ch.parent, -1) if ch.parent >= 0 else -1
        ch.children = [new[c] for c in ch.children]
        out.append(ch)
    return out


def _chain_bone_counts(isl: _Island, L0: float) -> list[int]:
    return [len(_chain_cuts(ch, isl, L0)) + 1 for ch in isl.chains]


def _fit_L0(islands: list[_Island], n_parts: int, scale: float) -> float:
    """Bone length whose bone count is closest to n_parts (bisection in log space)."""
    lo, hi = np.log(scale * 1e-4), np.log(scale * 10.0)
    best, best_err = np.exp(hi), None
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        n = sum(sum(_chain_bone_counts(isl, float(np.exp(mid)))) for isl in islands)
        err = abs(n - n_parts)
        if best_err is None or err < best_err or (err == best_err and mid > np.log(best)):
            best, best_err = float(np.exp(mid)), err
        if n > n_parts:
            lo = mid
        elif n < n_parts:
            hi = mid
        else:
            break
    return best


def _island_bones(isl: _Island, pos, varea, L0, label, names, parents, heads, tails, widths, edge_len) -> None:
    """Bones of one island's chains (parent-first) and the part label of each of its vertices."""
    C = len(isl.centroid)
    node_bone = np.full(C, -1, np.int64)
    chain_last_bone: dict[int, int] = {}
    chain_bones: dict[int, list[int]] = {}
    first_bones: list[tuple[list[int], float]] = []  # (bones of a branch, its ring radius at the start)
    # chains are created root first and each child after its parent (depth-first), so parents come first
    for ci, ch in enumerate(isl.chains):
        cuts = _chain_cuts(ch, isl, L0)
        n = len(cuts) + 1
        poly = _polyline(ch, isl.centroid)
        seg = np.linalg.norm(np.diff(poly, axis=0), axis=1) if len(poly) > 1 else np.zeros(0)
        s_pts = np.concatenate([[0.0], np.cumsum(seg)])
        s_nodes = s_pts[1:] if ch.start is not None else s_pts  # arc length of each node's centroid
        if ch.parent < 0:
            if isl.attach is None:
                # the root's head: its part's centroid (area-weighted over the root chain's rings)
                w = isl.area[ch.nodes[: max(1, len(ch.nodes) // n)]]
                head0 = (isl.centroid[ch.nodes[: max(1, len(ch.nodes) // n)]] * w[:, None]).sum(0) / max(w.sum(), 1e-30)
            else:
                head0 = isl.attach[1]
            parent_bone = -1 if isl.attach is None else int(label[isl.attach[0]])
        else:
            head0 = ch.start
            parent_bone = chain_last_bone[ch.parent]
        starts = [head0] + [_along(poly, s_pts, c) for c in cuts]
        ids = []
        for k in range(n):
            b = len(names)
            names.append(f"bone_{b:03d}")
            parents.append(parent_bone if k == 0 else ids[-1])
            heads.append(np.asarray(starts[k], np.float64))
            tails.append(np.asarray(starts[k + 1] if k + 1 < n else poly[-1], np.float64))
            ids.append(b)
            r = (ch.radius if k == 0 else _ring_radius_at(isl, ch, s_nodes, cuts[k - 1])) if ch.parent >= 0 or k > 0 else 0.0
            widths[b] = max(BLEND_RADII * r, 1.5 * edge_len)  # blend over about a limb radius
        which = np.searchsorted(cuts, s_nodes, side="right") if n > 1 else np.zeros(len(ch.nodes), np.int64)
        node_bone[ch.nodes] = np.asarray(ids)[which]
        chain_last_bone[ci] = ids[-1]
        chain_bones[ci] = ids
        if ch.parent >= 0:
            first_bones.append((ids, max(ch.radius, edge_len)))
    # folded sub-branches follow the bone of the node they hang from (walk up the Reeb tree)
    for c in _tree_order(isl.tree_parent):
        if node_bone[c] < 0:
            p = isl.tree_parent[c]
            node_bone[c] = node_bone[p] if p >= 0 else chain_bones[0][0]
    label[isl.verts] = node_bone[isl.comp]
    _claim_limb_roots(isl, pos, label, heads, tails, parents, first_bones)
    # a chain ending in a branch: its last bone points at the mean of its children's first joints
    for ci, ch in enumerate(isl.chains):
        if ch.children:
            kid_heads = [heads[chain_bones[k][0]] for k in ch.children]
            tip = np.mean(kid_heads, axis=0)
            b = chain_bones[ci][-1]
            if np.linalg.norm(tip - heads[b]) > 1e-9:
                tails[b] = tip
            else:  # e.g. a root between a front and a back branch: point at the biggest child
                tails[b] = kid_heads[0]


def _claim_limb_roots(isl: _Island, pos, label, heads, tails, parents, first_bones) -> None:
    """A limb's Reeb boundary lies where its level-set ring separates from the parent's, below
    the real joint (the top of a leg shares rings with the body). Vertices of the parent part
    within ~1.3 ring radii of one of a branch's bone segments, past its joint, join that bone."""
    if not first_bones:
        return
    v = isl.verts
    best = np.full(len(v), np.inf)
    new = label[v].copy()
    for bones, r in first_bones:
        p = parents[bones[0]]
        cand = np.flatnonzero(label[v] == p)
        for b in bones:
            h, t = heads[b], tails[b]
            d = t - h
            L2 = float(d @ d)
            if L2 < 1e-24:
                continue
            x = pos[v[cand]] - h
            tt = (x @ d) / L2
            dist = np.linalg.norm(x - np.outer(np.clip(tt, 0, 1), d), axis=1)
            ok = (tt >= 0) & (tt <= 1) & (dist < CLAIM_RADII * r) & (dist < best[cand])
            new[cand[ok]] = b
            best[cand[ok]] = dist[ok]
    label[v] = new


def _tree_order(parent: np.ndarray) -> list[int]:
    C = len(parent)
    kids: list[list[int]] = [[] for _ in range(C)]
    roots = []
    for c in range(C):
        (kids[parent[c]] if parent[c] >= 0 else roots).append(c)
    out, stack = [], list(roots)
    while stack:
        c = stack.pop()
        out.append(c)
        stack.extend(kids[c])
    return out


def _along(poly: np.ndarray, s_pts: np.ndarray, s: float) -> np.ndarray:
    return np.array([np.interp(s, s_pts, poly[:, i]) for i in range(3)])


def _ring_radius_at(isl: _Island, ch: _Chain, s_nodes: np.ndarray, s: float) -> float:
    k = int(np.clip(np.searchsorted(s_nodes, s), 0, len(ch.nodes) - 1))
    return float(isl.ring_r[ch.nodes[k]])


def _joint(ch: _Chain, isl: _Island, poly: np.ndarray) -> np.ndarray:
    """Where a branch leaves its parent: the boundary ring's centroid, moved back along the
    branch's axis until level with the parent's axis (by at most 2.5 ring radii)."""
    b = ch.start
    pnode = isl.tree_parent[ch.nodes[0]]
    if pnode < 0 or len(poly) < 2:
        return b
    # axis from the ring to a point ~2 radii down the branch
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    tip = _along(poly, s, min(float(s[-1]), max(2.0 * ch.radius, float(s[min(1, len(s) - 1)]))))
    d = tip - b
    nd = np.linalg.norm(d)
    if nd < 1e-12:
        return b
    d = d / nd
    back = _closest_on_line(isl.centroid[pnode], b, d)  # negative: the parent's axis lies behind the ring
    back = float(np.clip(back, -BACK_RADII * max(ch.radius, 1e-12), 0.0))
    return b + back * d


def _skin(label: np.ndarray, widths: dict[int, float], g: csr_matrix, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triplets (vertex, bone, weight): own bone 1, minus what is shared across each boundary
    between two parts (a joint, or any other place two parts touch, so there is no hard seam)."""
    M = len(label)
    skinned = np.flatnonzero(label >= 0)
    rows = [skinned]
    cols = [label[skinned]]
    vals = [np.ones(len(skinned))]
    give = np.zeros(M)
    la, lb = label[e[:, 0]], label[e[:, 1]]
    cross = (la != lb) & (la >= 0) & (lb >= 0)
    pairs = np.unique(np.sort(np.stack([la[cross], lb[cross]], 1), axis=1), axis=0)
    ec = e[cross]
    key = np.sort(np.stack([la[cross], lb[cross]], 1), axis=1)
    for a, b in pairs:
        on = (key[:, 0] == a) & (key[:, 1] == b)
        src = np.unique(ec[on].ravel())
        width = max(widths.get(int(a), 0.0), widths.get(int(b), 0.0))
        d = dijkstra(g, indices=src, min_only=True, limit=width)
        near = np.flatnonzero(np.isfinite(d) & ((label == a) | (label == b)))
        x = np.clip(d[near] / width, 0.0, 1.0)
        share = 0.5 * (1.0 - (3 * x * x - 2 * x ** 3))  # 1/2 at the boundary, 0 at `width`
        other = np.where(label[near] == a, b, a)
        rows.append(near)
        cols.append(other)
        vals.append(share)
        give[near] += share
    rows_a = np.concatenate(rows)
    cols_a = np.concatenate(cols)
    vals_a = np.concatenate(vals)
    own = np.arange(len(skinned))
    # own weight: what was not shared (a vertex near several boundaries keeps at least a little)
    vals_a[own] = np.maximum(1.0 - give[skinned], 0.05)
    return rows_a, cols_a, vals_a


def _smooth_weights(rows, cols, vals, e: np.ndarray, M: int, B: int, steps: int = SMOOTH_STEPS,
                    tick: Callable[[float], None] = lambda f: None):
    """A few steps of neighbour averaging (W <- (W + mean of the neighbours' W) / 2), sparse: where
    three parts meet in a sliver the pairwise blends can still step; this spreads any step over a
    few edges. Weights never cross islands (no edges between them)."""
    if steps <= 0 or len(e) == 0:
        return rows, cols, vals
    W = coo_matrix((vals, (rows, cols)), shape=(M, B)).tocsr()
    A = coo_matrix((np.ones(2 * len(e)), (np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]]))), shape=(M, M)).tocsr()
    deg = np.asarray(A.sum(1)).ravel()
    has = deg > 0
    A = csr_matrix(A.multiply(1.0 / np.where(has, deg, 1.0)[:, None]))
    for it in range(steps):
        tick(it / steps)
        W2 = A @ W
        # vertices without neighbours keep their own weights
        W = (0.5 * W + 0.5 * W2.multiply(has[:, None].astype(np.float64)) + 0.5 * W.multiply((~has)[:, None].astype(np.float64))).tocsr()
        W.data[W.data < 1e-4] = 0.0
        W.eliminate_zeros()
    W = W.tocoo()
    return W.row, W.col, W.data


def _top_k(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, M: int, k: int = MAX_INFLUENCES) -> tuple[np.ndarray, np.ndarray]:
    """(M, k) joints and weights (rows normalised; unused slots weight 0 on the first bone)."""
    W = coo_matrix((vals, (rows, cols)), shape=(M, max(int(cols.max()) + 1 if len(cols) else 1, 1))).tocsr()
    W.sum_duplicates()
    joints = np.zeros((M, k), np.int64)
    weights = np.zeros((M, k), np.float64)
    indptr, idx, dat = W.indptr, W.indices, W.data
    counts = np.diff(indptr)
    rowid = np.repeat(np.arange(M), counts)
    order = np.lexsort((-dat, rowid))
    rank = np.arange(len(order)) - indptr[rowid[order]]
    keep = rank < k
    sel = order[keep]
    joints[rowid[sel], rank[keep]] = idx[sel]
    weights[rowid[sel], rank[keep]] = dat[sel]
    # rows with only one influence repeat its bone with weight 0 (harmless for LBS)
    joints[:, 1:] = np.where(weights[:, 1:] > 0, joints[:, 1:], joints[:, :1])
    s = weights.sum(1, keepdims=True)
    weights = np.where(s > 0, weights / np.where(s > 0, s, 1.0), np.eye(1, k)[0])
    return joints, weights

"""glTF 2.0 (.glb / .gltf) meshes with their skin: a Mesh carrying a Rig (afv.rig).

Parsing is pygltflib's; this module turns the document into our contract.

Vertex order (the one `afv.mesh.load_mesh` returns for every .glb/.gltf, skinned or not): the
default scene's nodes depth-first (scene roots, then each node's children, in file order); for
each node with a mesh, its triangle primitives in order (strips and fans are triangulated; points
and lines are skipped), each primitive's vertices in accessor order. Nothing is merged or dropped.

Coordinates: glTF's own (+Y up), the scene at rest (node transforms as stored, no animation):
a plain node's vertices go through its world matrix; a skinned primitive's through its joints,
sum_k w_k J_k IBM_k v (what a viewer shows at rest). In the usual case where the skin was bound
in this rest pose, J_k IBM_k is one matrix for every joint and this is the bind pose.

The rig: bones are the joints of every skin, plus nothing else; a bone's parent is its nearest
ancestor node that is a joint (bones sorted parent-first, by the depth-first order). Heads are
the joints' rest world positions; a tail is the mean of the child joints' heads, or, for a leaf,
the head plus half the parent bone's length along the joint's +Y axis (glTF/Blender bone axis).
Influences: JOINTS_0/WEIGHTS_0 (and _1); a mesh node that is not skinned but hangs below a joint
(a rigid part, as in RobotExpressive) follows that joint with weight 1; a mesh outside every
joint's subtree follows the first root bone. Morph targets are not part of the rig.

Animations: `list_animations` reads every clip's name, time span and own keyframe rate from the
document alone (nothing is posed); `GltfScene.clips` / `clip_duration` use the same reading.
`animation_pose` evaluates a clip at a time t (LINEAR, STEP, CUBICSPLINE samplers) and returns
the rest-to-pose motion in the contract's convention (docs/contracts.md, "Rig"): per-bone
rotations relative to the parent in mesh axes, and the root translation; `skinned_vertices`
gives the glTF skinning of the same pose, its ground truth.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .rig import Rig, validate_rig

# Blender's glTF importer turns glTF's +Y up into +Z up: blender = GLTF_TO_BLENDER @ gltf, i.e. (x, -z, y)
GLTF_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

_COMPONENT = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


# ---------------------------------------------------------------- document access


class _Doc:
    """A glTF document with its buffers loaded."""

    def __init__(self, path: Path) -> None:
        from pygltflib import GLTF2

        try:
            self.g = GLTF2().load(str(path))
        except Exception as exc:  # pygltflib raises many kinds for bad files
            raise InputError(f"could not read glTF {path.name}: {exc}") from None
        if self.g is None:
            raise InputError(f"could not read glTF {path.name}")
        self.path = path
        self._buffers: dict[int, bytes] = {}
        self.parent = {c: i for i, n in enumerate(self.g.nodes) for c in (n.children or [])}

    def buffer(self, i: int) -> bytes:
        if i not in self._buffers:
            b = self.g.buffers[i]
            if b.uri is None:
                data = self.g.binary_blob()
            elif b.uri.startswith("data:"):
                data = base64.b64decode(b.uri.split(",", 1)[1])
            else:
                from urllib.parse import unquote

                f = self.path.parent / unquote(b.uri)
                if not f.is_file():
                    raise InputError(f"glTF buffer file not found: {f.name}", "keep the .bin next to the .gltf")
                data = f.read_bytes()
            if data is None:
                raise InputError(f"glTF {self.path.name}: buffer {i} has no data")
            self._buffers[i] = data
        return self._buffers[i]

    def accessor(self, i: int) -> np.ndarray:
        """(count, ncomp) array of accessor i (float for normalized integers), sparse applied."""
        a = self.g.accessors[i]
        dt = np.dtype(_COMPONENT[a.componentType])
        nc = _NCOMP[a.type]
        out = np.zeros((a.count, nc), dt)
        if a.bufferView is not None:
            bv = self.g.bufferViews[a.bufferView]
            buf = self.buffer(bv.buffer)
            start = (bv.byteOffset or 0) + (a.byteOffset or 0)
            stride = bv.byteStride or dt.itemsize * nc
            if a.type in ("MAT2", "MAT3") and dt.itemsize < 4:
                raise InputError(f"glTF {self.path.name}: padded small-int matrices are not supported")
            if stride == dt.itemsize * nc:
                out = np.frombuffer(buf, dt, a.count * nc, start).reshape(a.count, nc).copy()
            else:
                rows = np.lib.stride_tricks.as_strided(
                    np.frombuffer(buf, np.uint8, len(buf) - start, start), (a.count, dt.itemsize * nc), (stride, 1))
                out = rows.copy().view(dt).reshape(a.count, nc)
        if a.sparse is not None:
            s = a.sparse
            ib = self.g.bufferViews[s.indices.bufferView]
            idt = np.dtype(_COMPONENT[s.indices.componentType])
            idx = np.frombuffer(self.buffer(ib.buffer), idt, s.count, (ib.byteOffset or 0) + (s.indices.byteOffset or 0))
            vb = self.g.bufferViews[s.values.bufferView]
            vals = np.frombuffer(self.buffer(vb.buffer), dt, s.count * nc, (vb.byteOffset or 0) + (s.values.byteOffset or 0))
            out[idx.astype(np.int64)] = vals.reshape(s.count, nc)
        if a.normalized and dt.kind in "iu":
            info = np.iinfo(dt)
            return np.maximum(out.astype(np.float64) / info.max, -1.0)
        return out

    # --- transforms

    def local(self, i: int, trs: dict[int, tuple] | None = None) -> np.ndarray:
        """(4, 4) local matrix of node i; trs overrides (t, r xyzw, s) from an animation."""
        n = self.g.nodes[i]
        if trs is None or i not in trs:
            if n.matrix is not None:
                return np.asarray(n.matrix, np.float64).reshape(4, 4).T  # column-major in the file
            t, r, s = n.translation, n.rotation, n.scale
        else:
            t, r, s = trs[i]
        M = np.eye(4)
        M[:3, :3] = _quat_xyzw_to_matrix(np.asarray(r if r is not None else (0, 0, 0, 1), np.float64)) * \
            np.asarray(s if s is not None else (1, 1, 1), np.float64)[None, :]
        if t is not None:
            M[:3, 3] = t
        return M

    def world(self, trs: dict[int, tuple] | None = None) -> np.ndarray:
        """(n_nodes, 4, 4) world matrices (nodes outside the scene graph: their own local)."""
        n = len(self.g.nodes)
        W = np.zeros((n, 4, 4))
        done = np.zeros(n, bool)

        def visit(i: int) -> np.ndarray:
            if not done[i]:
                p = self.parent.get(i)
                W[i] = (visit(p) @ self.local(i, trs)) if p is not None else self.local(i, trs)
                done[i] = True
            return W[i]

        for i in range(n):
            visit(i)
        return W

    def scene_order(self) -> list[int]:
        """Nodes of the default scene, depth-first, children in file order."""
        g = self.g
        if g.scenes:
            roots = list(g.scenes[g.scene if g.scene is not None else 0].nodes or [])
        else:
            roots = [i for i in range(len(g.nodes)) if i not in self.parent]
        out: list[int] = []
        stack = list(reversed(roots))
        seen = set()
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            out.append(i)
            stack.extend(reversed(self.g.nodes[i].children or []))
        return out


def _quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / max(np.linalg.norm(q), 1e-300)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _triangles(mode: int, idx: np.ndarray) -> np.ndarray | None:
    if mode == 4:
        return idx.reshape(-1, 3)
    if mode == 5:  # strip: alternate winding
        t = np.stack([idx[:-2], idx[1:-1], idx[2:]], 1)
        t[1::2] = t[1::2][:, [1, 0, 2]]
        return t
    if mode == 6:  # fan
        return np.stack([np.full(len(idx) - 2, idx[0]), idx[1:-1], idx[2:]], 1)
    return None  # points, lines


# ---------------------------------------------------------------- the skinned scene


@dataclass(frozen=True)
class Animation:
    """One animation's timing, read from the document (its samplers' input keyframe times)."""

    index: int  # position in the file's `animations` list
    name: str | None  # the file's name for it (None when unnamed)
    start_s: float  # first keyframe time over all its samplers, seconds
    end_s: float  # last keyframe time
    rate_fps: float  # its own keyframe rate: 1 / median keyframe interval, 3 decimals (24 with single keys)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _animation(doc: _Doc, i: int) -> Animation | None:
    """Animation i of the document; None when none of its samplers has a keyframe."""
    a = doc.g.animations[i]
    # float32 as stored: the rate feeds benchmark recipes, whose hashes must not move
    times = [doc.accessor(smp.input)[:, 0] for smp in a.samplers]
    times = [t for t in times if len(t)]
    if not times:
        return None
    lo = min(float(t.min()) for t in times)
    hi = max(float(t.max()) for t in times)
    steps = np.concatenate([np.diff(t) for t in times if len(t) > 1] or [np.array([1 / 24], np.float32)])
    steps = steps[steps > 1e-6]
    rate = 1.0 / float(np.median(steps)) if len(steps) else 24.0
    return Animation(i, a.name, lo, hi, round(rate, 3))


def list_animations(path: str | Path) -> list[Animation]:
    """Every animation of a .glb / .gltf file that has keyframes, in file order (no mesh is read)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"glTF file not found: {path}")
    doc = _Doc(path)
    return [a for a in (_animation(doc, i) for i in range(len(doc.g.animations))) if a is not None]


@dataclass
class GltfScene:
    """What the loader read, kept for posing: per vertex its source, per bone its node."""

    doc: _Doc
    vertices: np.ndarray  # (N, 3) float32 rest vertices (module docstring: order and coordinates)
    faces: np.ndarray  # (F, 3) int32
    rig: Rig | None  # None when the file has no skin
    bone_nodes: list[int]  # node index of each bone (rig order)
    # per primitive block: (first vertex, count, node, skin index or None, local positions (n, 3),
    # joints (n, K) as bone indices, weights (n, K))
    blocks: list[tuple[int, int, int, int | None, np.ndarray, np.ndarray, np.ndarray]]
    # skinned blocks, keyed by (first vertex, count): skin-local joint indices (n, K), normalised weights (n, K)
    skin_attrs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]

    def clips(self) -> list[str]:
        return [a.name or f"animation_{i}" for i, a in enumerate(self.doc.g.animations)]

    def clip_duration(self, clip: str | int) -> float:
        """The clip's last keyframe time (seconds; 0 without keyframes): it plays from t = 0."""
        a = _animation(self.doc, self._anim_index(clip))
        return a.end_s if a is not None else 0.0

    def _anim_index(self, clip: str | int) -> int:
        if isinstance(clip, int):
            return clip
        names = self.clips()
        if clip not in names:
            raise InputError(f"animation '{clip}' not found", f"available: {names}")
        return names.index(clip)

    def _anim(self, clip: str | int):
        return self.doc.g.animations[self._anim_index(clip)]

    def node_trs(self, clip: str | int, t: float) -> dict[int, tuple]:
        """Animated nodes' local (translation, rotation xyzw, scale) at time t (clamped to the clip)."""
        a = self._anim(clip)
        g = self.doc.g
        trs: dict[int, list] = {}
        for ch in a.channels:
            node = ch.target.node
            path = ch.target.path
            if node is None or path not in ("translation", "rotation", "scale"):
                continue  # morph weights are not part of a rig
            s = a.samplers[ch.sampler]
            val = _sample(self.doc.accessor(s.input)[:, 0].astype(np.float64), self.doc.accessor(s.output).astype(np.float64),
                          s.interpolation or "LINEAR", t, path == "rotation")
            n = g.nodes[node]
            cur = trs.setdefault(node, [n.translation, n.rotation, n.scale])
            cur[("translation", "rotation", "scale").index(path)] = val
        return {k: tuple(v) for k, v in trs.items()}

    def skinned_vertices(self, trs: dict[int, tuple] | None = None) -> np.ndarray:
        """(N, 3) the glTF's own skinning of the pose (rest when trs is None), in mesh order."""
        W = self.doc.world(trs)
        out = np.zeros((len(self.vertices), 3))
        for start, n, node, skin, v, _, _ in self.blocks:
            vh = np.concatenate([v, np.ones((len(v), 1))], 1)
            if skin is None:
                out[start:start + n] = (vh @ W[node].T)[:, :3]
                continue
            sk = self.doc.g.skins[skin]
            ibm = _ibms(self.doc, skin)
            jm = W[np.asarray(sk.joints)] @ ibm  # (J, 4, 4)
            jidx, w = self.skin_attrs[(start, n)]
            M = (jm[jidx] * w[..., None, None]).sum(1)  # (n, 4, 4)
            out[start:start + n] = np.einsum("nab,nb->na", M, vh)[:, :3]
        return out

    def animation_pose(self, clip: str | int, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The pose at time t in the contract's convention: bone rotations (B, 4) wxyz relative to
        the parent in mesh axes, and the root translation (3,). Exact for rigs whose joints only
        rotate (and the root translates); scale is dropped (nearest rotation)."""
        from scipy.spatial.transform import Rotation

        W0 = self.doc.world(None)
        W1 = self.doc.world(self.node_trs(clip, t))
        bn = np.asarray(self.bone_nodes)
        A = W1[bn] @ np.linalg.inv(W0[bn])  # rest -> pose, world (= mesh) coordinates
        U, _, Vt = np.linalg.svd(A[:, :3, :3])
        Q = U @ Vt
        Q[np.linalg.det(Q) < 0] *= -1  # reflections are not poses
        parents = self.rig.parents
        R = np.where((parents >= 0)[:, None, None], np.swapaxes(Q[np.maximum(parents, 0)], 1, 2) @ Q, Q)
        q = Rotation.from_matrix(R).as_quat()  # xyzw
        q = np.concatenate([q[:, 3:], q[:, :3]], 1)
        q *= np.where(q[:, :1] < 0, -1.0, 1.0)
        # roots share one translation (the contract): the one that skins the most carries it
        rig = self.rig
        load = np.bincount(rig.joints.ravel(), weights=rig.weights.ravel(), minlength=rig.n_bones)
        roots = np.flatnonzero(parents < 0)
        root = int(roots[np.argmax(load[roots])])
        u = W1[bn[root], :3, 3] - W0[bn[root], :3, 3]
        return q.astype(np.float32), u.astype(np.float32)


def _ibms(doc: _Doc, skin: int) -> np.ndarray:
    sk = doc.g.skins[skin]
    if sk.inverseBindMatrices is None:
        return np.tile(np.eye(4), (len(sk.joints), 1, 1))
    return doc.accessor(sk.inverseBindMatrices).astype(np.float64).reshape(-1, 4, 4).transpose(0, 2, 1)


def _slerp(a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    d = float(a @ b)
    if d < 0:
        b, d = -b, -d
    if d > 0.9995:
        r = a + u * (b - a)
        return r / np.linalg.norm(r)
    th = np.arccos(d)
    return (np.sin((1 - u) * th) * a + np.sin(u * th) * b) / np.sin(th)


def _sample(times: np.ndarray, out: np.ndarray, interp: str, t: float, is_rot: bool) -> np.ndarray:
    """Value of one channel at time t (glTF 2.0 sampler semantics; clamped outside the keys)."""
    n = len(times)
    cubic = interp == "CUBICSPLINE"
    vals = out.reshape(n, 3, -1)[:, 1] if cubic else out.reshape(n, -1)
    if t <= times[0] or n == 1:
        v = vals[0]
    elif t >= times[-1]:
        v = vals[-1]
    else:
        k = int(np.searchsorted(times, t, side="right") - 1)
        t0, t1 = times[k], times[k + 1]
        dt = t1 - t0
        u = (t - t0) / dt
        if interp == "STEP":
            v = vals[k]
        elif cubic:
            o = out.reshape(n, 3, -1)
            p0, m0 = o[k, 1], dt * o[k, 2]
            p1, m1 = o[k + 1, 1], dt * o[k + 1, 0]
            u2, u3 = u * u, u * u * u
            v = (2 * u3 - 3 * u2 + 1) * p0 + (u3 - 2 * u2 + u) * m0 + (-2 * u3 + 3 * u2) * p1 + (u3 - u2) * m1
        elif is_rot:
            v = _slerp(vals[k], vals[k + 1], u)
        else:
            v = (1 - u) * vals[k] + u * vals[k + 1]
    if is_rot:
        v = v / max(np.linalg.norm(v), 1e-300)
    return np.asarray(v, np.float64)


def read_gltf(path: str | Path) -> GltfScene:
    """Read a .glb/.gltf into a GltfScene (vertices, faces, and the Rig when the file has skins).
    `afv.mesh.load_mesh` validates it into a Mesh."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mesh file not found: {path}")
    doc = _Doc(path)
    g = doc.g
    order = doc.scene_order()
    W = doc.world(None)
    # bones: every skin's joints, parent-first by the depth-first order
    joint_set = {j for sk in g.skins for j in sk.joints}
    pos_in_order = {n: k for k, n in enumerate(order)}
    bone_nodes = sorted(joint_set, key=lambda n: (pos_in_order.get(n, len(order) + n)))
    bone_of = {n: b for b, n in enumerate(bone_nodes)}

    def joint_ancestor(i: int | None) -> int | None:
        while i is not None:
            if i in bone_of:
                return i
            i = doc.parent.get(i)
        return None

    verts, faces, blocks = [], [], []
    joints_all, weights_all = [], []
    start = 0
    skin_attrs = {}
    for node in order:
        n = g.nodes[node]
        if n.mesh is None:
            continue
        for prim in g.meshes[n.mesh].primitives:
            if prim.attributes.POSITION is None:
                continue
            v = doc.accessor(prim.attributes.POSITION).astype(np.float64)
            idx = doc.accessor(prim.indices).reshape(-1).astype(np.int64) if prim.indices is not None else np.arange(len(v))
            tri = _triangles(prim.mode if prim.mode is not None else 4, idx)
            if tri is None or len(v) == 0:
                continue
            cnt = len(v)
            skin = n.skin if (n.skin is not None and prim.attributes.JOINTS_0 is not None) else None
            if skin is not None:
                sk = g.skins[skin]
                js, ws = [], []
                for a_j, a_w in (("JOINTS_0", "WEIGHTS_0"), ("JOINTS_1", "WEIGHTS_1")):
                    aj, aw = getattr(prim.attributes, a_j, None), getattr(prim.attributes, a_w, None)
                    if aj is not None and aw is not None:
                        js.append(doc.accessor(aj).astype(np.int64))
                        ws.append(doc.accessor(aw).astype(np.float64))
                jloc = np.concatenate(js, 1)
                w = np.concatenate(ws, 1)
                if jloc.max() >= len(sk.joints) or jloc.min() < 0:
                    raise InputError(f"glTF {path.name}: JOINTS_0 refers to a joint the skin does not have")
                w = np.where(w > 0, w, 0.0)
                total = w.sum(1, keepdims=True)
                skin_attrs[(start, cnt)] = (jloc, w / np.where(total > 0, total, 1.0))
                ibm = _ibms(doc, skin)
                jm = W[np.asarray(sk.joints)] @ ibm
                M = (jm[jloc] * (w / np.where(total > 0, total, 1.0))[..., None, None]).sum(1)
                vw = np.einsum("nab,nb->na", M, np.concatenate([v, np.ones((cnt, 1))], 1))[:, :3]
                jb = np.asarray([bone_of[j] for j in sk.joints])[jloc]
                bad = total[:, 0] <= 0  # unweighted vertices follow the skin's first joint
                w[bad, 0] = 1.0
                if bad.any():
                    vw[bad] = (np.concatenate([v[bad], np.ones((int(bad.sum()), 1))], 1) @ W[node].T)[:, :3]
            else:
                vw = (np.concatenate([v, np.ones((cnt, 1))], 1) @ W[node].T)[:, :3]
                anc = joint_ancestor(node)
                jb = np.full((cnt, 1), bone_of[anc] if anc is not None else -1, np.int64)
                w = np.ones((cnt, 1))
            verts.append(vw)
            faces.append(tri + start)
            joints_all.append(jb)
            weights_all.append(w)
            blocks.append((start, cnt, node, skin, v, jb, w))
            start += cnt
    if not verts:
        raise InputError(f"{path.name} has no triangle meshes in its default scene")
    V = np.concatenate(verts).astype(np.float32)
    F = np.concatenate(faces).astype(np.int32)
    if not np.isfinite(V).all():
        raise InputError(f"{path.name}: vertex positions contain NaN or infinite values")
    rig = None
    if bone_nodes:
        bone_nodes, joints_all = _collapse_static_roots(doc, bone_nodes, joints_all, weights_all)
        bone_of = {n: b for b, n in enumerate(bone_nodes)}
        rig = _rig(doc, W, bone_nodes, bone_of, joints_all, weights_all, len(V))
        blocks = [(s0, c, nd, sk, v, j, w) for (s0, c, nd, sk, v, _, w), j in zip(blocks, joints_all)]
    return GltfScene(doc, V, F, rig, bone_nodes, blocks, skin_attrs)


def _collapse_static_roots(doc: _Doc, bone_nodes: list[int], joints_all, weights_all):
    """Drop a lone root joint that skins nothing, repeatedly (glTF exports often stack a scene
    root and an armature root above the hips). The hips, which animations translate, then become
    a root, whose translation the contract carries; its siblings (e.g. IK targets) become roots too."""
    used = set()
    for j, w in zip(joints_all, weights_all):
        used |= set(np.unique(j[w > 0]).tolist())
    nodes = list(bone_nodes)
    index = list(range(len(nodes)))  # current position of each original bone, -1 when dropped

    def parent_bone(k: int) -> int | None:
        p = doc.parent.get(nodes[k])
        while p is not None and p not in nodes:
            p = doc.parent.get(p)
        return nodes.index(p) if p is not None else None

    while True:
        roots = [k for k in range(len(nodes)) if parent_bone(k) is None]
        if len(roots) != 1:
            break
        r = roots[0]
        kids = [k for k in range(len(nodes)) if parent_bone(k) == r]
        orig = index.index(r)
        if not kids or orig in used:
            break
        del nodes[r]
        index = [(-1 if i == r else i - (i > r)) if i >= 0 else -1 for i in index]
    if len(nodes) == len(bone_nodes):
        return bone_nodes, joints_all
    remap = np.asarray(index)
    # dropped bones skinned nothing, so every used index maps to a kept bone
    return nodes, [np.where(j >= 0, remap[np.maximum(j, 0)], j) for j in joints_all]


def _rig(doc: _Doc, W: np.ndarray, bone_nodes: list[int], bone_of: dict[int, int], joints_all, weights_all, n_vertices: int):
    g = doc.g
    B = len(bone_nodes)
    parents = np.full(B, -1, np.int32)
    for b, node in enumerate(bone_nodes):
        p = doc.parent.get(node)
        while p is not None and p not in bone_of:
            p = doc.parent.get(p)
        if p is not None:
            parents[b] = bone_of[p]
    heads = W[np.asarray(bone_nodes), :3, 3]
    tails = heads.copy()
    for b in range(B):
        kids = np.flatnonzero(parents == b)
        tip = heads[kids].mean(0) if len(kids) else None
        if tip is None or np.linalg.norm(tip - heads[b]) < 1e-9:
            y = W[bone_nodes[b], :3, 1]
            y = y / max(np.linalg.norm(y), 1e-300)
            plen = np.linalg.norm(heads[b] - heads[parents[b]]) if parents[b] >= 0 else 0.0
            length = 0.5 * plen if plen > 0 else 0.05 * max(float(np.ptp(heads, 0).max()), 1e-3)
            tip = heads[b] + y * length
        tails[b] = tip
    K = max(j.shape[1] for j in joints_all)
    J = np.zeros((n_vertices, K), np.int64)
    Wt = np.zeros((n_vertices, K))
    s = 0
    for j, w in zip(joints_all, weights_all):
        n = len(j)
        j = np.where(j < 0, int(np.flatnonzero(parents < 0)[0]), j)  # outside every joint: the first root
        J[s:s + n, : j.shape[1]] = j
        J[s:s + n, j.shape[1]:] = j[:, :1]
        Wt[s:s + n, : w.shape[1]] = w
        s += n
    names = []
    for b, node in enumerate(bone_nodes):
        nm = g.nodes[node].name or f"joint_{node}"
        names.append(nm if nm not in names else f"{nm}.{node}")
    return validate_rig(names, parents, heads, tails, J, Wt, n_vertices=n_vertices)

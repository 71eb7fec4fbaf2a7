"""Hostile input against a real `afv serve` process on loopback (issue #10).

A matrix of malformed meshes, videos, masks, params, paths, multipart framing and job ids:
every one must get its documented 4xx with a JSON body naming the problem, on a connection
that stays usable, within a bounded time; no 5xx, no hang, no job folder left behind, and the
server's peak memory stays under 500 MB with decompression bombs among the inputs.
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from afv_dev import synthetic

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "blender_addon"))
import backend_client as bc  # noqa: E402

ENV = {"PYTHONPATH": os.pathsep.join([str(REPO / "backend"), os.environ.get("PYTHONPATH", "")])}
ARGS = ["--max-vertices", "5000", "--max-faces", "10000", "--max-frames", "200", "--max-upload-mb", "16",
        "--max-mesh-mb", "2", "--max-frame-pixels", "4000000", "--max-unzipped-mb", "64", "--header-timeout", "2",
        "--body-timeout", "2"]


# ----------------------------------------------------------------------------- crafted files

def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def zip_of(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def set_flag(data: bytes, bit: int) -> bytes:
    """Set a general-purpose flag bit in every local and central header (e.g. 0: encrypted)."""
    b = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = b.find(sig)
        while i >= 0:
            flags = struct.unpack_from("<H", b, i + off)[0] | (1 << bit)
            struct.pack_into("<H", b, i + off, flags)
            i = b.find(sig, i + 4)
    return bytes(b)


def corrupt_deflate(members: dict[str, bytes]) -> bytes:
    """A deflated zip whose first member's compressed stream is damaged in its middle."""
    data = bytearray(zip_of(members))
    name_len, extra_len = struct.unpack_from("<HH", data, 26)
    start = 30 + name_len + extra_len
    size = struct.unpack_from("<I", data, 18)[0]
    for k in range(start + size // 3, start + size // 3 + 16):
        data[k] ^= 0xA5
    return bytes(data)


@functools.lru_cache(maxsize=None)
def png_bomb(side: int = 16384) -> bytes:
    """A valid grey PNG of side x side zero pixels (~16 k x 16 k = 268 Mpx) in a few hundred KB."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    seq = synthetic.rigid_sequence(8, (64, 48), subdivisions=1)
    rgba = synthetic.render_sequence(seq)
    synthetic.write_png_folder(rgba, root / "clip")
    synthetic.write_video(rgba[..., :3], root / "clip.mp4")
    (root / "masks").mkdir()
    for i, a in enumerate(rgba[..., 3]):
        cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), a)
    (root / "short_masks").mkdir()
    for i, a in enumerate(rgba[:3, ..., 3]):
        cv2.imwrite(str(root / "short_masks" / f"{i:03d}.png"), a)
    (root / "notes.txt").write_text("not a video")
    (root / "fake.mp4").write_bytes(b"\x00garbage" * 100)
    (root / "image.mp4").write_bytes(png(rgba[0, ..., :3]))
    (root / "empty").mkdir()
    (root / "long").mkdir()
    for i in range(210):
        os.link(root / "clip" / sorted(os.listdir(root / "clip"))[0], root / "long" / f"f{i:04d}.png")
    (root / "bomb").mkdir()
    (root / "bomb" / "0.png").write_bytes(png_bomb())
    outside = tmp_path_factory.mktemp("outside")
    synthetic.write_png_folder(rgba, outside / "clip")
    (root / "escape").mkdir()  # a folder inside the root whose frames link out of it
    for f in sorted((outside / "clip").iterdir()):
        os.symlink(f, root / "escape" / f.name)
    os.symlink(outside / "clip", root / "linkdir")
    frames = {f"{i:03d}.png": png(im[..., [2, 1, 0]]) for i, im in enumerate(rgba[..., :3])}
    return {"root": root, "outside": outside, "seq": seq, "rgba": rgba, "frames": frames,
            "mesh": npz(vertices=seq.mesh.vertices, faces=seq.mesh.faces)}


@pytest.fixture(scope="module")
def server(tmp_path_factory, world):
    proc = bc.launch_backend(sys.executable, tmp_path_factory.mktemp("data"), env=ENV, timeout_s=90,
                             extra_args=[*ARGS, "--allow-root", str(world["root"])])
    yield proc
    proc.stop()


def cases(w) -> dict[str, tuple[int, str, dict]]:
    """name -> (status, needle in error+hint, request: files / data / raw)."""
    seq, root, good = w["seq"], w["root"], w["mesh"]
    v, f = seq.mesh.vertices, seq.mesh.faces
    clip = str(root / "clip")
    cam = seq.camera.to_json()
    M = {"mesh": ("m.npz", good)}
    P = {"video_path": clip}

    def mesh_case(status, needle, data, name="m.npz"):
        return status, needle, {"files": {"mesh": (name, data)}, "data": P}

    def params(status, needle, text, **extra):
        return status, needle, {"files": M, "data": {**P, "params": text, **extra}}

    def video(status, needle, files=None, data=None):
        return status, needle, {"files": {**M, **(files or {})}, "data": data or {}}

    nan_v = v.copy()
    nan_v[3, 1] = np.nan
    bomb = io.BytesIO()
    np.savez_compressed(bomb, vertices=np.zeros((400_000, 3)), faces=f)
    mesh_members = {"vertices.npy": npy(v), "faces.npy": npy(f)}
    huge = _huge_header_npy()
    polyglot = npy(v) + zip_of(mesh_members)
    frames = w["frames"]
    bomb_zip = zip_of({"a.png": png_bomb(), "b.png": png_bomb()}, zipfile.ZIP_DEFLATED)
    size_liar = _zip_size_liar(frames)
    wide_masks = zip_of({f"{i}.png": png(np.zeros((48, 200), np.uint8)) for i in range(8)})
    deep = "[" * 100_000 + "]" * 100_000
    c = {
        # ---- mesh
        "mesh truncated": mesh_case(400, "npz", good[: len(good) // 2]),
        "mesh pickled member": mesh_case(400, "pickle", npz(vertices=v, faces=f, extra=np.array([{"a": 1}], dtype=object))),
        "mesh vertices (N,2)": mesh_case(400, "(N, 3)", npz(vertices=v[:, :2], faces=f)),
        "mesh faces out of range": mesh_case(400, "outside", npz(vertices=v, faces=f + len(v))),
        "mesh NaN vertex": mesh_case(400, "NaN", npz(vertices=nan_v, faces=f)),
        "mesh float faces": mesh_case(400, "integers", npz(vertices=v, faces=f.astype(np.float32))),
        "mesh no faces array": mesh_case(400, "lacks", npz(vertices=v)),
        "mesh uncompressed-size claim": mesh_case(400, "claims", bomb.getvalue()),
        "mesh over vertex limit": mesh_case(400, "limit", npz(vertices=np.random.rand(6000, 3), faces=f)),
        "mesh over byte limit": mesh_case(413, "limit", npz(vertices=np.random.rand(4000, 3), faces=np.zeros((90000, 3), np.int64))),
        "mesh corrupt deflate": mesh_case(400, "npz", corrupt_deflate(mesh_members)),
        "mesh encrypted member": mesh_case(400, "encrypted", set_flag(zip_of(mesh_members, zipfile.ZIP_STORED), 0)),
        "mesh bzip2 member": mesh_case(400, "compression", zip_of(mesh_members, zipfile.ZIP_BZIP2)),
        "mesh lzma member": mesh_case(400, "compression", zip_of(mesh_members, zipfile.ZIP_LZMA)),
        "mesh npy+zip polyglot": mesh_case(400, "npz", polyglot),
        "mesh huge declared shape": mesh_case(400, "declares shape", zip_of({"vertices.npy": huge, "faces.npy": npy(f)})),
        "mesh empty file": mesh_case(400, "npz", b""),
        "mesh text member": mesh_case(400, ".npy", zip_of({**mesh_members, "notes.txt": b"hi"})),
        "mesh partial rig": mesh_case(400, "rig", npz(vertices=v, faces=f, bone_names=np.array(["a"]))),
        "mesh as text field": (400, "file part", {"files": {"video_file": ("a.mp4", b"x")}, "data": {"mesh": "abc", **P}}),
        "mesh missing": (400, "mesh", {"files": {"video_file": ("a.mp4", b"x")}, "data": {}}),
        # ---- video
        "video local text file": video(400, "not a video", data={"video_path": str(root / "notes.txt")}),
        "video local garbage .mp4": video(400, "container", data={"video_path": str(root / "fake.mp4")}),
        "video local PNG named .mp4": video(400, "container", data={"video_path": str(root / "image.mp4")}),
        "video upload PNG named .mp4": video(400, "container", files={"video_file": ("v.mp4", (root / "image.mp4").read_bytes())}),
        "video upload .txt": video(400, "unsupported", files={"video_file": ("v.txt", b"hello")}),
        "video_file as text field": video(400, "file part", data={"video_file": "abc"}),
        "video both given": video(400, "exactly one", files={"video_file": ("a.mp4", b"x")}, data=P),
        "video neither given": video(400, "exactly one"),
        "video zip without images": video(400, "no images", files={"video_file": ("v.zip", zip_of({"a.txt": b"x"}))}),
        "video zip not a zip": video(400, "zip", files={"video_file": ("v.zip", b"PK\x03\x04garbage" * 10)}),
        "video zip that is an npy": video(400, "zip", files={"video_file": ("v.zip", npy(v) + zip_of(frames))}),
        "video zip corrupt deflate": video(400, "extracted", files={"video_file": ("v.zip", corrupt_deflate(frames))}),
        "video zip encrypted": video(400, "encrypted", files={"video_file": ("v.zip", set_flag(zip_of(frames, zipfile.ZIP_STORED), 0))}),
        "video zip bzip2": video(400, "compression", files={"video_file": ("v.zip", zip_of(frames, zipfile.ZIP_BZIP2))}),
        "video zip lying sizes": video(400, "extracted", files={"video_file": ("v.zip", size_liar)}),
        "video zip PNG bombs": video(413, "pixels", files={"video_file": ("v.zip", bomb_zip)}),
        "video zip claims 70 MB": video(413, "claims", files={"video_file": ("v.zip", zip_of({"a.png": b"\x00" * (70 << 20)}))}),
        "video zip mixed sizes": video(400, "mixes image sizes", files={"video_file": ("v.zip", zip_of(
            {"0.png": png(np.zeros((48, 64, 3), np.uint8)), "1.png": png(np.zeros((40, 64, 3), np.uint8))}))}),
        "video local folder bomb": video(413, "pixels", data={"video_path": str(root / "bomb")}),
        "video local empty folder": video(400, "no images", data={"video_path": str(root / "empty")}),
        "video frames beyond clip": params(400, "ends at 50", '{"frames": "0:50"}'),
        "video too many frames": video(413, "limit of 200", data={"video_path": str(root / "long")}),
        # ---- paths
        "path relative": video(400, "absolute", data={"video_path": "clip"}),
        "path dotdot out of roots": video(403, "allowed roots", data={"video_path": f"{clip}/../../{w['outside'].name}/clip"}),
        "path outside roots": video(403, "allowed roots", data={"video_path": str(w["outside"] / "clip")}),
        "path missing outside roots": video(403, "allowed roots", data={"video_path": "/nonexistent/x.mp4"}),
        "path missing inside root": video(400, "not found", data={"video_path": clip + "_nope"}),
        "path symlinked folder out of roots": video(403, "allowed roots", data={"video_path": str(root / "linkdir")}),
        "path frames linking out of roots": video(403, "link out", data={"video_path": str(root / "escape")}),
        "path with NUL": video(400, "NUL", data={"video_path": clip + "\x00x"}),
        "path of 5000 characters": video(400, "characters", data={"video_path": "/" + "a/" * 2500}),
        "path component of 300": video(400, "component", data={"video_path": str(root / ("n" * 300))}),
        "path blank": video(400, "empty", data={"video_path": "   "}),
        # ---- masks
        "masks unknown keyword": params(400, "absolute", "{}", masks="sometimes"),
        "masks garbage upload": (400, "container", {"files": {**M, "masks_file": ("m.mp4", b"\x00" * 300)}, "data": P}),
        "masks_file as text": params(400, "file part", "{}", masks_file="abc"),
        "masks both given": (400, "at most one", {"files": {**M, "masks_file": ("m.mp4", b"x")}, "data": {**P, "masks": "auto"}}),
        "masks alpha on a video file": video(400, "alpha", data={"video_path": str(root / "clip.mp4"), "masks": "alpha"}),
        "masks folder too short": params(400, "3 images", "{}", masks=str(root / "short_masks")),
        "masks zip wrong aspect": (400, "aspect", {"files": {**M, "masks_file": ("m.zip", wide_masks)}, "data": P}),
        "masks path outside roots": params(403, "allowed roots", "{}", masks=str(w["outside"] / "clip")),
        # ---- params
        "params not JSON": params(400, "JSON", "{engine"),
        "params a list": params(400, "object", "[1, 2]"),
        "params nested 100000 deep": params(400, "nested", deep),
        "params int of 5000 digits": params(400, "digits", '{"seed": ' + "9" * 5000 + "}"),
        "params options.iters=1e309": params(400, "range", '{"options": {"iters": 1e309}}'),
        "params NaN literal": params(400, "NaN", '{"fps": NaN}'),
        "params options.smooth=nan": params(400, "smooth", '{"options": {"smooth": "nan"}}'),
        "params option typo": params(400, "iterz", '{"engine": "articulated", "options": {"iterz": 64}}'),
        "params option wrong type": params(400, "iters", '{"engine": "articulated", "options": {"iters": "many"}}'),
        "params option of a removed engine": params(400, "replaced by 'articulated'", '{"engine": "fit", "options": {"nodes": 64}}'),
        "params option nested": params(400, "scalar", '{"options": {"iters": [1]}}'),
        "params unknown engine": params(400, "engine", '{"engine": "nope"}'),
        "params unknown key": params(400, "unknown", '{"evil": 1}'),
        "params max_size too big": params(400, "max_size", '{"max_size": 100000}'),
        "params max_size a string": params(400, "max_size", '{"max_size": "512"}'),
        "params fps 1e999": params(400, "range", '{"fps": 1e999}'),
        "params fps zero": params(400, "fps", '{"fps": 0}'),
        "params device cuda:99": params(400, "cuda", '{"device": "cuda:99"}'),
        "params device shell": params(400, "device", '{"device": "cpu; rm -rf /"}'),
        "params seed negative": params(400, "seed", '{"seed": -1}'),
        "params frames a number": params(400, "frames", '{"frames": 5}'),
        "params frames reversed": params(400, "empty", '{"frames": "5:2"}'),
        "params up_axis bad": params(400, "up_axis", '{"up_axis": "sideways"}'),
        "params first_pose a string": params(400, "first_pose", '{"first_pose": "true"}'),
        "params as a file": (400, "must be text", {"files": {**M, "params": ("p.json", b"{}")}, "data": P}),
        "params over 8 MB": params(413, "bytes", '{"engine": "' + "x" * (9 << 20) + '"}'),
        "camera size mismatch": params(400, "image_size", "{}", camera=json.dumps({**cam, "image_size": [640, 480]})),
        "camera garbage": params(400, "camera", "{}", camera='{"K": "x"}'),
        "camera nested deep": params(400, "nested", "{}", camera=deep),
        "camera pose count": params(400, "poses", '{"frames": "0:3"}', camera=json.dumps({**cam, "mesh_to_camera": [cam["mesh_to_camera"]] * 2})),
        "camera not UTF-8 file": (400, "UTF-8", {"files": {**M, "camera": ("c.json", b"\xff\xfe{")}, "data": P}),
        "engine needs camera": params(400, "needs a camera", '{"engine": "rigid"}'),
        # ---- multipart framing
        "framing not multipart": (400, "multipart", {"raw": (b"{}", "application/json")}),
        "framing no boundary": (400, "multipart", {"raw": (b"--x\r\n", "multipart/form-data")}),
        "framing garbage body": (400, "", {"raw": (b"\x00\x01garbage" * 50, "multipart/form-data; boundary=zz")}),
        "framing unknown field": params(400, "unknown", "{}", evil="1"),
        "framing duplicate field": (400, "2 times", {"files": [("mesh", ("m.npz", good)), ("mesh", ("n.npz", good))], "data": P}),
        "framing too many files": (400, "", {"files": [(k, ("a.mp4", b"x")) for k in ("mesh", "video_file", "masks_file", "camera", "params")], "data": {}}),
        "framing too many fields": (400, "", {"files": M, "data": {f"f{i}": "x" for i in range(10)}}),
    }
    return c


def _huge_header_npy() -> bytes:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000, 3), }"
    header = header + " " * (63 - (len(header) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x00" * 48


def _zip_size_liar(frames: dict[str, bytes]) -> bytes:
    """A stored zip whose headers declare each member 10 bytes shorter than it is."""
    b = bytearray(zip_of(frames, zipfile.ZIP_STORED))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = b.find(sig)
        while i >= 0:
            n = struct.unpack_from("<I", b, i + off)[0]
            struct.pack_into("<I", b, i + off, n - 10)
            i = b.find(sig, i + 4)
    return bytes(b)


CASES: dict | None = None


def _all(world):
    global CASES
    if CASES is None:
        CASES = cases(world)
    return CASES


NAMES = [  # listed here so pytest can name each case without building the files at collection
    "mesh truncated", "mesh pickled member", "mesh vertices (N,2)", "mesh faces out of range", "mesh NaN vertex",
    "mesh float faces", "mesh no faces array", "mesh uncompressed-size claim", "mesh over vertex limit", "mesh over byte limit",
    "mesh corrupt deflate", "mesh encrypted member", "mesh bzip2 member", "mesh lzma member", "mesh npy+zip polyglot",
    "mesh huge declared shape", "mesh empty file", "mesh text member", "mesh partial rig", "mesh as text field", "mesh missing",
    "video local text file", "video local garbage .mp4", "video local PNG named .mp4", "video upload PNG named .mp4",
    "video upload .txt", "video_file as text field", "video both given", "video neither given", "video zip without images",
    "video zip not a zip", "video zip that is an npy", "video zip corrupt deflate", "video zip encrypted", "video zip bzip2",
    "video zip lying sizes", "video zip PNG bombs", "video zip claims 70 MB", "video zip mixed sizes", "video local folder bomb",
    "video local empty folder", "video frames beyond clip", "video too many frames",
    "path relative", "path dotdot out of roots", "path outside roots", "path missing outside roots", "path missing inside root",
    "path symlinked folder out of roots", "path frames linking out of roots", "path with NUL", "path of 5000 characters",
    "path component of 300", "path blank",
    "masks unknown keyword", "masks garbage upload", "masks_file as text", "masks both given", "masks alpha on a video file",
    "masks folder too short", "masks zip wrong aspect", "masks path outside roots",
    "params not JSON", "params a list", "params nested 100000 deep", "params int of 5000 digits", "params options.iters=1e309",
    "params NaN literal", "params options.smooth=nan", "params option typo", "params option wrong type",
    "params option of a removed engine", "params option nested",
    "params unknown engine", "params unknown key", "params max_size too big", "params max_size a string", "params fps 1e999",
    "params fps zero", "params device cuda:99", "params device shell", "params seed negative", "params frames a number",
    "params frames reversed", "params up_axis bad", "params first_pose a string", "params as a file", "params over 8 MB", "camera size mismatch",
    "camera garbage", "camera nested deep", "camera pose count", "camera not UTF-8 file", "engine needs camera",
    "framing not multipart", "framing no boundary", "framing garbage body", "framing unknown field", "framing duplicate field",
    "framing too many files", "framing too many fields",
]

RESULTS: dict[str, tuple[int, float]] = {}


@pytest.fixture(scope="module")
def http(server):
    # one pooled connection for the whole matrix: a refused request must leave it usable
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(30.0), limits=httpx.Limits(max_connections=1),
                      headers={"Authorization": f"Bearer {server.token}"}) as h:
        yield h


def test_matrix_is_complete(world):
    assert sorted(_all(world)) == sorted(NAMES) and len(NAMES) >= 60


@pytest.mark.parametrize("name", NAMES)
def test_hostile_submission_gets_its_4xx(server, http, world, name):
    status, needle, req = _all(world)[name]
    t0 = time.monotonic()
    if "raw" in req:
        body, ctype = req["raw"]
        r = http.post("/v1/jobs", content=body, headers={"Content-Type": ctype})
    else:
        r = http.post("/v1/jobs", files=req.get("files"), data=req.get("data"))
    dt = time.monotonic() - t0
    RESULTS[name] = (r.status_code, dt)
    assert r.headers["content-type"].startswith("application/json"), (name, r.status_code, r.text[:200])
    body = r.json()
    assert r.status_code == status, (name, r.status_code, body)
    assert body["status"] == status and body["error"]
    assert needle.lower() in (body["error"] + " " + body["hint"]).lower(), (name, body)
    assert dt < 20, (name, dt)


@pytest.mark.parametrize("path,method", [
    ("/v1/jobs/..%2F..%2Ftoken", "GET"), ("/v1/jobs/../token", "GET"), ("/v1/jobs/" + "0" * 31 + "g", "GET"),
    ("/v1/jobs/" + "0" * 33, "GET"), ("/v1/jobs/" + "A" * 32, "GET"), ("/v1/jobs/" + "0" * 32, "GET"),
    ("/v1/jobs/" + "0" * 32 + "/result", "GET"), ("/v1/jobs/" + "0" * 32 + "/cancel", "POST"),
    ("/v1/jobs/%00", "GET"), ("/v1/jobs/" + "x" * 5000, "GET"),
])
def test_hostile_job_ids_are_404(http, path, method):
    r = http.request(method, path)
    RESULTS[f"job id {method} {path}"] = (r.status_code, 0.0)
    assert r.status_code == 404 and r.json()["status"] == 404, (path, r.status_code, r.text[:200])


def _raw(server, data: bytes, read_timeout: float = 10.0) -> bytes:
    host, port = server.url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), 5) as s:
        s.settimeout(read_timeout)
        try:
            s.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return b"CLOSED"  # refused while we were still sending
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"}" in out:
                    break
        except TimeoutError:
            pass
        except ConnectionResetError:
            return out or b"CLOSED"
        return out


def test_hostile_http_framing(server):
    auth = f"Authorization: Bearer {server.token}\r\n".encode()
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
    checks = {
        "declared 1 TB": (head + b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000000000\r\n\r\n", b" 413 "),
        "chunked": (head + b"Content-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n", b" 411 "),
        "bad length": (head + b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: abc\r\n\r\n", b" 400 "),
        "header of 1 MB": (b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", b" 4"),
    }
    for name, (data, want) in checks.items():
        t0 = time.monotonic()
        out = _raw(server, data)
        closed = out == b"CLOSED" and name == "header of 1 MB"  # h11 stops reading past 64 KB of headers
        RESULTS[f"framing {name}"] = (431 if closed else int(out[9:12] or 0), time.monotonic() - t0)
        assert closed or (out.startswith(b"HTTP/1.1") and want in out[:16]), (name, out[:200])
        assert time.monotonic() - t0 < 10, name


def test_short_body_is_not_waited_on_forever(server):
    """A body shorter than its Content-Length: the server drops the connection after the body
    idle timeout (2 s here), and no job folder is left."""
    host, port = server.url.split("//")[1].rsplit(":", 1)
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), 5) as s:
        s.settimeout(15)
        s.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\n"
                  f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 5000\r\n\r\n--x\r\n".encode())
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    dt = time.monotonic() - t0
    print(f"\nshort body: connection closed after {dt:.2f} s")
    assert 1.5 < dt < 8, dt


def test_after_the_matrix_no_5xx_no_leftovers_and_bounded_memory(server, http):
    assert len(RESULTS) >= 60
    assert not [n for n, (s, _) in RESULTS.items() if s >= 500 or s == 0], RESULTS
    assert http.get("/v1/health").json()["ok"] and http.get("/v1/jobs").status_code == 200
    data_dir = server.log_path.parent
    assert not list((data_dir / "jobs").iterdir()), list((data_dir / "jobs").iterdir())  # every refusal cleaned up
    assert not list((data_dir / "tmp").iterdir())
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
    worst = max(RESULTS.items(), key=lambda kv: kv[1][1])
    counts = {}
    for s, _ in RESULTS.values():
        counts[s] = counts.get(s, 0) + 1
    print(f"\nhostile matrix: {len(RESULTS)} requests, statuses {dict(sorted(counts.items()))}; slowest {worst[0]} "
          f"{worst[1][1]:.2f} s; peak server RSS {peak_mb:.0f} MB")
    assert peak_mb < 500, peak_mb
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]

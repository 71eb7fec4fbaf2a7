"""Speed benchmark: per-stage timings, scaling over frames and vertices, peak memory.

Every measurement runs in its own subprocess so peak RAM (ru_maxrss) and peak GPU memory
(torch.cuda.max_memory_allocated) belong to that one job. The video comes from a rendered
rigid box; for the vertex sweep the input mesh is the same box subdivided (same surface, more
vertices), so only the mesh size changes between points.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 192


def _box_mesh(target_vertices: int):
    """The rigid_sequence box, subdivided (x4 vertices a step) to the count nearest the target
    on a log scale; the actual count is what gets reported."""
    import trimesh

    from afv.mesh import Mesh

    box = trimesh.creation.box(extents=(1.0, 0.7, 0.5))
    while 4 * len(box.vertices) <= 2 * target_vertices:
        box = box.subdivide()
    return Mesh(np.asarray(box.vertices, np.float32), np.asarray(box.faces, np.int32))


def _one(job: dict) -> dict:
    """Run one timed job (inside the subprocess)."""
    import torch

    from afv.pipeline import animate, parse_request
    from afv_dev.synthetic import render_sequence, rigid_sequence, write_png_folder

    work = Path(job["work"])
    vid = work / f"video_{job['frames']}"
    seq = rigid_sequence(n_frames=job["frames"], size=(SIZE, SIZE), subdivisions=2)
    if not vid.is_dir():
        write_png_folder(render_sequence(seq), vid)
    cam = work / "camera.json"
    cam.write_text(json.dumps(seq.camera.to_json()))
    mesh = _box_mesh(job["vertices"])
    req = parse_request(mesh=mesh, video=vid, masks="alpha", camera=cam, engine=job["engine"], device=job["device"], max_size=SIZE, fps=24.0)
    cuda = job["device"].startswith("cuda") or (job["device"] == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tracks = animate(req)
    wall = time.perf_counter() - t0
    return {
        **{k: job[k] for k in ("engine", "frames", "device")},
        "vertices": mesh.n_vertices,
        "wall_s": wall,
        "timings_s": tracks.meta.get("timings_s", {}),
        "peak_ram_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "device_used": tracks.meta.get("device"),
    }


def run_speed(engines: list[str], frames_list: list[int], verts_list: list[int], device: str, out: str | Path, log=print) -> dict:
    """Sweep frames (at the smallest vertex count) and vertices (at 16 frames, or the first length)."""
    out = Path(out)
    work = out / "speed_work"
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    base_f = 16 if 16 in frames_list else frames_list[0]
    jobs = [(e, f, verts_list[0]) for e in engines for f in frames_list]
    jobs += [(e, base_f, v) for e in engines for v in verts_list[1:]]
    rows = []
    for e, f, v in jobs:
        job = {"engine": e, "frames": f, "vertices": v, "device": device, "work": str(work)}
        r = subprocess.run([sys.executable, "-m", "afv_dev.bench.speed", json.dumps(job)], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            log(f"speed: {e} {f} frames {v} verts failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            rows.append({"engine": e, "frames": f, "vertices": v, "error": (r.stderr or "")[-500:]})
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        log(f"speed: {e:8s} {f:4d} frames {row['vertices']:7d} verts {row['wall_s']:8.2f} s  RAM {row['peak_ram_mb']:7.0f} MB"
            + (f"  GPU {row['peak_gpu_mb']:7.0f} MB" if row["peak_gpu_mb"] is not None else "") + f"  {row['timings_s']}")
    doc = {"device": device, "image_size": SIZE, "rows": rows, "created_unix": time.time()}
    (out / "speed.json").write_text(json.dumps(doc, indent=1))
    plot_speed(doc, out)
    return doc


def plot_speed(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if "error" not in r]
    engines = sorted({r["engine"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100)
    vmin = min((r["vertices"] for r in rows), default=0)
    fmax = max((r["frames"] for r in rows), default=0)
    for e in engines:
        fr = sorted((r for r in rows if r["engine"] == e and r["vertices"] == vmin), key=lambda r: r["frames"])
        vr = sorted((r for r in rows if r["engine"] == e and r["frames"] == (16 if any(x["frames"] == 16 for x in rows) else fr[0]["frames"])), key=lambda r: r["vertices"])
        axes[0].plot([r["frames"] for r in fr], [r["wall_s"] for r in fr], "o-", label=e)
        axes[1].plot([r["vertices"] for r in vr], [r["wall_s"] for r in vr], "o-", label=e)
        axes[2].plot([r["vertices"] for r in vr], [r["peak_gpu_mb"] or r["peak_ram_mb"] for r in vr], "o-", label=f"{e} ({'GPU' if vr and vr[0]['peak_gpu_mb'] else 'RAM'})")
    axes[0].set(xlabel="frames", ylabel="wall time (s)", title=f"time vs frames ({vmin} verts)")
    axes[1].set(xlabel="vertices", ylabel="wall time (s)", title="time vs vertices", xscale="log")
    axes[2].set(xlabel="vertices", ylabel="peak memory (MB)", title="peak memory", xscale="log")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"device {doc['device']}, {doc['image_size']} px", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "speed.png")
    plt.close(fig)
    # per-stage breakdown at the largest frame count
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for i, e in enumerate(engines):
        r = next((r for r in rows if r["engine"] == e and r["frames"] == fmax and r["vertices"] == vmin), None)
        if r is None:
            continue
        left = 0.0
        for k, v in r["timings_s"].items():
            ax.barh(i, v, left=left, label=k if i == 0 else None)
            ax.text(left + v / 2, i, k, ha="center", va="center", fontsize=6)
            left += v
    ax.set_yticks(range(len(engines)), engines)
    ax.set_xlabel(f"seconds ({fmax} frames, {vmin} verts)")
    ax.set_title("per-stage timings", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "speed_stages.png")
    plt.close(fig)
    lines = ["| engine | frames | vertices | wall s | stages (s) | peak RAM MB | peak GPU MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r['frames']} | {r['vertices']} | failed | | | |")
            continue
        st = ", ".join(f"{k} {v:.2f}" for k, v in r["timings_s"].items())
        lines.append(f"| {r['engine']} | {r['frames']} | {r['vertices']} | {r['wall_s']:.2f} | {st} | {r['peak_ram_mb']:.0f} | {r['peak_gpu_mb'] if r['peak_gpu_mb'] is None else round(r['peak_gpu_mb'])} |")
    (out / "speed.md").write_text("# Speed benchmark\n\n" + f"Device `{doc['device']}`, video {doc['image_size']} px.\n\n" + "\n".join(lines) + "\n\n![scaling](speed.png) ![stages](speed_stages.png)\n")


if __name__ == "__main__":
    print(json.dumps(_one(json.loads(sys.argv[1]))))

"""Run registered engines over benchmark sequences and collect every number.

Each run goes through afv.pipeline.animate on the sequence's files (frames folder, mesh.npz,
camera.json), exactly as a user's job would, then is scored against gt.npz.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from afv.atomic import atomic_path
from afv.engines import get_engine_spec
from afv.errors import AfvError
from afv.pipeline import animate, parse_request
from .metrics import ActionBenchConfig, actionbench_metrics, vertex_metrics, visibility
from .sequences import SequenceData, load_sequence


@dataclass
class RunConfig:
    engines: list[str] = field(default_factory=lambda: ["static"])
    cameras: list[str] = field(default_factory=lambda: ["known"])  # known | estimated
    variants: list[str] = field(default_factory=lambda: ["frames"])  # frames (RGBA) | plain | clutter
    masks: str = "auto"  # mask source for variants without alpha ("frames" always uses alpha)
    device: str = "auto"
    actionbench: str = "fast"  # off | fast | exact
    options: dict = field(default_factory=dict)  # engine name -> options dict


@dataclass
class RunResult:
    sequence: str
    engine: str
    camera: str
    variant: str
    n_frames: int
    n_vertices: int
    status: str  # ok | error | skipped
    message: str = ""
    metrics: dict = field(default_factory=dict)
    actionbench: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    wall_s: float = 0.0
    pred_file: str = ""


def run_one(seq: SequenceData, engine: str, camera_mode: str, variant: str, cfg: RunConfig, out: Path, vis=None, memo: dict | None = None) -> RunResult:
    """One engine on one sequence input; memo caches ActionBench numbers of identical predictions."""
    res = RunResult(seq.name, engine, camera_mode, variant, seq.n_frames, seq.mesh.n_vertices, "ok")
    spec = get_engine_spec(engine)
    if camera_mode == "estimated" and spec.needs_camera:
        res.status, res.message = "skipped", f"engine '{engine}' needs a known camera"
        return res
    if variant not in seq.variants():
        res.status, res.message = "skipped", f"no '{variant}' frames"
        return res
    req = parse_request(
        mesh=seq.path / "mesh.npz",
        video=seq.frames_dir(variant),
        masks="alpha" if variant == "frames" else cfg.masks,
        camera=seq.path / "camera.json" if camera_mode == "known" else None,
        engine=engine,
        device=cfg.device,
        max_size=max(seq.camera.image_size),
        fps=seq.fps,
        options=dict(cfg.options.get(engine, {})),
    )
    t0 = time.perf_counter()
    try:
        tracks = animate(req)
    except AfvError as exc:
        res.status, res.message = "error", str(exc)
        return res
    except Exception as exc:  # an engine bug must not end the whole benchmark
        res.status, res.message = "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        return res
    res.wall_s = time.perf_counter() - t0
    res.timings_s = dict(tracks.meta.get("timings_s", {}))
    pred = seq.mesh.vertices[None] + tracks.displacements
    m = vertex_metrics(pred, seq.positions, seq.mesh.faces, seq.camera, seq.masks, vis=vis)
    res.metrics = m.to_dict()
    if cfg.actionbench != "off":
        ab = ActionBenchConfig() if cfg.actionbench == "exact" else ActionBenchConfig.fast()
        dev = "cuda" if cfg.device.startswith("cuda") else "cpu"
        key = (seq.name, cfg.actionbench, hashlib.sha1(np.ascontiguousarray(pred, np.float32).tobytes()).hexdigest())
        memo = {} if memo is None else memo
        if key not in memo:  # e.g. the static baseline gives the same prediction for every input
            memo[key] = actionbench_metrics(pred, seq.positions, seq.mesh.faces, cfg=ab, device=dev)
        res.actionbench = memo[key]
    pf = out / "preds" / seq.name / f"{engine}_{camera_mode}_{variant}.npz"
    pf.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(pf) as tmp:
        np.savez_compressed(tmp, displacements=tracks.displacements.astype(np.float32))
    res.pred_file = str(pf.relative_to(out))
    return res


def run(sequence_dirs: list[Path], cfg: RunConfig, out: str | Path, log=print, command: str = "") -> dict:
    """Run every (sequence, engine, camera, variant); write out/results.json; return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for sd in sequence_dirs:
        seq = load_sequence(sd)
        vis = visibility(seq.positions, seq.mesh.faces, seq.camera)  # shared by all runs of the sequence
        memo: dict = {}
        for engine in cfg.engines:
            for cam in cfg.cameras:
                for variant in cfg.variants:
                    r = run_one(seq, engine, cam, variant, cfg, out, vis, memo)
                    msg = r.message.splitlines()[0] if r.message else ""
                    if r.status == "ok":
                        extra = f" CD-M {r.actionbench['cd_m']:.4f}" if r.actionbench else ""
                        log(f"bench: {seq.name:32s} {engine:8s} {cam:9s} {variant:7s} err {100 * r.metrics['position']['mean']:6.2f}% p95 {100 * r.metrics['position']['p95']:6.2f}% IoU {r.metrics['silhouette_iou']:.3f}{extra} {r.wall_s:6.2f}s")
                    else:
                        log(f"bench: {seq.name:32s} {engine:8s} {cam:9s} {variant:7s} {r.status}: {msg}")
                    results.append(r.__dict__)
    doc = {
        "config": cfg.__dict__,
        "command": command,
        "sequences": {load_sequence(sd).name: {"path": str(sd), **_seq_facts(sd)} for sd in sequence_dirs},
        "runs": results,
        "created_unix": time.time(),
    }
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1, default=float))
    return doc


def _seq_facts(sd: Path) -> dict:
    meta = json.loads((Path(sd) / "meta.json").read_text())
    return {k: meta.get(k) for k in ("source", "fps", "n_frames", "n_vertices", "image_size", "asset", "clip")}

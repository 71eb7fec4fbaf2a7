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
from afv.geometry.projection import project_points, transform_points
from afv.engines import get_engine_spec
from afv.errors import AfvError
from afv.mesh import Mesh
from afv.pipeline import animate, parse_request
from .metrics import ActionBenchConfig, actionbench_metrics, vertex_metrics, visibility
from .sequences import SequenceData, load_sequence


@dataclass
class RunConfig:
    engines: list[str] = field(default_factory=lambda: ["static"])
    cameras: list[str] = field(default_factory=lambda: ["known"])  # known | estimated
    variants: list[str] = field(default_factory=lambda: ["frames"])  # frames (RGBA) | plain | clutter
    rigs: list[str] = field(default_factory=lambda: ["none"])  # none: the rig is stripped | given: the asset's own rig
    oracle: bool = False  # dev diagnosis: ground-truth 2D tracks and GT masks go to the engine
    masks: str = "auto"  # mask source for variants without alpha ("frames" always uses alpha)
    device: str = "auto"
    actionbench: str = "fast"  # off | fast | exact
    options: dict = field(default_factory=dict)  # engine name -> options dict
    jobs: int = 1  # runs in parallel (processes, 1 torch thread each); 1 = in this process


CAMERAS = ("known", "estimated")
RIGS = ("none", "given")


@dataclass
class RunResult:
    sequence: str
    engine: str
    camera: str
    variant: str
    n_frames: int
    n_vertices: int
    status: str  # ok | error | skipped
    rig: str = "none"
    oracle: bool = False
    message: str = ""
    metrics: dict = field(default_factory=dict)
    actionbench: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    wall_s: float = 0.0
    pred_file: str = ""
    info: dict = field(default_factory=dict)  # the engine's own diagnostics (warnings, fallbacks)


def run_key(r: dict) -> tuple:
    """What distinguishes runs of one sequence: (engine, camera, input, rig, oracle)."""
    return (r["engine"], r["camera"], r["variant"], r.get("rig", "none"), bool(r.get("oracle", False)))


def run_label(r: dict) -> str:
    extra = ("/rig" if r.get("rig", "none") == "given" else "") + ("/oracle" if r.get("oracle") else "")
    return f"{r['engine']}/{r['camera']}/{r['variant']}{extra}"


def oracle_tracks(seq: SequenceData, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth 2D tracks of every vertex: (T, N, 2) float32 pixels of the sequence's images
    (GT positions projected through its camera) and (T, N) bool visibility in the GT pose."""
    pts = np.stack([project_points(transform_points(p.astype(np.float64), seq.camera.pose(t)), seq.camera.K) for t, p in enumerate(seq.positions)])
    return pts.astype(np.float32), np.asarray(vis, bool)


def run_one(seq: SequenceData, engine: str, camera_mode: str, variant: str, cfg: RunConfig, out: Path, vis=None,
            memo: dict | None = None, rig: str = "none") -> RunResult:
    """One engine on one sequence input; memo caches ActionBench numbers of identical predictions."""
    res = RunResult(seq.name, engine, camera_mode, variant, seq.n_frames, seq.mesh.n_vertices, "ok", rig, cfg.oracle)
    spec = get_engine_spec(engine)
    if camera_mode == "estimated" and spec.needs_camera:
        res.status, res.message = "skipped", f"engine '{engine}' needs a known camera"
        return res
    if variant not in seq.variants():
        res.status, res.message = "skipped", f"no '{variant}' frames"
        return res
    if rig == "given" and seq.mesh.rig is None:
        res.status, res.message = "skipped", "the sequence has no rig"
        return res
    if vis is None:
        vis = visibility(seq.positions, seq.mesh.faces, seq.camera)
    mesh = seq.mesh if rig == "given" else Mesh(seq.mesh.vertices, seq.mesh.faces)
    oracle = oracle_tracks(seq, vis) if cfg.oracle else None
    req = parse_request(
        mesh=mesh,
        video=seq.frames_dir(variant),
        masks=str(seq.path / "masks") if cfg.oracle else ("alpha" if variant == "frames" else cfg.masks),
        camera=seq.path / "camera.json" if camera_mode == "known" else None,
        engine=engine,
        device=cfg.device,
        max_size=max(seq.camera.image_size),
        fps=seq.fps,
        options=dict(cfg.options.get(engine, {})),
        up_axis=seq.up_axis,  # what the add-on sends: the object's world Z in mesh coordinates
    )
    t0 = time.perf_counter()
    try:
        tracks = animate(req, oracle=oracle)
    except AfvError as exc:
        res.status, res.message = "error", str(exc)
        return res
    except Exception as exc:  # an engine bug must not end the whole benchmark
        res.status, res.message = "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        return res
    res.wall_s = time.perf_counter() - t0
    res.timings_s = dict(tracks.meta.get("timings_s", {}))
    res.info = dict(tracks.meta.get("info", {}))
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
    suffix = ("_rig" if rig == "given" else "") + ("_oracle" if cfg.oracle else "")
    pf = out / "preds" / seq.name / f"{engine}_{camera_mode}_{variant}{suffix}.npz"
    pf.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(pf) as tmp:
        np.savez_compressed(tmp, displacements=tracks.displacements.astype(np.float32))
    res.pred_file = str(pf.relative_to(out))
    return res


def _log_result(r: dict, log) -> None:
    msg = r["message"].splitlines()[0] if r["message"] else ""
    head = f"bench: {r['sequence']:28s} {run_label(r):34s}"
    if r["status"] == "ok":
        extra = f" CD-M {r['actionbench']['cd_m']:.4f}" if r["actionbench"] else ""
        m = r["metrics"]
        log(f"{head} err {100 * m['position']['mean']:6.2f}% p95 {100 * m['position']['p95']:6.2f}% IoU {m['silhouette_iou']:.3f}{extra} {r['wall_s']:6.2f}s")
    else:
        log(f"{head} {r['status']}: {msg}")


# One sequence (loaded, with its GT visibility) is kept per worker process: tasks of a sequence
# tend to follow each other, and visibility needs T rasterisations.
_WORKER_CACHE: dict = {}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # N jobs on N cores: threads inside a job only contend


def _task(args: tuple) -> dict:
    seq_dir, engine, cam, variant, rig, cfg, out = args
    if _WORKER_CACHE.get("path") != seq_dir:
        seq = load_sequence(seq_dir)
        _WORKER_CACHE.clear()
        _WORKER_CACHE.update(path=seq_dir, seq=seq, vis=visibility(seq.positions, seq.mesh.faces, seq.camera), memo={})
    c = _WORKER_CACHE
    return run_one(c["seq"], engine, cam, variant, cfg, Path(out), c["vis"], c["memo"], rig).__dict__


def run(sequence_dirs: list[Path], cfg: RunConfig, out: str | Path, log=print, command: str = "") -> dict:
    """Run every (sequence, engine, camera, variant, rig); write out/results.json; return it.

    cfg.jobs > 1 runs them in a pool of processes (spawned, 1 torch thread each), longest first."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    facts = {}
    tasks = []
    for sd in sequence_dirs:
        f = _seq_facts(sd)
        facts[f["name"]] = {"path": str(sd), **f}
        for engine in cfg.engines:
            for cam in cfg.cameras:
                for variant in cfg.variants:
                    for rig in cfg.rigs:
                        tasks.append((str(sd), engine, cam, variant, rig, cfg, str(out)))
    results: dict[int, dict] = {}
    if cfg.jobs <= 1:
        for i, t in enumerate(tasks):
            results[i] = r = _task(t)
            _log_result(r, log)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        cost = lambda t: -(facts_by_path[t[0]]["n_frames"] or 1) * (facts_by_path[t[0]]["n_vertices"] or 1)  # noqa: E731
        facts_by_path = {v["path"]: v for v in facts.values()}
        with ProcessPoolExecutor(cfg.jobs, mp.get_context("spawn"), initializer=_worker_init) as pool:
            futs = {pool.submit(_task, tasks[i]): i for i in sorted(range(len(tasks)), key=lambda i: (cost(tasks[i]), tasks[i][0]))}
            for fu in as_completed(futs):
                results[futs[fu]] = r = fu.result()
                _log_result(r, log)
    doc = {
        "config": cfg.__dict__,
        "command": command,
        "sequences": facts,
        "runs": [results[i] for i in range(len(tasks))],
        "created_unix": time.time(),
    }
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1, default=float))
    return doc


def _seq_facts(sd: Path) -> dict:
    meta = json.loads((Path(sd) / "meta.json").read_text())
    facts = {k: meta.get(k) for k in ("name", "source", "fps", "n_frames", "n_vertices", "image_size", "asset", "clip", "sampling")}
    facts["name"] = facts["name"] or Path(sd).name
    facts["view"] = (meta.get("recipe") or {}).get("view")
    facts["has_rig"] = bool(meta.get("rig"))
    return facts

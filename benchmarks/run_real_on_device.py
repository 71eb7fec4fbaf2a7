"""Run the `real` benchmark on a machine without Blender (the device machine: 16 cores, no bpy).

Sequences are built here (Blender) and travel as compact packs; the device only runs engines
and metrics on them. Three steps:

  # here: code + wheels + packs of prebuilt sequences into one git-ignored folder
  python benchmarks/run_real_on_device.py pack --subset real --cache /work/bench_cache \
         --dest out/bench_device --max-mb 48
  # there, once per pack (see docs/benchmark.md for the `run` tool call):
  python3 out/bench_device/run_real_on_device.py run --pack out/bench_device/part1 \
         --engines static,rigid,articulated --jobs 16 --out $OUT
  # here: merge the parts' results into one report
  python benchmarks/run_real_on_device.py merge --parts DIR1 DIR2 ... --cache /work/bench_cache --out docs/bench

A pack holds, per sequence, only what the runner reads: frames/ (RGBA PNG; masks are re-made
from alpha there), camera.json, mesh.npz, gt.npz (compressed), meta.json, rig_gt.npz; files that
are identical across sequences (the two views of a clip share GT and mesh) are stored once.
The device returns results.json, report.md and plots/ (no predictions: too large) as one tar.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve()
SEQ_FILES = ("camera.json", "mesh.npz", "gt.npz", "meta.json", "rig_gt.npz")


def _backend() -> Path:
    """The backend folder next to this script (repo) or inside the pack (device)."""
    for p in (HERE.parent / "code", HERE.parents[1] / "backend"):
        if (p / "afv").is_dir():
            return p
    raise SystemExit("backend code not found next to this script")


# ----------------------------------------------------------------------------- pack (here)


def _compressed_npz(path: Path) -> bytes:
    import numpy as np

    with np.load(path, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


SHUFFLED = b"AFVSHUF1"  # gt positions: float32 bytes split into 4 planes, then xz (exact, ~3x smaller)


def _pack_positions(path: Path) -> bytes:
    import lzma

    import numpy as np

    with np.load(path, allow_pickle=False) as d:
        pos = np.ascontiguousarray(d["positions"], np.float32)
    planes = np.frombuffer(pos.tobytes(), np.uint8).reshape(-1, 4).T.tobytes()
    head = json.dumps({"shape": list(pos.shape)}).encode()
    return SHUFFLED + len(head).to_bytes(4, "little") + head + lzma.compress(planes, preset=6)


def _unpack_positions(data: bytes, dest: Path) -> None:
    import lzma

    import numpy as np

    n = int.from_bytes(data[8:12], "little")
    shape = json.loads(data[12 : 12 + n])["shape"]
    planes = np.frombuffer(lzma.decompress(data[12 + n :]), np.uint8).reshape(4, -1)
    np.savez(dest, positions=np.frombuffer(planes.T.tobytes(), np.float32).reshape(shape))


def _seq_members(seq: Path) -> list[tuple[str, bytes]]:
    """What the runner reads, compactly: gt shuffled + xz, other npz compressed, PNGs at level 6
    (same pixels); rig_gt.npz stays behind (only tests read it)."""
    import cv2

    out = []
    for name in SEQ_FILES:
        f = seq / name
        if not f.is_file() or name == "rig_gt.npz":
            continue
        if name == "gt.npz":
            out.append((name, _pack_positions(f)))
        else:
            out.append((name, _compressed_npz(f) if name.endswith(".npz") else f.read_bytes()))
    for png in sorted((seq / "frames").glob("*.png")):
        im = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        out.append((f"frames/{png.name}", cv2.imencode(".png", im, [cv2.IMWRITE_PNG_COMPRESSION, 6])[1].tobytes()))
    return out


def pack(args) -> None:
    sys.path.insert(0, str(_backend()))
    from afv_dev.bench.sequences import build, subset_recipes

    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "code").mkdir(parents=True)
    for pkg in ("afv", "afv_dev"):
        shutil.copytree(_backend() / pkg, dest / "code" / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(HERE, dest / HERE.name)
    if args.wheels:
        shutil.copytree(args.wheels, dest / "whl")
    seqs = [build(r, args.cache) for r in subset_recipes(args.subset)]
    seqs = [s for s in seqs if s is not None]
    if args.only:
        keep = set(args.only.split(","))
        seqs = [s for s in seqs if s.name in keep]
    limit = int(args.max_mb * 2**20)
    parts: list[list[Path]] = [[]]
    sizes = [0]
    seen: set[str] = set()
    members_of = {s.name: _seq_members(s) for s in seqs}
    for s in sorted(seqs, key=lambda p: p.name):  # both views of a clip sort together and share blobs
        members = members_of[s.name]
        new = sum(len(b) for _, b in members if hashlib.sha1(b).hexdigest() not in seen)
        if sizes[-1] + new > limit and parts[-1]:
            parts.append([])
            sizes.append(0)
            seen = set()
            new = sum(len(b) for _, b in members)
        parts[-1].append(s)
        sizes[-1] += new
        seen |= {hashlib.sha1(b).hexdigest() for _, b in members}
    for i, group in enumerate(parts, 1):
        d = dest / f"part{i}"
        d.mkdir()
        blobs: dict[str, str] = {}
        manifest = {}
        with tarfile.open(d / "seqs.tar", "w") as tar:
            for s in group:
                manifest[s.name] = {}
                for name, data in members_of[s.name]:
                    h = hashlib.sha1(data).hexdigest()
                    if h not in blobs:
                        blobs[h] = f"blobs/{h}"
                        info = tarfile.TarInfo(blobs[h])
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    manifest[s.name][name] = blobs[h]
        (d / "manifest.json").write_text(json.dumps(manifest))
        print(f"pack: {d}: {len(group)} sequences, {(d / 'seqs.tar').stat().st_size / 2**20:.1f} MiB")
    total = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"pack: {dest}: {len(parts)} part(s), {total / 2**20:.1f} MiB in all (code and wheels travel with every part)")


# ----------------------------------------------------------------------------- run (device)


def unpack(part: Path, where: Path) -> list[Path]:
    """Re-create the sequence folders of a pack (masks from the frames' alpha)."""
    import cv2

    manifest = json.loads((part / "manifest.json").read_text())
    blobs = where / "_blobs"
    with tarfile.open(part / "seqs.tar") as tar:
        tar.extractall(blobs, filter="data") if sys.version_info >= (3, 12) else tar.extractall(blobs)
    out = []
    for name, files in manifest.items():
        seq = where / name
        (seq / "frames").mkdir(parents=True, exist_ok=True)
        (seq / "masks").mkdir(exist_ok=True)
        for rel, blob in files.items():
            data = (blobs / blob).read_bytes()
            if data.startswith(SHUFFLED):
                _unpack_positions(data, seq / rel)
            else:
                (seq / rel).write_bytes(data)
            if rel.startswith("frames/"):
                a = cv2.imread(str(seq / rel), cv2.IMREAD_UNCHANGED)[..., 3]
                cv2.imwrite(str(seq / "masks" / Path(rel).name), ((a > 127) * 255).astype("uint8"))
        out.append(seq)
    shutil.rmtree(blobs)
    return out


def run(args) -> None:
    sys.path.insert(0, str(_backend()))
    from afv_dev.bench.report import write_report
    from afv_dev.bench.cli import parse_engine_options
    from afv_dev.bench.runner import RunConfig, run as run_bench

    work = Path(args.work)
    seqs = unpack(Path(args.pack), work / "seqs")
    out = work / "out"
    cfg = RunConfig(
        engines=args.engines.split(","),
        cameras=args.camera.split(","),
        rigs=args.rig.split(","),
        oracle=args.oracle,
        device=args.device,
        actionbench=args.actionbench,
        jobs=args.jobs,
        options=parse_engine_options(args.option),
    )
    doc = run_bench(sorted(seqs), cfg, out, command=f"run_real_on_device.py run --pack {Path(args.pack).name} "
                    f"--engines {args.engines} --camera {args.camera} --rig {args.rig} --jobs {args.jobs} --device {args.device}")
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "results.json", dest / f"{Path(args.pack).name}_results.json")  # whatever happens next
    if not args.no_report:
        try:
            write_report(doc, out, jobs=args.jobs)
        except Exception as exc:  # the numbers must come back even when drawing fails
            print(f"run: report failed: {type(exc).__name__}: {exc}")
    with tarfile.open(dest / f"{Path(args.pack).name}_results.tar.gz", "w:gz") as tar:
        for p in [out / "results.json", out / "report.md", out / "plots"]:
            if p.exists():
                tar.add(p, arcname=p.name)
    print(f"run: {len(doc['runs'])} runs -> {dest}")


# ----------------------------------------------------------------------------- merge (here)


LOG_LINE = re.compile(r"^bench: (\S+)\s+(\S+)\s+err\s+([\d.]+)% p95\s+([\d.]+)% IoU ([\d.]+)(?: CD-M ([\d.]+))?\s+([\d.]+)s$")


def runs_from_log(log: Path, cache: Path) -> dict:
    """A results document from a run's log lines (when its results.json was lost): per run the
    mean and p95 error, IoU, CD-M and time; no per-frame numbers, so no plots."""
    sys.path.insert(0, str(_backend()))
    from afv_dev.bench.runner import _seq_facts

    runs, seqs = [], {}
    for line in log.read_text().splitlines():
        m = LOG_LINE.match(line.strip())
        if not m:
            continue
        seq, label, mean, p95, iou, cdm, wall = m.groups()
        parts = label.split("/")
        facts = _seq_facts(cache / seq)
        seqs[seq] = {"path": str(cache / seq), **facts}
        runs.append({"sequence": seq, "engine": parts[0], "camera": parts[1], "variant": parts[2], "rig": "given" if "rig" in parts[3:] else "none",
                     "oracle": "oracle" in parts[3:], "n_frames": facts["n_frames"], "n_vertices": facts["n_vertices"], "status": "ok",
                     "message": f"from the run's log ({log.name})", "metrics": {"position": {"mean": float(mean) / 100, "p95": float(p95) / 100},
                     "silhouette_iou": float(iou)}, "actionbench": {"cd_m": float(cdm)} if cdm else {}, "timings_s": {},
                     "wall_s": float(wall), "pred_file": "", "info": {}})
    return {"config": {}, "sequences": seqs, "runs": runs}


def _record(doc: dict) -> dict:
    """The merged results.json is the report's record (it goes into docs/): numbers to 5
    significant digits, each run's engine info cut to its warnings, rig and per-frame self-check
    choice (the parts' own results.json keep everything)."""
    def rounded(o):
        if isinstance(o, float):
            return float(f"{o:.5g}")
        if isinstance(o, list):
            return [rounded(x) for x in o]
        return {k: rounded(v) for k, v in o.items()} if isinstance(o, dict) else o

    def slim(info: dict) -> dict:
        out = {k: v for k, v in info.items() if k in ("warnings", "rig", "bones")}
        if "selfcheck" in info:
            out["selfcheck"] = {"choice": info["selfcheck"].get("choice")}
        return out

    return rounded({**doc, "runs": [{**r, "info": slim(r.get("info") or {})} for r in doc["runs"]]})


def merge(args) -> None:
    sys.path.insert(0, str(_backend()))
    from afv_dev.bench.report import plot_error_over_time, write_report

    out = Path(args.out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    docs = []
    for part in args.parts:
        part = Path(part)
        tars = sorted(part.glob("*_results.tar.gz"))
        src = part
        if tars:
            src = out / ".merge" / part.name
            src.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tars[0]) as tar:
                tar.extractall(src)
        docs.append(json.loads((src / "results.json").read_text()))
        for png in (src / "plots").glob("*.png"):  # the first part's contact sheet of a sequence is kept
            if not (png.name.endswith("__sheet.png") and (out / "plots" / png.name).exists()):
                shutil.copyfile(png, out / "plots" / png.name)
        if (src / "preds").is_dir():  # predictions made here: the report can draw those sequences again
            shutil.copytree(src / "preds", out / "preds", dirs_exist_ok=True)
    for log in args.logs or []:
        docs.append(runs_from_log(Path(log), Path(args.cache)))
    doc = dict(docs[0])
    doc["config"] = dict(doc.get("config") or {})
    engines = [e for d in docs for e in (d.get("config") or {}).get("engines", []) or [r["engine"] for r in d["runs"]]]
    doc["config"]["engines"] = list(dict.fromkeys(engines))  # every part's engines, first-seen order
    configs = [d["config"] for d in docs if d.get("config")]  # runs read back from a log have none
    for key in ("cameras", "rigs", "variants"):  # every part's modes, for the report's header
        doc["config"][key] = list(dict.fromkeys(v for c in configs for v in c.get(key, [])))
    doc["config"]["actionbench"] = ", ".join(dict.fromkeys(str(c.get("actionbench", "off")) for c in configs))
    doc["sequences"], doc["runs"] = {}, []
    for d in docs:
        for name, facts in d["sequences"].items():
            local = Path(args.cache) / name
            doc["sequences"][name] = {**facts, "path": str(local) if local.is_dir() else facts["path"]}
        doc["runs"] += d["runs"]
    doc["sequences"] = dict(sorted(doc["sequences"].items()))
    if args.command:
        doc["command"] = args.command
    if args.note:
        doc["note"] = args.note
    (out / "results.json").write_text(json.dumps(_record(doc), separators=(",", ":"), default=float))
    shutil.rmtree(out / ".merge", ignore_errors=True)
    # every part drew its own error-over-time plot of a sequence; draw it again from the merged
    # per-frame numbers, so it shows every mode's run
    for name in doc["sequences"]:
        if any(r["sequence"] == name for r in doc["runs"]):
            plot_error_over_time(doc, name, out / "plots" / f"{name}__error.png")
    print(write_report(doc, out, plots="auto", jobs=args.jobs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--subset", default="real")
    p.add_argument("--cache", default=os.environ.get("AFV_BENCH_CACHE", ".bench_cache"))
    p.add_argument("--dest", default="out/bench_device")
    p.add_argument("--wheels", help="folder of wheels the device lacks (e.g. trimesh for Python 3.12)")
    p.add_argument("--only", help="comma-separated sequence names")
    p.add_argument("--max-mb", type=float, default=48.0, help="size of one part (the device call carries at most 64 MiB)")
    p.set_defaults(func=pack)
    r = sub.add_parser("run")
    r.add_argument("--pack", required=True)
    r.add_argument("--work", default="/tmp/afv_bench")
    r.add_argument("--engines", default="static,rigid,articulated")
    r.add_argument("--camera", default="known")
    r.add_argument("--rig", default="none")
    r.add_argument("--oracle", action="store_true")
    r.add_argument("--device", default="cpu")
    r.add_argument("--actionbench", default="fast")
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    r.add_argument("--option", "-o", action="append", default=[], help="engine option engine.key=value (repeatable), as afv bench")
    r.add_argument("--no-report", action="store_true")
    r.add_argument("--out", default=os.environ.get("OUT", "out/bench_device_result"))
    r.set_defaults(func=run)
    m = sub.add_parser("merge")
    m.add_argument("--parts", nargs="*", default=[], help="folders holding a part's *_results.tar.gz (or results.json + plots/)")
    m.add_argument("--logs", nargs="*", help="run logs whose results.json was lost (bench: lines)")
    m.add_argument("--cache", default=os.environ.get("AFV_BENCH_CACHE", ".bench_cache"))
    m.add_argument("--out", required=True)
    m.add_argument("--command", default="")
    m.add_argument("--note", default="")
    m.add_argument("--jobs", type=int, default=1)
    m.set_defaults(func=merge)
    a = ap.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()

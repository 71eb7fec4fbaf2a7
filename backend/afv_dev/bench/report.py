"""report.md and PNG plots from a results.json (matplotlib Agg, afv.preview for mesh images)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from afv.camera import Camera  # noqa: E402
from afv.preview import shade_mesh  # noqa: E402
from .runner import run_key, run_label  # noqa: E402
from .sequences import load_sequence  # noqa: E402


def render_mesh(positions: np.ndarray, faces: np.ndarray, camera: Camera, t: int = 0, colors: np.ndarray | None = None) -> np.ndarray:
    """positions (N, 3) mesh coords -> (H, W, 3) uint8 Lambert-shaded image on white.

    colors: (N, 3) per-vertex RGB in [0, 1] (default light grey)."""
    M = camera.pose(t)
    img, mask = shade_mesh(positions @ M[:3, :3].T + M[:3, 3], faces, camera.K, camera.image_size,
                           colour=(0.75, 0.75, 0.75), vertex_colours=colors)
    img[~mask] = 1.0
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _crop_box(images: list[np.ndarray], margin: float = 0.08) -> tuple[slice, slice]:
    """Rows/columns holding anything but white in any of images (H, W, 3) uint8, plus a margin."""
    ink = np.zeros(images[0].shape[:2], bool)
    for im in images:
        ink |= (im < 250).any(-1)
    if not ink.any():
        return slice(None), slice(None)
    ys, xs = np.nonzero(ink)
    H, W = ink.shape
    m = int(margin * max(np.ptp(ys), np.ptp(xs)) + 2)
    return slice(max(ys.min() - m, 0), min(ys.max() + m + 1, H)), slice(max(xs.min() - m, 0), min(xs.max() + m + 1, W))


def _colormap(values: np.ndarray, vmax: float) -> np.ndarray:
    return plt.get_cmap("inferno")(np.clip(values / max(vmax, 1e-12), 0, 1))[:, :3]


def _ok_runs(doc: dict, seq: str) -> list[dict]:
    return [r for r in doc["runs"] if r["sequence"] == seq and r["status"] == "ok"]


def _label(r: dict) -> str:
    return run_label(r)


def _tag(r: dict) -> str:
    """File-name tag of a run."""
    return "_".join([r["engine"], r["camera"], r["variant"]] + (["rig"] if r.get("rig", "none") == "given" else [])
                    + (["oracle"] if r.get("oracle") else []))


def plot_error_over_time(doc: dict, seq: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 2.8), dpi=80)
    for r in _ok_runs(doc, seq):
        if "per_frame_mean" not in r["metrics"]:  # runs known only from a log line
            continue
        style = "--" if r["engine"] == "static" else "-"
        ax.plot(100 * np.asarray(r["metrics"]["per_frame_mean"]), style, label=_label(r))
    ax.set_xlabel("frame")
    ax.set_ylabel("mean vertex error (% of bbox diag.)")
    ax.set_title(seq, fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_small(fig, path)


def _save_small(fig, path: Path) -> None:
    """PNG with a 128-colour palette (report PNGs stay small; Pillow comes with matplotlib)."""
    from PIL import Image

    fig.savefig(path)
    plt.close(fig)
    with Image.open(path) as im:
        q = im.convert("RGB").quantize(colors=128)
    q.save(path, optimize=True)


def _prediction(out: Path, seq, run: dict) -> np.ndarray:
    return seq.mesh.vertices[None] + np.load(out / run["pred_file"])["displacements"]


def heatmap(doc: dict, seq_name: str, run: dict, out: Path) -> Path:
    """Worst-frame per-vertex error of `run`, drawn on its prediction."""
    seq = load_sequence(doc["sequences"][seq_name]["path"])
    pred = _prediction(out, seq, run)
    gt = seq.positions
    diag = float(np.linalg.norm(gt[0].max(0) - gt[0].min(0)))
    err = np.linalg.norm(pred - gt, axis=-1) / diag
    w = int(run["metrics"]["worst_frame"])
    vmax = max(float(np.percentile(err, 99)), 1e-6)
    heat = render_mesh(pred[w], seq.mesh.faces, seq.camera, w, _colormap(err[w], vmax))
    ys, xs = _crop_box([heat])
    heat = heat[ys, xs]
    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=80)
    ax.imshow(heat)
    ax.set_axis_off()
    ax.set_title(f"{seq_name}\n{_label(run)} frame {w}", fontsize=7)
    sm = plt.cm.ScalarMappable(cmap="inferno", norm=plt.Normalize(0, 100 * vmax))
    fig.colorbar(sm, ax=ax, fraction=0.046, label="error (% diag.)")
    fig.tight_layout()
    hp = out / "plots" / f"{seq_name}__{_tag(run)}__heat.png"
    _save_small(fig, hp)
    return hp


def contact_sheet(doc: dict, seq_name: str, runs: list[dict], out: Path, n_cols: int = 5) -> Path:
    """Rows: the input video, the ground truth, then each run's prediction, at n_cols frames."""
    seq = load_sequence(doc["sequences"][seq_name]["path"])
    variant = runs[0]["variant"] if runs else "frames"
    frames = seq.read_frames(variant)
    idx = np.unique(np.linspace(0, seq.n_frames - 1, n_cols).round().astype(int))
    sources = [("video", None), ("ground truth", seq.positions)] + [(_label(r), _prediction(out, seq, r)) for r in runs]
    tiles = []
    for name, pos in sources:
        row = []
        for t in idx:
            if pos is None:
                f = frames[t]
                if f.shape[2] == 4:
                    a = f[..., 3:4] / 255.0
                    f = (f[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
                row.append(f)
            else:
                row.append(render_mesh(pos[t], seq.mesh.faces, seq.camera, t))
        tiles.append(row)
    ys, xs = _crop_box([im for row in tiles for im in row])  # one crop for all: motion stays comparable
    sheet = np.concatenate([np.concatenate([im[ys, xs] for im in row], 1) for row in tiles], 0)
    H, W = tiles[0][0][ys, xs].shape[:2]
    aspect = W / max(H, 1)
    fig, ax = plt.subplots(figsize=(1.4 * aspect * len(idx) + 1.2, 1.4 * len(sources) + 0.4), dpi=80)
    ax.imshow(sheet)
    ax.set_yticks([(i + 0.5) * H for i in range(len(sources))], [n for n, _ in sources], fontsize=6)
    ax.set_xticks([(i + 0.5) * W for i in range(len(idx))], [f"t={t}" for t in idx], fontsize=6)
    ax.set_title(seq_name, fontsize=7)
    fig.tight_layout()
    sp = out / "plots" / f"{seq_name}__sheet.png"
    _save_small(fig, sp)
    return sp


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}"


def _num(x, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _mean_err(r: dict) -> float:
    return float(r["metrics"]["position"]["mean"])


def _static_of(doc: dict, r: dict) -> dict | None:
    """The static run of the same sequence (static is the same for every camera and rig mode)."""
    return next((s for s in doc["runs"] if s["sequence"] == r["sequence"] and s["engine"] == "static" and s["status"] == "ok"
                 and s["variant"] == r["variant"]), None)


def headline(doc: dict) -> list[str]:
    """Markdown lines: per mode (camera, input, rig, oracle) and engine, the means over sequences,
    the ratio to the still mesh's mean on the same sequences and how many sequences each engine
    beats the still mesh on; then the same split by sampling (whole clip / consecutive frames)."""
    modes: dict[tuple, dict[str, list]] = {}
    for r in doc["runs"]:
        e, c, v, rig, orc = run_key(r)
        modes.setdefault((c, v, rig, orc), {}).setdefault(e, []).append(r)
    lines = ["## Headline: means over sequences, per mode", "",
             "`vs still`: the engine's mean divided by the still mesh's mean on the same sequences; `beats still`: sequences "
             "where its mean error is lower than the still mesh's; `failed`: runs that errored (not averaged in).", "",
             "| camera | input | rig | oracle | engine | sequences | mean % | vs still | beats still | worst seq. % | p95 % | IoU | CD-M | failed | time s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = list(doc.get("config", {}).get("engines", []))
    rank = lambda e: order.index(e) if e in order else len(order)  # noqa: E731
    modes = {k: dict(sorted(v.items(), key=lambda kv: rank(kv[0]))) for k, v in modes.items()}
    for (c, v, rig, orc), by_engine in modes.items():
        for e, rs in by_engine.items():
            ok = [r for r in rs if r["status"] == "ok"]
            failed = sum(r["status"] == "error" for r in rs)
            if not ok:
                if failed:
                    lines.append(f"| {c} | {v} | {rig} | {'yes' if orc else 'no'} | {e} | 0 | – | – | – | – | – | – | – | {failed} | – |")
                continue
            pairs = [(r, _static_of(doc, r)) for r in ok]
            with_static = [(r, s) for r, s in pairs if s is not None]
            ratio = (np.mean([_mean_err(r) for r, _ in with_static]) / max(np.mean([_mean_err(s) for _, s in with_static]), 1e-12)
                     if with_static else float("nan"))
            beats = sum(_mean_err(r) < _mean_err(s) for r, s in with_static)
            cdm = [r["actionbench"]["cd_m"] for r in ok if r["actionbench"]]
            worst = max(ok, key=_mean_err)
            lines.append(
                f"| {c} | {v} | {rig} | {'yes' if orc else 'no'} | {e} | {len(ok)} | {_pct(np.mean([_mean_err(r) for r in ok]))} | "
                f"{ratio:.2f} | {beats}/{len(with_static)} | {_pct(_mean_err(worst))} ({worst['sequence']}) | "
                f"{_pct(np.mean([r['metrics']['position']['p95'] for r in ok]))} | {np.mean([r['metrics']['silhouette_iou'] for r in ok]):.3f} | "
                f"{(f'{np.mean(cdm):.3f}' if cdm else '–')} | {failed} | {np.mean([r['wall_s'] for r in ok]):.1f} |")
    lines.append("")
    groups = _sampling_groups(doc)
    if len(groups) > 1:
        lines += ["Mean % by sampling and view (same modes):", "",
                  "| camera | input | rig | oracle | engine | " + " | ".join(groups) + " |", "|---" * (5 + len(groups)) + "|"]
        for (c, v, rig, orc), by_engine in modes.items():
            for e, rs in by_engine.items():
                cells = []
                for g, names in groups.items():
                    vals = [_mean_err(r) for r in rs if r["status"] == "ok" and r["sequence"] in names]
                    cells.append(f"{_pct(np.mean(vals))} ({len(vals)})" if vals else "–")
                lines.append(f"| {c} | {v} | {rig} | {'yes' if orc else 'no'} | {e} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _sampling_groups(doc: dict) -> dict[str, set]:
    """Sequence names grouped by '<sampling>, <view>' (e.g. 'whole clip, 16 f, 3q')."""
    out: dict[str, set] = {}
    for name, f in doc["sequences"].items():
        if not f.get("sampling"):
            continue
        smp = "whole clip" if f["sampling"] == "whole" else "consecutive"
        view = {"three_quarter": "3q"}.get(f.get("view"), f.get("view"))
        out.setdefault(f"{smp}, {f.get('n_frames')} f, {view}", set()).add(name)
    return dict(sorted(out.items()))


def _sequence_images(doc: dict, name: str, out: str, focus: str, plots: str) -> list[str]:
    """Markdown image links of one sequence, drawing them unless plots == "existing"."""
    out = Path(out)
    if plots == "auto":  # draw where every run's numbers and prediction are here, else link what exists
        ok = _ok_runs(doc, name)
        drawable = all("per_frame_mean" in r["metrics"] and r.get("pred_file") and (out / r["pred_file"]).is_file() for r in ok)
        plots = "render" if ok and drawable else "existing"
    if plots == "existing":
        imgs = [f"![{kind}](plots/{f.name})" for kind, f in (("error over time", out / "plots" / f"{name}__error.png"),
                                                             ("video, GT, predictions", out / "plots" / f"{name}__sheet.png"))
                if f.is_file()]
        return imgs + [f"![worst-frame error](plots/{f.name})" for f in sorted((out / "plots").glob(f"{name}__*__heat.png"))]
    ep = out / "plots" / f"{name}__error.png"
    plot_error_over_time(doc, name, ep)
    imgs = [f"![error over time](plots/{ep.name})"]
    ok = _ok_runs(doc, name)
    shown = [r for r in ok if r["engine"] != "static" and run_key(r)[1:] == run_key(ok[0])[1:]] if ok else []
    if shown:
        imgs.append(f"![video, GT, predictions](plots/{contact_sheet(doc, name, shown, out).name})")
    fr = [r for r in ok if r["engine"] == focus]
    if fr:
        imgs.append(f"![worst-frame error](plots/{heatmap(doc, name, fr[0], out).name})")
    return imgs


def _images_in_parallel(doc: dict, out: Path, focus: str, jobs: int, plots: str = "render") -> dict[str, list[str]]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    names = [n for n in doc["sequences"] if any(r["sequence"] == n for r in doc["runs"])]
    with ProcessPoolExecutor(jobs, mp.get_context("spawn"), initializer=_one_thread) as pool:
        return dict(zip(names, pool.map(_sequence_images, [doc] * len(names), names, [str(out)] * len(names),
                                        [focus] * len(names), [plots] * len(names))))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def write_report(doc: dict, out: str | Path, focus_engine: str | None = None, plots: str = "render", jobs: int = 1) -> Path:
    """Write out/report.md and out/plots/*.png; focus_engine gets worst-frame heat-maps
    (default: the last engine of the run that is not 'static'). Every sequence gets its
    error-over-time plot and one contact sheet (video, GT, every non-static engine).
    plots="existing": draw nothing, link the PNGs already in out/plots (results made elsewhere,
    whose predictions did not travel back); "auto": draw the sequences whose runs all have their
    predictions under out/, link the rest. jobs > 1 draws sequences in that many processes."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    engines = doc["config"]["engines"]
    focus = focus_engine or next((e for e in reversed(engines) if e != "static"), engines[-1])
    cfg = doc["config"]
    lines = ["# Benchmark report", ""]
    if doc.get("command"):
        lines += [f"Command: `{doc['command']}`" + (f" ({doc['note']})" if doc.get("note") else ""), ""]
    lines += [
        f"Engines: {', '.join(engines)}; cameras: {', '.join(cfg['cameras'])}; inputs: {', '.join(cfg['variants'])}; "
        f"rig: {', '.join(cfg.get('rigs', ['none']))}; oracle evidence: {'yes' if cfg.get('oracle') else 'no'}; "
        f"ActionBench metrics: {cfg['actionbench']}; device: {cfg['device']}.",
        "",
        "Errors are per-vertex L2 distances in percent of the ground-truth first-frame bounding-box diagonal, over frames 1..T-1 "
        "(frame 0 is the given rest pose). `vis`/`occ`: vertices visible / hidden in the GT pose. `<5%`: fraction of vertex-frames within 5 %. "
        "Jitter: acceleration error (% diag. per frame²). IoU: silhouette of the prediction vs the mask. CD-3D/CD-4D/CD-M: ActionBench "
        "chamfer metrics on shapes normalised to [-1, 1] (see docs/benchmark.md). **Bold** in the overview: worse than the still mesh.",
        "",
    ]
    intro_len = len(lines)
    images = _images_in_parallel(doc, out, focus, jobs, plots) if jobs > 1 and plots != "existing" else {}
    summary: dict[tuple, list] = {}
    for name, facts in doc["sequences"].items():
        runs = [r for r in doc["runs"] if r["sequence"] == name]
        if not runs:
            continue
        extra = ", rigged" if facts.get("has_rig") else ""
        lines += [f"## {name}", "", f"source `{facts.get('source')}`, {facts.get('n_frames')} frames"
                  + (f" ({facts['sampling']} sampling, {facts.get('fps', 0):.2f} fps)" if facts.get("sampling") else "")
                  + f", {facts.get('n_vertices')} vertices, {facts.get('image_size')} px{extra}", ""]
        lines += ["| engine | camera | input | rig | mean % | median % | p95 % | vis % | occ % | disp. mean % | <5% | jitter % | IoU | CD-3D | CD-4D | CD-M | time s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            rigcell = r.get("rig", "none") + (" +oracle" if r.get("oracle") else "")
            if r["status"] != "ok":
                lines.append(f"| {r['engine']} | {r['camera']} | {r['variant']} | {rigcell} | {r['status']}: {r['message'].splitlines()[0][:80] if r['message'] else ''} |" + " |" * 12)
                continue
            m, ab = r["metrics"], r["actionbench"]
            lines.append(
                f"| {r['engine']} | {r['camera']} | {r['variant']} | {rigcell} | {_pct(m['position']['mean'])} | {_pct(m['position'].get('median'))} | {_pct(m['position']['p95'])} | "
                f"{_pct(m.get('visible', {}).get('mean'))} | {_pct(m.get('occluded', {}).get('mean'))} | {_pct(m.get('displacement', {}).get('mean'))} | "
                f"{_num(m['position'].get('within_5pct'), 2)} | {_pct(m.get('jitter'))} | {m['silhouette_iou']:.3f} | "
                + " | ".join(_num(ab.get(k), 4) for k in ("cd_3d", "cd_4d", "cd_m"))
                + f" | {r['wall_s']:.2f} |"
            )
            summary.setdefault(run_key(r), []).append(r)
        imgs = images[name] if name in images else _sequence_images(doc, name, str(out), focus, plots)
        lines += ["", " ".join(imgs), ""]
    lines += ["## Summary (mean over sequences)", "", "| engine | camera | input | rig | oracle | sequences | mean % | p95 % | IoU | CD-M | time s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (e, c, v, rig, orc), rs in summary.items():
        cdm = [r["actionbench"]["cd_m"] for r in rs if r["actionbench"]]
        lines.append(
            f"| {e} | {c} | {v} | {rig} | {'yes' if orc else 'no'} | {len(rs)} | {_pct(np.mean([r['metrics']['position']['mean'] for r in rs]))} | "
            f"{_pct(np.mean([r['metrics']['position']['p95'] for r in rs]))} | {np.mean([r['metrics']['silhouette_iou'] for r in rs]):.3f} | "
            f"{(f'{np.mean(cdm):.4f}' if cdm else '–')} | {np.mean([r['wall_s'] for r in rs]):.2f} |"
        )
    lines.append("")
    lines[intro_len:intro_len] = headline(doc) + overview_table(doc)
    p = out / "report.md"
    p.write_text("\n".join(lines))
    return p


def overview_table(doc: dict) -> list[str]:
    """Markdown lines: one row per sequence, one column per engine/camera/input/rig, mean error %.

    Failed or skipped runs show their status, so averages never hide a missing sequence; a
    value worse than the still mesh's on the same sequence is bold.
    """
    cols: list[tuple] = []
    for r in doc["runs"]:
        if run_key(r) not in cols:
            cols.append(run_key(r))
    name = lambda k: " ".join([k[0], k[1], k[2]] + (["rig"] if k[3] == "given" else []) + (["oracle"] if k[4] else []))  # noqa: E731
    head = "| sequence | " + " | ".join(name(k) for k in cols) + " |"
    out = ["## Overview: mean per-vertex error, % of bbox diagonal", "", head, "|---" * (len(cols) + 1) + "|"]
    for seq in doc["sequences"]:
        cells = []
        for k in cols:
            r = next((r for r in doc["runs"] if r["sequence"] == seq and run_key(r) == k), None)
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                st = _static_of(doc, r)
                worse = r["engine"] != "static" and st is not None and _mean_err(r) > _mean_err(st)
                cells.append(f"**{_pct(_mean_err(r))}**" if worse else _pct(_mean_err(r)))
            else:
                cells.append(r["status"])
        out.append(f"| {seq} | " + " | ".join(cells) + " |")
    return out + [""]


def load_results(out: str | Path) -> dict:
    return json.loads((Path(out) / "results.json").read_text())

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
from .sequences import load_sequence  # noqa: E402


def render_mesh(positions: np.ndarray, faces: np.ndarray, camera: Camera, t: int = 0, colors: np.ndarray | None = None) -> np.ndarray:
    """positions (N, 3) mesh coords -> (H, W, 3) uint8 Lambert-shaded image on white.

    colors: (N, 3) per-vertex RGB in [0, 1] (default light grey)."""
    M = camera.pose(t)
    img, mask = shade_mesh(positions @ M[:3, :3].T + M[:3, 3], faces, camera.K, camera.image_size,
                           colour=(0.75, 0.75, 0.75), vertex_colours=colors)
    img[~mask] = 1.0
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _colormap(values: np.ndarray, vmax: float) -> np.ndarray:
    return plt.get_cmap("inferno")(np.clip(values / max(vmax, 1e-12), 0, 1))[:, :3]


def _ok_runs(doc: dict, seq: str) -> list[dict]:
    return [r for r in doc["runs"] if r["sequence"] == seq and r["status"] == "ok"]


def _label(r: dict) -> str:
    return f"{r['engine']}/{r['camera']}/{r['variant']}"


def plot_error_over_time(doc: dict, seq: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    for r in _ok_runs(doc, seq):
        ax.plot(100 * np.asarray(r["metrics"]["per_frame_mean"]), label=_label(r))
    ax.set_xlabel("frame")
    ax.set_ylabel("mean vertex error (% of bbox diag.)")
    ax.set_title(seq, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heatmap_and_sheet(doc: dict, seq_name: str, run: dict, out: Path, n_cols: int = 4) -> tuple[Path, Path]:
    """Worst-frame error heat-map of `run` and a contact sheet video | GT | prediction."""
    seq = load_sequence(doc["sequences"][seq_name]["path"])
    disp = np.load(out / run["pred_file"])["displacements"]
    pred = seq.mesh.vertices[None] + disp
    gt = seq.positions
    diag = float(np.linalg.norm(gt[0].max(0) - gt[0].min(0)))
    err = np.linalg.norm(pred - gt, axis=-1) / diag
    w = int(run["metrics"]["worst_frame"])
    vmax = max(float(np.percentile(err, 99)), 1e-6)
    heat = render_mesh(pred[w], seq.mesh.faces, seq.camera, w, _colormap(err[w], vmax))
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(heat)
    ax.set_axis_off()
    ax.set_title(f"{seq_name}\n{_label(run)} frame {w}", fontsize=8)
    sm = plt.cm.ScalarMappable(cmap="inferno", norm=plt.Normalize(0, 100 * vmax))
    fig.colorbar(sm, ax=ax, fraction=0.046, label="error (% diag.)")
    fig.tight_layout()
    hp = out / "plots" / f"{seq_name}__{run['engine']}_{run['camera']}_{run['variant']}__heat.png"
    fig.savefig(hp)
    plt.close(fig)
    frames = seq.read_frames(run["variant"])
    idx = np.unique(np.linspace(0, seq.n_frames - 1, n_cols).round().astype(int))
    rows = []
    for src in ("video", "gt", "pred"):
        row = []
        for t in idx:
            if src == "video":
                f = frames[t]
                if f.shape[2] == 4:
                    a = f[..., 3:4] / 255.0
                    f = (f[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
                row.append(f)
            else:
                row.append(render_mesh((gt if src == "gt" else pred)[t], seq.mesh.faces, seq.camera, t))
        rows.append(np.concatenate(row, 1))
    sheet = np.concatenate(rows, 0)
    fig, ax = plt.subplots(figsize=(1.6 * len(idx), 4.8), dpi=100)
    ax.imshow(sheet)
    H = frames.shape[1]
    ax.set_yticks([H / 2, 1.5 * H, 2.5 * H], ["video", "ground truth", "prediction"], fontsize=8)
    ax.set_xticks([(i + 0.5) * frames.shape[2] for i in range(len(idx))], [f"t={t}" for t in idx], fontsize=7)
    ax.set_title(f"{seq_name}: {_label(run)}", fontsize=8)
    fig.tight_layout()
    sp = out / "plots" / f"{seq_name}__{run['engine']}_{run['camera']}_{run['variant']}__sheet.png"
    fig.savefig(sp)
    plt.close(fig)
    return hp, sp


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}"


def write_report(doc: dict, out: str | Path, focus_engine: str | None = None) -> Path:
    """Write out/report.md and out/plots/*.png; focus_engine gets heat-maps and sheets
    (default: the last engine of the run that is not 'static')."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    engines = doc["config"]["engines"]
    focus = focus_engine or next((e for e in reversed(engines) if e != "static"), engines[-1])
    lines = ["# Benchmark report", ""]
    if doc.get("command"):
        lines += [f"Command: `{doc['command']}`" + (f" ({doc['note']})" if doc.get("note") else ""), ""]
    lines += [
        f"Engines: {', '.join(engines)}; cameras: {', '.join(doc['config']['cameras'])}; inputs: {', '.join(doc['config']['variants'])}; "
        f"ActionBench metrics: {doc['config']['actionbench']}; device: {doc['config']['device']}.",
        "",
        "Errors are per-vertex L2 distances in percent of the ground-truth first-frame bounding-box diagonal, over frames 1..T-1 "
        "(frame 0 is the given rest pose). `vis`/`occ`: vertices visible / hidden in the GT pose. `<5%`: fraction of vertex-frames within 5 %. "
        "Jitter: acceleration error (% diag. per frame²). IoU: silhouette of the prediction vs the mask. CD-3D/CD-4D/CD-M: ActionBench "
        "chamfer metrics on shapes normalised to [-1, 1] (see docs/benchmark.md).",
        "",
    ]
    intro_len = len(lines)
    summary: dict[tuple, list] = {}
    for name, facts in doc["sequences"].items():
        runs = [r for r in doc["runs"] if r["sequence"] == name]
        if not runs:
            continue
        lines += [f"## {name}", "", f"source `{facts.get('source')}`, {facts.get('n_frames')} frames, {facts.get('n_vertices')} vertices, {facts.get('image_size')} px", ""]
        lines += ["| engine | camera | input | mean % | median % | p95 % | vis % | occ % | disp. mean % | <5% | jitter % | IoU | CD-3D | CD-4D | CD-M | time s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            if r["status"] != "ok":
                lines.append(f"| {r['engine']} | {r['camera']} | {r['variant']} | {r['status']}: {r['message'].splitlines()[0][:80]} |" + " |" * 12)
                continue
            m, ab = r["metrics"], r["actionbench"]
            lines.append(
                f"| {r['engine']} | {r['camera']} | {r['variant']} | {_pct(m['position']['mean'])} | {_pct(m['position']['median'])} | {_pct(m['position']['p95'])} | "
                f"{_pct(m['visible'].get('mean'))} | {_pct(m['occluded'].get('mean'))} | {_pct(m['displacement']['mean'])} | {m['position']['within_5pct']:.2f} | "
                f"{_pct(m['jitter'])} | {m['silhouette_iou']:.3f} | "
                + (f"{ab['cd_3d']:.4f} | {ab['cd_4d']:.4f} | {ab['cd_m']:.4f}" if ab else "– | – | –")
                + f" | {r['wall_s']:.2f} |"
            )
            summary.setdefault((r["engine"], r["camera"], r["variant"]), []).append(r)
        ep = out / "plots" / f"{name}__error.png"
        plot_error_over_time(doc, name, ep)
        lines += ["", f"![error over time](plots/{ep.name})"]
        fr = [r for r in _ok_runs(doc, name) if r["engine"] == focus]
        if fr:
            hp, sp = heatmap_and_sheet(doc, name, fr[0], out)
            lines += [f"![worst-frame error]({'plots/' + hp.name}) ![video | GT | prediction]({'plots/' + sp.name})"]
        lines.append("")
    lines += ["## Summary (mean over sequences)", "", "| engine | camera | input | sequences | mean % | p95 % | IoU | CD-M | time s |", "|---|---|---|---|---|---|---|---|---|"]
    for (e, c, v), rs in summary.items():
        cdm = [r["actionbench"]["cd_m"] for r in rs if r["actionbench"]]
        lines.append(
            f"| {e} | {c} | {v} | {len(rs)} | {_pct(np.mean([r['metrics']['position']['mean'] for r in rs]))} | "
            f"{_pct(np.mean([r['metrics']['position']['p95'] for r in rs]))} | {np.mean([r['metrics']['silhouette_iou'] for r in rs]):.3f} | "
            f"{(f'{np.mean(cdm):.4f}' if cdm else '–')} | {np.mean([r['wall_s'] for r in rs]):.2f} |"
        )
    lines.append("")
    lines[intro_len:intro_len] = overview_table(doc)
    p = out / "report.md"
    p.write_text("\n".join(lines))
    return p


def overview_table(doc: dict) -> list[str]:
    """Markdown lines: one row per sequence, one column per engine/camera/input, mean error %.

    Failed or skipped runs show their status, so averages never hide a missing sequence.
    """
    cols: list[tuple] = []
    for r in doc["runs"]:
        key = (r["engine"], r["camera"], r["variant"])
        if key not in cols:
            cols.append(key)
    head = "| sequence | " + " | ".join(f"{e} {c} {v}" for e, c, v in cols) + " |"
    out = ["## Overview: mean per-vertex error, % of bbox diagonal", "", head, "|---" * (len(cols) + 1) + "|"]
    for name in doc["sequences"]:
        cells = []
        for e, c, v in cols:
            r = next((r for r in doc["runs"] if r["sequence"] == name and (r["engine"], r["camera"], r["variant"]) == (e, c, v)), None)
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                cells.append(_pct(r["metrics"]["position"]["mean"]))
            else:
                cells.append(r["status"])
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]


def load_results(out: str | Path) -> dict:
    return json.loads((Path(out) / "results.json").read_text())

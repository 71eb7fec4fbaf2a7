"""Where the time of `afv animate --engine actionmesh -o fast=true` goes on a GPU: prints numbers, asserts nothing.

  1. full-size random weights (bf16 networks, fp32 DINOv2) and the 16-frame / 20k-vertex inputs of
     bench_actionmesh_gpu.py;
  2. one denoiser forward at the real shape (guidance batch 2 x 16 frames x 2049 tokens) and one
     autoencoder target, with the current layers (the fused Triton norm + rotary kernel where
     available), with the current eager passes, and with the earlier eager float32 norm / rotary /
     LayerNorm passes (kept here for the comparison), the outputs' differences, and a kernel
     profile (torch.profiler) of the current forward;
  3. the CLI call end to end, three times (first on a fresh machine, before anything compiled Triton's
     kernel): the wall time split into interpreter start, imports, the pipeline's stages, the
     networks' loading (DINOv2's import apart), writing and exit;
  4. the import tree of the modules the call needs (python -X importtime);
  5. `--server`: the add-on's path instead of the CLI: `afv serve` launched as the add-on launches
     it, then jobs submitted over HTTP (mesh uploaded, video by local path, status polled every
     0.25 s like the add-on, tracks downloaded): one at once after the ready line, one after the
     worker's warm-up, one more on the warm server.

Usage: python benchmarks/speed_actionmesh_gpu.py OUT_DIR [--no-profile] [--lowmem] [--server] [--only-server]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_actionmesh_gpu import _env, log, make_inputs  # noqa: E402


# ---- the earlier eager float32 passes, for the comparison only ----------------------------------
def _old_norm_rope(x, norm, rope):
    from afv.engines.actionmesh.layers import _rope32

    if norm is None and rope is None:
        return x
    xf = x.float()
    if norm is not None:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.float()
    if rope is not None:
        xf = _rope32(xf, *rope)
    return xf.to(x.dtype)


def _old_layer_norm(self, x):
    w = self.weight.float() if self.weight is not None else None
    b = self.bias.float() if self.bias is not None else None
    return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class _OldLayers:
    """Context: the layers module with the earlier norm / rotary / LayerNorm code."""

    def __enter__(self):
        from afv.engines.actionmesh import layers

        self.saved = layers.norm_rope, layers.LayerNorm32.forward
        layers.norm_rope, layers.LayerNorm32.forward = _old_norm_rope, _old_layer_norm

    def __exit__(self, *exc):
        from afv.engines.actionmesh import layers

        layers.norm_rope, layers.LayerNorm32.forward = self.saved


class _NoFused:
    """Context: the current layers without the Triton kernel (their eager passes)."""

    def __enter__(self):
        from afv.engines.actionmesh import layers

        self.saved = layers._FUSED
        layers._FUSED = False

    def __exit__(self, *exc):
        from afv.engines.actionmesh import layers

        layers._FUSED = self.saved


FIRST_MS: dict[str, float] = {}


def _time_ms(fn, reps: int = 2, label: str = "") -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()  # warm-up (kernel selection, cuDNN plans, Triton's compile)
    torch.cuda.synchronize()
    FIRST_MS[label] = round((time.perf_counter() - t0) * 1e3, 1)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return min(times), out


def _kernel_table(fn, path: Path, rows: int = 30) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    path.write_text(ka.table(sort_by="self_cuda_time_total", row_limit=80))
    total = sum(e.self_device_time_total for e in ka)
    top = sorted(ka, key=lambda e: -e.self_device_time_total)[:rows]
    return [{"op": e.key[:90], "calls": e.count, "ms": round(e.self_device_time_total / 1e3, 2),
             "share": round(e.self_device_time_total / max(total, 1), 3)} for e in top]


def dinov2_loading(out: Path, weights: Path) -> None:
    """DINOv2 loading with transformers already imported: as the engine does (CPU, then to the device)
    and straight to the device (device_map)."""
    from transformers import Dinov2Model

    from afv.engines.actionmesh.weights import load_dinov2

    res = {}
    for label in ("engine", "device_map", "engine_again"):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            if label == "device_map":
                m = Dinov2Model.from_pretrained(str(weights / "dinov2"), dtype=torch.float32, device_map="cuda")
            else:
                m = load_dinov2(weights / "dinov2", "cuda", torch.float32)
            torch.cuda.synchronize()
            res[label + "_s"] = round(time.perf_counter() - t0, 2)
        except Exception as exc:
            res[label + "_s"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        m = None
        torch.cuda.empty_cache()
    log(out, "dinov2_load_transformers_imported", res)


def profile_networks(out: Path) -> None:
    from afv.engines.actionmesh.autoencoder import ActionMeshAutoencoder
    from afv.engines.actionmesh.denoiser import ActionMeshDenoiser
    from afv.engines.actionmesh.random_weights import init_like_fixtures

    dev = "cuda"
    with torch.device(dev):
        den = init_like_fixtures(ActionMeshDenoiser(), 0).to(torch.bfloat16).eval().requires_grad_(False)
    g = torch.Generator(device=dev).manual_seed(1)
    B, T, N = 2, 16, 2048
    lat = torch.randn(B, T, N, 64, generator=g, device=dev)
    ctx = torch.randn(B, T, 257, 1024, generator=g, device=dev)
    ctx[0] = 0
    fs = torch.arange(T, device=dev, dtype=torch.float32)[None].expand(B, -1)
    mask = torch.zeros(B, T, device=dev)
    mask[:, 0] = 1
    t = torch.tensor([908.0, 908.0], device=dev)
    res = {}
    with torch.inference_mode():
        fwd = lambda: den(lat, ctx, fs, t, mask)  # noqa: E731
        res["new_ms"], new = _time_ms(fwd, label="denoiser_new")
        with _NoFused():
            res["eager_ms"], eager = _time_ms(fwd, label="denoiser_eager")
        with _OldLayers():
            res["old_ms"], old = _time_ms(fwd, label="denoiser_old")
        res["first_call_ms"] = dict(FIRST_MS)
        d = (new.float() - old.float())
        res["new_vs_old"] = {"rel_rms": float(d.norm() / old.float().norm()), "max_abs": float(d.abs().max()),
                             "out_abs_max": float(old.float().abs().max())}
        d = (eager.float() - old.float())
        res["eager_vs_old"] = {"rel_rms": float(d.norm() / old.float().norm()), "max_abs": float(d.abs().max())}
        res["kernels"] = _kernel_table(fwd, out / "prof_denoiser.txt")
    log(out, "denoiser_forward_B2_T16", res)
    del den, new, old, eager
    torch.cuda.empty_cache()

    with torch.device(dev):
        ae = init_like_fixtures(ActionMeshAutoencoder(), 1).to(torch.bfloat16).eval().requires_grad_(False)
    for part in (ae.blocks[-1], ae.proj_query, ae.norm_out, ae.proj_out):
        part.float()
    V = 20101
    lat = torch.randn(1, T, N, 64, generator=g, device=dev)
    fsa = torch.arange(T, device=dev, dtype=torch.float32)[None]
    q = torch.randn(1, V, 6, generator=g, device=dev)
    alphas = (fsa[:, 1:2] / 15)  # one target
    res = {}
    with torch.inference_mode():
        fwd = lambda: ae(lat, fsa, fsa[:, 0] * 0, alphas, q)  # noqa: E731
        res["new_ms"], new = _time_ms(fwd, label="ae_new")
        with _NoFused():
            res["eager_ms"], eager = _time_ms(fwd, label="ae_eager")
        with _OldLayers():
            res["old_ms"], old = _time_ms(fwd, label="ae_old")
        res["first_call_ms"] = {k: v for k, v in FIRST_MS.items() if k.startswith("ae")}
        res["new_vs_old"] = {"max_abs": float((new.float() - old.float()).abs().max())}
        res["eager_vs_old"] = {"max_abs": float((eager.float() - old.float()).abs().max())}
        res["kernels"] = _kernel_table(fwd, out / "prof_autoencoder.txt", rows=20)
    log(out, "autoencoder_one_target", res)
    del ae
    torch.cuda.empty_cache()


_WRAP = ("import time, sys, json; t0 = time.time(); import afv.cli, afv.pipeline; t1 = time.time(); "
         "rc = afv.cli.main(); t2 = time.time(); "
         "sys.stderr.write('\\nWRAPTIMES ' + json.dumps([t0, t1, t2]) + '\\n'); sys.exit(rc)")


def animate_split(out: Path, label: str, paths: dict, weights: Path, options: list[str], importtime: bool = False) -> None:
    """One CLI call, wall time split into interpreter start, imports, main, exit; the pipeline's stages."""
    from afv.tracks import load_tracks

    res_file = out / f"tracks_{label}.npz"
    args = ["animate", "--engine", "actionmesh", "--mesh", str(paths["mesh20k"]), "--video", str(paths["video"]),
            "--masks", "auto", "--json", "--quiet", "--out", str(res_file), *sum((["-o", o] for o in options), [])]
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", _WRAP, *args]
    t_launch = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(AFV_ACTIONMESH_WEIGHTS=str(weights)))
    t_exit = time.time()
    if r.returncode:
        log(out, f"cli_{label}", {"rc": r.returncode, "stderr": r.stderr[-3000:]})
        return
    t0, t1, t2 = json.loads(r.stderr.rsplit("WRAPTIMES ", 1)[1].split("\n")[0])
    tr = load_tracks(res_file)
    info = tr.meta["info"]
    stages = tr.meta["timings_s"]
    res = {"wall_s": round(t_exit - t_launch, 2), "interpreter_start_s": round(t0 - t_launch, 2),
           "imports_s": round(t1 - t0, 2), "main_s": round(t2 - t1, 2), "exit_s": round(t_exit - t2, 2),
           "stages_sum_s": round(sum(stages.values()), 2), "main_outside_stages_s": round(t2 - t1 - sum(stages.values()), 2),
           "pipeline_timings_s": stages, "load_s": info.get("load_s"), "load_wait_s": info.get("load_wait_s"),
           "peak_gpu_memory_gb": info.get("peak_gpu_memory_gb"), "peak_gpu_reserved_gb": info.get("peak_gpu_reserved_gb"),
           "attention": info["attention"], "options": options}
    if importtime:
        rows = []
        for line in r.stderr.splitlines():
            if line.startswith("import time:") and "|" in line and "cumulative" not in line:
                _, cum, name = line.split("|")
                if not name.startswith("   "):  # top-level imports (one space of indent in the tree)
                    rows.append((int(cum), name.strip()))
        res["top_level_imports_ms"] = {n: round(c / 1e3) for c, n in sorted(rows, reverse=True)[:15]}
    log(out, f"cli_{label}", res)
    res_file.unlink()


def server_jobs(out: Path, paths: dict, weights: Path, work: Path) -> None:
    """The add-on's path: launch `afv serve`, submit over HTTP, poll, download; wall times per job."""
    sys.path.insert(0, str(REPO / "blender_addon"))
    import backend_client as bc

    os.environ.update(_env(AFV_ACTIONMESH_WEIGHTS=str(weights)))
    mesh_bytes = paths["mesh20k"].read_bytes()
    params = {"engine": "actionmesh", "options": {"fast": "true"}}

    def job(client, label: str, t_from: float) -> dict:
        t0 = time.time()
        job_id = client.submit(mesh_bytes, video_path=paths["video"], masks="auto", params=params)
        st = client.wait(job_id, poll_s=0.25, timeout_s=600)
        res = client.result(job_id, work / f"{label}.npz") if st["state"] == "done" else None
        t1 = time.time()
        return {"state": st["state"], "error": st.get("error"), "submit_to_tracks_s": round(t1 - t0, 2),
                "since_launch_s": round(t1 - t_from, 2), "timings_s": st.get("timings_s"), "tracks": bool(res)}

    for mode in ("submit_at_ready", "submit_when_warm"):
        t_launch = time.time()
        proc = bc.launch_backend(sys.executable, work / f"srv_{mode}", timeout_s=120)
        client = proc.client(timeout=120)
        t_ready = time.time()
        res: dict = {"launch_to_ready_s": round(t_ready - t_launch, 2)}
        try:
            if mode == "submit_when_warm":
                while not client.health().get("warm"):
                    time.sleep(0.1)
                res["ready_to_warm_s"] = round(time.time() - t_ready, 2)
                res["warm_up_s"] = client.info().get("warm_up_s")
            res["first_job"] = job(client, f"{mode}_1", t_launch)
            res["second_job"] = job(client, f"{mode}_2", t_launch)
        finally:
            proc.stop()
        log(out, f"server_{mode}", res)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "am_speed"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(out, "environment", {"torch": torch.__version__, "cuda": torch.version.cuda,
                             "gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count()})
    from afv.engines.actionmesh.random_weights import write_weights

    weights = write_weights(work / "weights", device="cuda", dtype=torch.bfloat16)
    torch.cuda.empty_cache()
    paths = make_inputs(work, False)
    log(out, "setup_s", round(time.perf_counter() - t0, 1))
    if "--server" in sys.argv or "--only-server" in sys.argv:
        server_jobs(out, paths, weights, work)
    if "--only-server" in sys.argv:
        return
    # first, on a fresh machine: Triton's on-disk kernel cache is still empty, so this call pays its compile
    animate_split(out, "fast_cold_kernel_cache", paths, weights, ["fast=true"])
    if "--no-profile" not in sys.argv:
        dinov2_loading(out, weights)
        profile_networks(out)
    animate_split(out, "fast_again", paths, weights, ["fast=true"])
    animate_split(out, "fast_importtime", paths, weights, ["fast=true"], importtime=True)
    if "--lowmem" in sys.argv:
        animate_split(out, "fast_lowmem", paths, weights, ["fast=true", "low_memory=true"])
    log(out, "driver_total_s", round(time.perf_counter() - t0, 1))


if __name__ == "__main__":
    main()

"""Engine `actionmesh` on a GPU with full-size random weights: prints numbers, asserts nothing.

  1. attention agreement in bf16: flash-attn (when importable) and SDPA's flash / cuDNN /
     memory-efficient kernels against the math kernel (fp32 reference), and a whole full-size
     denoiser forward (4 frames) per backend; kernel timings at the real sequence length;
  2. writes full-size random weights laid out like the published repos (bf16 networks, fp32 DINOv2);
  3. `afv animate --engine actionmesh` on a real video (16 frames) and a ~20k-vertex mesh:
     fast mode, fast + low-memory, full 30 steps; wall time, engine stage times, peak GPU memory.

Usage: python benchmarks/bench_actionmesh_gpu.py OUT_DIR [--tiny]   (--tiny: a CPU smoke run)
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

import numpy as np  # noqa: E402
import torch  # noqa: E402


def log(out: Path, key: str, value) -> None:
    print(f"{key}: {json.dumps(value)}", flush=True)
    path = out / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))


def env_report(out: Path) -> None:
    from afv.engines.actionmesh import attention as A

    rep = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for mod in ("flash_attn.cute", "flash_attn", "cutlass", "cv2", "trimesh", "transformers"):
        try:
            m = __import__(mod, fromlist=["_"])
            rep[mod] = getattr(m, "__version__", "ok")
        except Exception as exc:  # report why, keep going
            rep[mod] = f"unavailable: {type(exc).__name__}: {str(exc)[:200]}"
    rep["flash_attn_loaded_as"] = A._FLASH_NAME if A._load_flash() else None
    log(out, "environment", rep)


def attention_agreement(out: Path, tiny: bool) -> str:
    """Max abs error of each bf16 kernel vs fp32 math; timings at the denoiser's sequence length. -> fastest SDPA choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from afv.engines.actionmesh import attention as A

    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    B, H, S, d = (1, 16, 8192, 128) if not tiny else (1, 2, 64, 16)
    q, k, v = (torch.randn(B, H, S, d, generator=g, device=dev) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # fp32 (math/efficient)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    res = {"shape_BHSd": [B, H, S, d], "ref_abs_max": float(ref.abs().max())}
    kernels = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
               "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa_math": SDPBackend.MATH}
    outs = {}
    for name, kern in kernels.items():
        try:
            with sdpa_kernel([kern]):
                outs[name] = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb).float()
        except Exception as exc:
            res[name] = f"unavailable: {str(exc)[:120]}"
    if A._load_flash():
        try:
            A.set_backend("flash")
            outs["flash_attn_pkg"] = A.attention(qb, kb, vb).float()
        except Exception as exc:
            res["flash_attn_pkg"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        A.set_backend("auto")
    for name, o in outs.items():
        res[name] = {"max_abs_vs_fp32": float((o - ref).abs().max()),
                     "max_abs_vs_bf16_math": float((o - outs["sdpa_math"]).abs().max()) if "sdpa_math" in outs else None}
    log(out, "attention_agreement_bf16", res)

    # timings at the real inflated length: CFG batch 2, 16 heads, 16 x 2049 tokens, d 128
    B, H, S, d = (2, 16, 16 * 2049, 128) if not tiny else (2, 2, 64, 16)
    q, k, v = (torch.randn(B, H, S, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    times = {}
    for name, kern in list(kernels.items())[:3]:
        try:
            with sdpa_kernel([kern]):
                for _ in range(2):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(5):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v)
                torch.cuda.synchronize()
                dt = (time.perf_counter() - t0) / 5
            times[name] = {"ms": round(dt * 1e3, 2), "tflops": round(4 * B * H * S * S * d / dt / 1e12, 1)}
        except Exception as exc:
            times[name] = f"unavailable: {str(exc)[:120]}"
    if A._load_flash():
        try:
            A.set_backend("flash")
            for _ in range(2):
                A.attention(q, k, v)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(5):
                A.attention(q, k, v)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / 5
            times["flash_attn_pkg"] = {"ms": round(dt * 1e3, 2), "tflops": round(4 * B * H * S * S * d / dt / 1e12, 1)}
        except Exception as exc:
            times["flash_attn_pkg"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        A.set_backend("auto")
    log(out, "attention_timing_bf16", {"shape_BHSd": [B, H, S, d], **times})
    ok = {n: t["ms"] for n, t in times.items() if isinstance(t, dict) and n != "flash_attn_pkg"}
    return "cudnn" if ok and min(ok, key=ok.get) == "sdpa_cudnn" else "sdpa"


def denoiser_agreement(out: Path, tiny: bool) -> None:
    """A whole full-size denoiser forward (4 frames, random weights, bf16) per attention path vs SDPA math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from afv.engines.actionmesh import attention as A
    from afv.engines.actionmesh.denoiser import ActionMeshDenoiser, DenoiserConfig
    from afv.engines.actionmesh.random_weights import init_like_fixtures

    cfg = DenoiserConfig() if not tiny else DenoiserConfig(width=64, num_layers=5, num_attention_heads=4, in_channels=8,
                                                          cross_attention_dim=48, inflated_layers=(0, 1, 2, 3, 4))
    with torch.device("cuda"):
        m = init_like_fixtures(ActionMeshDenoiser(cfg), 0).to(torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(1)
    T, N = 4, cfg.num_tokens_nominal if not tiny else 32
    lat = torch.randn(1, T, N, cfg.in_channels, generator=g, device="cuda")
    ctx = torch.randn(1, T, 257, cfg.cross_attention_dim, generator=g, device="cuda")
    fs = torch.arange(T, device="cuda", dtype=torch.float32)[None]
    mask = torch.zeros(1, T, device="cuda")
    mask[0, 0] = 1
    t = torch.tensor([908.0], device="cuda")
    res = {}
    with torch.inference_mode():
        A.set_backend("sdpa")
        with sdpa_kernel([SDPBackend.MATH]):
            ref = m(lat, ctx, fs, t, mask).float()
        res["output_abs_max"] = float(ref.abs().max())
        for name, kern in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel([kern]):
                    o = m(lat, ctx, fs, t, mask).float()
                res[name] = {"max_abs_vs_math": float((o - ref).abs().max()), "rel_rms": float((o - ref).norm() / ref.norm())}
            except Exception as exc:
                res[name] = f"unavailable: {str(exc)[:120]}"
        if A._load_flash():
            try:
                A.set_backend("flash")
                o = m(lat, ctx, fs, t, mask).float()
                res["flash_attn_pkg"] = {"max_abs_vs_math": float((o - ref).abs().max()),
                                         "rel_rms": float((o - ref).norm() / ref.norm())}
            except Exception as exc:
                res["flash_attn_pkg"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        A.set_backend("auto")
    log(out, "denoiser_forward_agreement_bf16_T4", res)
    del m
    torch.cuda.empty_cache()


def make_inputs(work: Path, tiny: bool) -> dict[str, Path]:
    import trimesh

    from afv_dev.sample import write_sample  # called directly: `afv sample` needs the installed entry point

    paths = write_sample(work / "sample", n_frames=16, size=384 if not tiny else 96)
    mesh = np.load(paths["mesh"])
    v, f = mesh["vertices"], mesh["faces"]
    target = 20000 if not tiny else 1000
    while len(v) * 4 < target:  # midpoint subdivision: same surface, more vertices
        v, f = trimesh.remesh.subdivide(v, f)
    if len(v) < target:  # subdivide just enough faces (each adds ~1.5 vertices) to reach the target
        v, f = trimesh.remesh.subdivide(v, f, face_index=np.arange(min(len(f), int((target - len(v)) / 1.5))))
    np.savez(work / "mesh_20k.npz", vertices=v.astype(np.float32), faces=f.astype(np.int32))
    paths["mesh20k"] = work / "mesh_20k.npz"
    return paths


def _env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "backend") + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def animate(out: Path, label: str, paths: dict, weights: Path, options: list[str]) -> None:
    res_file = out / f"tracks_{label}.npz"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "afv", "animate", "--engine", "actionmesh", "--mesh", str(paths["mesh20k"]),
                        "--video", str(paths["video"]), "--masks", "auto", "--json", "--quiet", "--out", str(res_file),
                        *sum((["-o", o] for o in options), [])],
                       capture_output=True, text=True, env=_env(AFV_ACTIONMESH_WEIGHTS=str(weights)))
    wall = time.perf_counter() - t0
    if r.returncode:
        log(out, f"animate_{label}", {"rc": r.returncode, "stderr": r.stderr[-3000:]})
        return
    from afv.tracks import load_tracks

    tr = load_tracks(res_file)
    info = tr.meta["info"]
    log(out, f"animate_{label}", {
        "wall_s": round(wall, 2), "options": options, "frames": tr.n_frames, "vertices": tr.n_vertices,
        "merged_vertices": info["merged_vertices"], "pipeline_timings_s": tr.meta["timings_s"],
        "engine_timings_s": info["engine_timings_s"], "peak_gpu_memory_gb": info.get("peak_gpu_memory_gb"),
        "peak_gpu_reserved_gb": info.get("peak_gpu_reserved_gb"), "attention": info["attention"],
        "precision": info["precision"], "finite": bool(np.isfinite(tr.displacements).all()),
        "max_disp": float(np.abs(tr.displacements).max())})
    res_file.unlink()


def main() -> None:
    out = Path(sys.argv[1])
    tiny = "--tiny" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "am_bench"
    work.mkdir(parents=True, exist_ok=True)
    env_report(out)
    attn_choice = "sdpa"
    if torch.cuda.is_available():
        attn_choice = attention_agreement(out, tiny)
        denoiser_agreement(out, tiny)
    from afv.engines.actionmesh.random_weights import DinoSize, write_weights

    t0 = time.perf_counter()
    weights = work / "weights"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if tiny:
        from afv.engines.actionmesh.autoencoder import AutoencoderConfig
        from afv.engines.actionmesh.denoiser import DenoiserConfig
        from afv.engines.actionmesh.vae import VAEConfig

        write_weights(weights, DenoiserConfig(width=64, num_layers=5, num_attention_heads=4, in_channels=8, cross_attention_dim=48,
                                              inflated_layers=(0, 1, 2, 3, 4), num_tokens_nominal=32),
                      AutoencoderConfig(width=64, num_layers=3, num_attention_heads=4, latent_channels=8),
                      VAEConfig(latent_channels=8, num_attention_heads=4, width_encoder=32, width_decoder=64,
                                num_layers_encoder=2, num_layers_decoder=2), DinoSize(48, 2, 2), device=dev)
    else:
        write_weights(weights, device=dev, dtype=torch.bfloat16)
    sizes = {str(p.relative_to(weights)): round(p.stat().st_size / 1e9, 3) for p in weights.rglob("*.safetensors")}
    log(out, "weights_written", {"seconds": round(time.perf_counter() - t0, 1), "gb": sizes})
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    paths = make_inputs(work, tiny)
    common = [f"attention={attn_choice}"]
    animate(out, "fast", paths, weights, ["fast=true", *common])
    animate(out, "fast_lowmem", paths, weights, ["fast=true", "low_memory=true", *common])
    if not tiny:
        animate(out, "fast_again", paths, weights, ["fast=true", *common])
        if "--full" in sys.argv:
            animate(out, "full30", paths, weights, common)


if __name__ == "__main__":
    main()

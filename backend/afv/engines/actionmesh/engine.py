"""Engine `actionmesh`: ActionMesh's {3D+video} mode on the user's own mesh.

Steps (each a short method, in the order the reference runs them):
prepare frames -> encode anchor latent (TripoSG VAE) -> image features (DINOv2) -> denoise (Stage I,
flow matching with guidance, windows of 16 frames anchored on frame 0) -> decode positions (Stage
II, temporal autoencoder) -> back to the user's topology through the merge map.

Needs the published weights (see weights.py) and, to be practical, a CUDA GPU: networks run in
bf16 there (the VAE in fp16, DINOv2 and the autoencoder's query head in fp32, as the reference),
in fp32 on CPU. `low_memory` keeps one network on the device at a time and runs the two guidance
passes one after the other. Progress is reported and cancel honoured after every denoising step
and every decoded frame.

Otherwise `prefetch` (the pipeline calls it before decoding the video) loads DINOv2 on the calling
thread (mostly importing transformers: Python work) while a background thread reads the three
checkpoints to the device (file reads and host-to-device copies, which release the GIL), and each
step waits only for the network it needs.
"""

from __future__ import annotations

import gc
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh

from ...errors import EngineError, InputError
from ...progress import Progress
from ..base import EngineInput, EngineOutput
from . import attention as attn
from .autoencoder import ActionMeshAutoencoder, AutoencoderConfig
from .denoiser import ActionMeshDenoiser, DenoiserConfig
from .frames_prep import PreparedFrames, encoder_input, prepare_frames
from .mesh_prep import PreparedMesh, prepare_mesh, surface_sample, vertex_features
from .sampler import GUIDANCE_SCALE, initial_latent, sample
from .schedule import FAST_STEPS, FULL_STEPS, flow_schedule, windows
from .vae import TripoSGVAE, VAEConfig, sample_query_points
from .weights import LICENCE, Resolved, load_dinov2, load_strict, resolve_all

BASE_SEED = 44  # the reference's default seed; the job's seed is added to it
_LICENCE_SHOWN = False


@dataclass
class ActionMeshOptions:
    fast: bool = False  # 15 denoising steps instead of 30
    steps: int = 0  # explicit step count (0 = 30, or 15 with fast)
    guidance: float = GUIDANCE_SCALE
    low_memory: bool = False  # one network on the device at a time; guidance passes one after the other
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    weights_dir: str = ""  # local weights folder (else $AFV_ACTIONMESH_WEIGHTS, else the HF cache)
    surface_points: int = 16384
    attention: str = "auto"  # auto (flash-attn when installed, else SDPA) | sdpa | flash | cudnn


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class ActionMeshEngine:
    name = "actionmesh"
    stages = {"prepare": 0.02, "anchor_latent": 0.05, "image_features": 0.05, "denoise": 0.68, "positions": 0.2}

    def __init__(self, options: ActionMeshOptions | None = None) -> None:
        self.options = o = options or ActionMeshOptions()
        if o.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise InputError(f"precision {o.precision!r} is not one of auto, bf16, fp16, fp32")
        if o.steps < 0 or o.guidance < 0 or o.surface_points < 64:
            raise InputError("steps and guidance must be >= 0, surface_points >= 64")
        if o.attention not in ("auto", "sdpa", "flash", "cudnn"):
            raise InputError(f"attention {o.attention!r} is not one of auto, sdpa, flash, cudnn")
        # weights first: a job without them fails at submission, before any video is decoded
        self.weights: dict[str, Resolved] = resolve_all(o.weights_dir or None)
        self._models: dict[str, torch.nn.Module] = {}
        self._pending: dict[str, Future] = {}  # networks loading in the background (prefetch)
        self._prefetch_device: torch.device | None = None
        self.load_s: dict[str, float] = {}  # seconds each network took to load (on whichever thread)
        self.wait_s: dict[str, float] = {}  # seconds the steps waited for a prefetched network

    # ---- set-up -------------------------------------------------------------------------------
    @property
    def n_steps(self) -> int:
        return self.options.steps or (FAST_STEPS if self.options.fast else FULL_STEPS)

    def dtypes(self, device: torch.device) -> dict[str, torch.dtype]:
        """Per network: the reference runs Stage I/II under bf16 autocast, the VAE in fp16, DINOv2 in fp32."""
        p = self.options.precision
        if p == "fp32" or (p == "auto" and device.type != "cuda"):
            return dict.fromkeys(("denoiser", "autoencoder", "vae", "dinov2"), torch.float32)
        half = torch.float16 if p == "fp16" else torch.bfloat16
        return {"denoiser": half, "autoencoder": half, "vae": torch.float16, "dinov2": torch.float32}

    def prefetch(self, device: torch.device) -> None:
        """Load every network onto `device` (not in low-memory mode): the VAE, denoiser and autoencoder
        on a background thread, DINOv2 here, on the calling thread, meanwhile.

        Why DINOv2 here: its time is importing transformers, pure Python work. On a background thread
        it held the GIL against every short torch call of the steps running beside it, which then
        waited up to the interpreter's switch interval each time: the anchor stage (a farthest-point
        loop of small torch calls) ran 14x slower (H200, measured). Here it runs alone, and the loader thread, whose work is
        file reads and host-to-device copies, gets the GIL back quickly because the switch interval
        is shortened until that thread is done. `model()` waits for the network it needs; a loading
        error surfaces there.
        """
        if self.options.low_memory or self._prefetch_device is not None:
            return
        self._prefetch_device = dev = torch.device(device)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 2e-4))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actionmesh-load")
        for name in ("vae", "denoiser", "autoencoder"):  # the order the steps need them
            self._pending[name] = pool.submit(self._load, name, dev)
        pool.submit(sys.setswitchinterval, switch)  # after the last checkpoint (loaded or failed)
        pool.shutdown(wait=False)  # the thread ends when its queue is done
        self._pending["dinov2"] = fut = Future()
        try:
            fut.set_result(self._load("dinov2", dev))
        except Exception as exc:  # raised where the features step asks for DINOv2, like the others' errors
            fut.set_exception(exc)

    def model(self, name: str, device: torch.device) -> torch.nn.Module:
        """One network on the device: loaded (strictly) now, or awaited from `prefetch`, or already there."""
        if name not in self._models:
            fut = self._pending.pop(name, None)
            if fut is not None and self._prefetch_device == torch.device(device):
                t0 = time.perf_counter()
                self._models[name] = fut.result()  # re-raises the loader's error here
                self.wait_s[name] = time.perf_counter() - t0
            else:
                self._models[name] = self._load(name, device)
        return self._models[name]

    def _load(self, name: str, device: torch.device) -> torch.nn.Module:
        t0 = time.perf_counter()
        res = self.weights[name]
        dtype = self.dtypes(device)[name]
        if name == "denoiser":
            cfg = DenoiserConfig.from_dict(res.config())
            m = load_strict(lambda: ActionMeshDenoiser(cfg), res.weights_path, device, dtype)
        elif name == "autoencoder":
            cfg_ae = AutoencoderConfig.from_dict(res.config())
            m = load_strict(lambda: ActionMeshAutoencoder(cfg_ae), res.weights_path, device, dtype)
            for part in (m.blocks[-1], m.proj_query, m.norm_out, m.proj_out):
                part.float()  # the reference decodes the queries in fp32 (autocast off)
        elif name == "vae":
            cfg_v = VAEConfig.from_dict(res.config())
            m = load_strict(lambda: TripoSGVAE(cfg_v), res.weights_path, device, dtype)
        else:
            m = load_dinov2(res.folder, device, dtype, timings=self.load_s)
        self.load_s[name] = time.perf_counter() - t0
        return m

    def release(self, name: str, device: torch.device) -> None:
        """Low-memory mode: drop a network as soon as its stage is done."""
        if self.options.low_memory and name in self._models:
            del self._models[name]
            _free(device)

    # ---- steps --------------------------------------------------------------------------------
    @staticmethod
    def rgba_frames(inp: EngineInput) -> np.ndarray:
        """(T, H, W, 4) uint8: the clip's colours with our masks (or the clip's own alpha) as alpha."""
        clip = inp.clip
        if inp.masks is not None:
            alpha = inp.masks.astype(np.uint8) * 255
            if clip.alpha is not None:  # soft edges where the source's alpha agrees with the mask
                alpha = np.where(inp.masks, np.maximum(clip.alpha, 1), 0).astype(np.uint8)
        elif clip.alpha is not None:
            alpha = clip.alpha
        else:
            raise InputError("engine 'actionmesh' needs the object's masks",
                             "use a video with an alpha channel, --masks PATH, or --masks chroma/median")
        return np.concatenate([clip.frames, alpha[..., None]], axis=-1)

    def prepare_frames(self, inp: EngineInput) -> PreparedFrames:
        try:
            return prepare_frames(self.rgba_frames(inp))
        except ValueError:
            raise InputError("the masks are empty in every frame", "check the masks (docs/masks.md)") from None

    def encode_anchor(self, prep: PreparedMesh, device: torch.device, seed: int) -> torch.Tensor:
        """Anchor latent (M, C) float32 from the normalised mesh's surface (M = the denoiser's token count)."""
        vae = self.model("vae", device)
        tokens = int(self.weights_config("denoiser").num_tokens_nominal)
        surface = surface_sample(prep.mesh, self.options.surface_points, seed).to(device)
        sampled = sample_query_points(surface, tokens, np.random.default_rng(seed))
        post = vae.encode(surface[None], sampled[None])
        gen = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn(post.mean.shape, generator=gen, device=device)
        z = post.sample(noise)[0].float()
        self.release("vae", device)
        return z

    def image_features(self, frames: PreparedFrames, device: torch.device, progress: Progress) -> torch.Tensor:
        """DINOv2 last_hidden_state per frame: (T, 257, D) float32 (CLS + 16x16 patches, final LayerNorm)."""
        dino = self.model("dinov2", device)
        _, pixels = encoder_input(frames)
        out = []
        batch = 8
        for i in range(0, len(pixels), batch):
            px = pixels[i:i + batch].to(device=device, dtype=next(dino.parameters()).dtype)
            out.append(dino(pixel_values=px).last_hidden_state.float())
            progress.update(min(i + batch, len(pixels)) / len(pixels))
        self.release("dinov2", device)
        return torch.cat(out)

    def weights_config(self, name: str) -> Any:
        cfg = self.weights[name].config()
        return DenoiserConfig.from_dict(cfg) if name == "denoiser" else AutoencoderConfig.from_dict(cfg)

    def denoise(self, anchor: torch.Tensor, context: torch.Tensor, device: torch.device, seed: int,
                progress: Progress) -> torch.Tensor:
        """Stage I over all frames: (T, N, C) latents; frame 0 is the anchor, held fixed."""
        den = self.model("denoiser", device)
        cfg: DenoiserConfig = den.cfg
        T = context.shape[0]
        N, C = anchor.shape
        schedule = flow_schedule(self.n_steps)
        bank = torch.zeros(T, N, C, device=device)
        known = torch.zeros(T, dtype=torch.bool, device=device)
        bank[0], known[0] = anchor, True
        wins = windows(T, cfg.temporal_context_size, cfg.temporal_context_size - 1)
        total = len(wins) * schedule.n_steps
        for w, frames in enumerate(wins):
            idx = torch.tensor(frames, device=device)
            mask = known[idx].float()[None]
            gen = torch.Generator(device=device).manual_seed(seed + w)
            init = initial_latent(bank[idx][None], mask, N, C, gen)
            done = w * schedule.n_steps

            def on_step(k: int, n: int, _t: dict, done: int = done) -> None:
                progress.update((done + k + 1) / total)  # raises Cancelled between steps

            lat = sample(den, init, context[idx][None].to(device), idx.float()[None], mask, schedule,
                         self.options.guidance, sequential=self.options.low_memory, on_step=on_step)
            new = ~known[idx]
            bank[idx[new]] = lat[0, new]
            known[idx] = True
        self.release("denoiser", device)
        return bank

    def decode(self, latents: torch.Tensor, prep: PreparedMesh, device: torch.device,
               progress: Progress) -> np.ndarray:
        """Stage II: (T, V, 3) normalised positions of the merged vertices; frame 0 is the anchor itself."""
        ae = self.model("autoencoder", device)
        T = latents.shape[0]
        V = prep.n_vertices
        out = np.zeros((T, V, 3), np.float64)
        out[0] = prep.mesh.vertices
        have = np.zeros(T, bool)
        have[0] = True
        size = ae.cfg.temporal_context_size
        wins = windows(T, size, size - 1)
        faces = np.asarray(prep.mesh.faces)
        todo = T - 1
        for frames in wins:
            src = frames[0]  # the window's anchor: a frame decoded before (frame 0 first)
            anchor_mesh = trimesh.Trimesh(out[src], faces, process=False)
            query = vertex_features(anchor_mesh)[None].to(device)
            fs = torch.tensor(frames, dtype=torch.float32, device=device)[None]
            t_min, t_rng = fs.min(), fs.max() - fs.min()
            alphas = ((fs[:, 1:] - t_min) / t_rng)
            src_alpha = ((fs[:, 0] - t_min) / t_rng)

            def on_target(i: int, n: int) -> None:
                progress.update((int(have.sum()) - 1 + i) / max(todo, 1))

            pos = ae(latents[frames][None], fs, src_alpha, alphas, query, on_target=on_target)[0]
            pos = pos.cpu().numpy().astype(np.float64)
            for j, f in enumerate(frames[1:]):
                if not have[f]:
                    out[f], have[f] = pos[j], True
        self.release("autoencoder", device)
        return out

    # ---- the whole run ------------------------------------------------------------------------
    def run(self, inp: EngineInput, progress: Progress) -> EngineOutput:
        global _LICENCE_SHOWN
        if not _LICENCE_SHOWN:
            sys.stderr.write(f"[actionmesh] {LICENCE}\n")
            _LICENCE_SHOWN = True
        device = inp.device
        seed = BASE_SEED + int(inp.seed)
        attn.set_backend(self.options.attention)
        timings: dict[str, float] = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.prefetch(device)  # normally already started by the pipeline, before the video was decoded
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                progress.start("prepare")
                frames = self.prepare_frames(inp)
                prep = prepare_mesh(inp.mesh.vertices, inp.mesh.faces)
                if prep.n_vertices < 4 or len(prep.mesh.faces) == 0:
                    raise InputError("the mesh has no usable faces after merging duplicate vertices")
                timings["prepare"] = time.perf_counter() - t0

                t0 = time.perf_counter()
                progress.start("anchor_latent")
                anchor = self.encode_anchor(prep, device, seed)
                timings["anchor_latent"] = time.perf_counter() - t0

                t0 = time.perf_counter()
                progress.start("image_features")
                context = self.image_features(frames, device, progress)
                timings["image_features"] = time.perf_counter() - t0

                t0 = time.perf_counter()
                progress.start("denoise")
                latents = self.denoise(anchor, context, device, seed, progress)
                timings["denoise"] = time.perf_counter() - t0

                t0 = time.perf_counter()
                progress.start("positions")
                normalized = self.decode(latents, prep, device, progress)
                timings["positions"] = time.perf_counter() - t0
        finally:  # on success or failure, nothing stays on the device (a failed job's loads are dropped)
            self._pending.clear()
            self._prefetch_device = None
            self._models.clear()
            _free(device)

        tracks = prep.expand(normalized)  # (T, N_orig, 3) mesh coordinates
        if not np.all(np.isfinite(tracks)):
            raise EngineError("actionmesh produced non-finite positions", "try precision=fp32")
        disp = tracks - inp.mesh.vertices[None].astype(np.float32)
        disp[0] = 0.0  # frame 0 is the anchor itself (equal to the input to ~1e-7 after normalising)
        info = {
            "licence": LICENCE,
            "steps": self.n_steps,
            "guidance": self.options.guidance,
            "windows": len(windows(len(tracks), 16, 15)),
            "merged_vertices": prep.n_vertices,
            "unmatched_vertices": prep.unmatched,
            "frames_failing_alpha_rule": [int(i) for i in np.nonzero(~frames.valid)[0]],
            "crop_box_xywh": list(frames.box),
            "attention": attn.backend_name(device, self.dtypes(device)["denoiser"]),
            "precision": {k: str(v).replace("torch.", "") for k, v in self.dtypes(device).items()},
            "low_memory": self.options.low_memory,
            "engine_timings_s": {k: round(v, 3) for k, v in timings.items()},
            "load_s": {k: round(v, 3) for k, v in self.load_s.items()},  # per network, overlapping the steps above
            "load_wait_s": {k: round(v, 3) for k, v in self.wait_s.items()},  # of which the steps waited
            "weights": {k: f"{r.folder} ({r.source})" for k, r in self.weights.items()},
        }
        if device.type == "cuda":
            info["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
            info["peak_gpu_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 1e9, 3)
        return EngineOutput(displacements=disp.astype(np.float32), confidence=None, camera=inp.camera, info=info)

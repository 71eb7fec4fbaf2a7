"""ActionMesh networks against the reference's outputs (tiny configs, random weights, fp32 CPU).

Tolerances are the fixtures README's: single network outputs 1e-4, guided velocities and sampler
latents 2e-4, autoencoder positions and VAE latents 2e-5. The full-size key lists prove the same
modules load the published checkpoints.
"""

from __future__ import annotations

import json

import pytest
import torch

from afv.engines.actionmesh.autoencoder import ActionMeshAutoencoder, AutoencoderConfig
from afv.engines.actionmesh.denoiser import ActionMeshDenoiser, DenoiserConfig
from afv.engines.actionmesh.layers import rope_tables
from afv.engines.actionmesh.sampler import guided_velocity, initial_latent, sample
from afv.engines.actionmesh.schedule import flow_schedule
from afv.engines.actionmesh.vae import TripoSGVAE, VAEConfig, farthest_point_sampling
from afv.engines.actionmesh.weights import expected_shapes, load_strict

from actionmesh_support import config, fixtures_dir, load, max_abs

NET = 1e-4
GUIDED = 2e-4
FINE = 2e-5


@pytest.fixture(scope="module")
def denoiser() -> ActionMeshDenoiser:
    cfg = DenoiserConfig.from_dict(config("denoiser_tiny"))
    return load_strict(lambda: ActionMeshDenoiser(cfg), fixtures_dir() / "denoiser_tiny" / "model.safetensors")


@pytest.fixture(scope="module")
def den_io() -> dict:
    return load("denoiser_tiny_io.safetensors")


def run(model, d, case):
    with torch.no_grad():
        return model(d[f"{case}.latents"], d[f"{case}.context"], d[f"{case}.framestep"], d[f"{case}.diffusion_time"], d[f"{case}.mask"])


def test_denoiser_case_a_plain_forward_and_every_block(denoiser, den_io):
    captured = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in denoiser.blocks]
    try:
        out = run(denoiser, den_io, "a")
    finally:
        for h in hooks:
            h.remove()
    assert max_abs(out, den_io["a.output"]) < NET
    for i, h in enumerate(captured):
        assert max_abs(h, den_io[f"a.block{i}_output"]) < NET, f"block {i}"
    tt = denoiser.time_token(den_io["a.diffusion_time"], den_io["a.mask"])
    assert max_abs(tt, den_io["a.time_token"]) < NET


def test_denoiser_rope_tables_per_frame(den_io):
    cos, sin = rope_tables(torch.arange(16.0), 16)
    assert max_abs(cos, den_io["a.rope_cos_per_frame"]) < 1e-6
    assert max_abs(sin, den_io["a.rope_sin_per_frame"]) < 1e-6


def test_denoiser_case_a_guided_pair(denoiser, den_io):
    d = den_io
    with torch.no_grad():
        v0, v1, v = guided_velocity(denoiser, d["a.latents"], d["a.context"], d["a.framestep"], d["a.diffusion_time"], d["a.mask"])
        s0, s1, s = guided_velocity(denoiser, d["a.latents"], d["a.context"], d["a.framestep"], d["a.diffusion_time"], d["a.mask"],
                                    sequential=True)
    assert max_abs(v0, d["a.cfg_v_uncond"]) < NET and max_abs(v1, d["a.cfg_v_cond"]) < NET
    assert max_abs(v, d["a.cfg_guided"]) < GUIDED
    assert max_abs(s, d["a.cfg_guided"]) < GUIDED  # low-memory mode: the two rows one after the other


def test_denoiser_case_b_offset_window_two_known_frames(denoiser, den_io):
    assert max_abs(run(denoiser, den_io, "b"), den_io["b.output"]) < NET


def test_denoiser_case_c_partial_inflation(denoiser, den_io):
    cfg = DenoiserConfig.from_dict({**config("denoiser_tiny"), "inflated_layers": [0, 2, 4]})
    m = ActionMeshDenoiser(cfg)
    m.load_state_dict(denoiser.state_dict(), strict=True)
    out = run(m, den_io, "a")
    assert max_abs(out, den_io["c.output_inflated_layers_0_2_4"]) < NET
    assert max_abs(out, den_io["a.output"]) > 1e-2  # the inflation really changes the result


def test_sampler_three_steps_cfg_anchor_held(denoiser):
    d = load("sampler_tiny_io.safetensors")
    gen = torch.Generator().manual_seed(44)
    known = torch.zeros(1, 16, 32, 8)
    known[0, 0] = d["anchor_latent"]
    init = initial_latent(known, d["mask"], 32, 8, gen)  # the pipeline's draw order
    assert torch.equal(init, d["init_latent"])
    sched = flow_schedule(3)
    assert torch.equal(sched.timesteps, d["timesteps"]) and torch.equal(sched.distances, d["distances"])
    steps = []
    with torch.no_grad():
        out = sample(denoiser, init, d["context"], d["framestep"], d["mask"], sched,
                     on_step=lambda k, n, t: steps.append({k2: v.clone() for k2, v in t.items()}))
    for k, got in enumerate(steps):
        assert max_abs(got["v_uncond"], d[f"step{k}.v_uncond"]) < NET
        assert max_abs(got["v_cond"], d[f"step{k}.v_cond"]) < NET
        assert max_abs(got["v_guided"], d[f"step{k}.v_guided"]) < GUIDED
        assert max_abs(got["latents_after"], d[f"step{k}.latents_after"]) < GUIDED
        assert torch.equal(got["latents_after"][0, 0], d["anchor_latent"])  # bit-exact, every step
    assert torch.equal(out, steps[-1]["latents_after"])


def test_autoencoder_positions():
    cfg = AutoencoderConfig.from_dict(config("autoencoder_tiny"))
    ae = load_strict(lambda: ActionMeshAutoencoder(cfg), fixtures_dir() / "autoencoder_tiny" / "model.safetensors")
    d = load("autoencoder_tiny_io.safetensors")
    with torch.no_grad():
        pos = ae(d["latents"], d["framestep"], d["source_alpha"], d["target_alphas"], d["query"])
        assert max_abs(ae.alpha_tokens(d["source_alpha"], d["target_alphas"]), d["alpha_embedding"]) < 1e-6
        assert max_abs(ae.query_embedding(d["query"]), d["query_embedding"]) < 1e-6
        T, N = 16, 32
        tokens = ae.post_quant(d["latents"]).reshape(1, T * N, -1)
        fs = d["framestep"] - d["framestep"].min()
        cos, sin = rope_tables(fs.reshape(-1), cfg.width // cfg.num_attention_heads)
        rope = (torch.cat([cos.repeat_interleave(N, 0), cos])[None], torch.cat([sin.repeat_interleave(N, 0), sin])[None])
        mem = ae.memory(tokens, ae.alpha_tokens(d["source_alpha"], d["target_alphas"])[:, 0], rope)
    assert max_abs(mem, d["kv_cache_target0"]) < NET
    assert max_abs(pos, d["positions"]) < FINE
    assert float(pos.abs().max()) <= 1.0


def test_vae_encoder_with_injected_sampling_and_decoder():
    cfg = VAEConfig.from_dict(config("triposg_vae_tiny"))
    vae = load_strict(lambda: TripoSGVAE(cfg), fixtures_dir() / "triposg_vae_tiny" / "diffusion_pytorch_model.safetensors")
    d = load("vae_encoder_tiny_io.safetensors")
    sub = d["surface"][d["subsample_indices"]]
    # our FPS from index 0 reproduces the injected indices exactly
    assert torch.equal(farthest_point_sampling(sub[:, :3], 32, start=0), d["fps_indices"])
    q = sub[d["fps_indices"]]
    with torch.no_grad():
        assert max_abs(vae.embed(q), d["encoder_query_input"]) < 1e-6
        post = vae.encode(d["surface"][None], q[None])
        z = post.sample(d["posterior_noise"][None])[0]
        logits = vae.decode(d["latent_sample"][None], d["decoder_query_points"][None])[0]
    assert max_abs(post.mean[0], d["posterior_mean"]) < NET
    assert max_abs(post.logvar[0], d["posterior_logvar_clamped"]) < NET
    assert max_abs(post.std[0], d["posterior_std"]) < NET
    assert max_abs(z, d["latent_sample"]) < FINE
    assert max_abs(logits, d["decoder_logits"]) < NET


@pytest.mark.parametrize("build, keys", [
    (ActionMeshDenoiser, "actionmesh_denoiser_keys.json"),
    (ActionMeshAutoencoder, "actionmesh_autoencoder_keys.json"),
    (TripoSGVAE, "triposg_vae_keys.json"),
])
def test_full_size_modules_have_the_published_keys_and_shapes(build, keys):
    ref = json.loads((fixtures_dir() / "keys" / keys).read_text())
    got = expected_shapes(build)  # built on the meta device from the published defaults
    assert got == {k: tuple(v["shape"]) for k, v in ref["state_dict"].items()}
    assert sum(torch.Size(s).numel() for s in got.values()) == ref["num_parameters"]


def test_attention_cpu_path_is_plain_softmax_attention():
    from afv.engines.actionmesh import attention as A

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7 + i, 16, generator=g) for i in (0, 5, 5))
    assert A.backend_name(q.device, q.dtype) == "sdpa"
    ref = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    assert max_abs(A.attention(q, k, v), ref) < 1e-6

"""ActionMesh data preparation against the reference: mesh merge/normalise/sample and the tracks'
way back, frame compositing/cropping/resizing for DINOv2, the tiny DINOv2's tokens, the schedules
and the long-clip windows. Integers and frame bytes must be exact; mesh floats within 1e-6 of the
mesh scale; DINOv2 tokens within 1e-5."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from afv.engines.actionmesh.frames_prep import alpha_is_valid, encoder_input, prepare_frames
from afv.engines.actionmesh.mesh_prep import prepare_mesh, surface_sample
from afv.engines.actionmesh.schedule import flow_schedule, windows
from afv.engines.actionmesh.weights import load_dinov2

from actionmesh_support import fixtures_dir, load, max_abs


@pytest.fixture(scope="module")
def mesh_fx() -> dict:
    return {k: v.numpy() for k, v in load("mesh_prep.safetensors").items()}


def test_mesh_prep_merge_clean_normalise_sample(mesh_fx):
    d = mesh_fx
    p = prepare_mesh(d["orig_vertices"], d["orig_faces"])
    scale = float(d["scale"][0])
    assert (p.n_vertices, len(p.mesh.faces)) == (162, 320)
    assert np.array_equal(p.merge_map, d["vertex_merge_map"])
    assert np.array_equal(p.mesh.faces, d["merged_faces"])
    assert p.scale == pytest.approx(scale, abs=1e-6 * scale)
    assert np.abs(p.center - d["bbox_center"]).max() < 1e-6 * scale
    assert np.abs(p.mesh.vertices - d["normalized_vertices"]).max() < 1e-6
    assert np.abs(p.denormalize(p.mesh.vertices) - d["merged_vertices"]).max() < 1e-6 * scale
    assert max_abs(p.query_features(), d["query_features"]) < 1e-6
    assert max_abs(surface_sample(p.mesh, 512, 44), d["surface_512_seed44"]) < 1e-6
    assert p.unmatched == 0


def test_merge_map_expansion_to_user_topology(mesh_fx):
    d = mesh_fx
    p = prepare_mesh(d["orig_vertices"], d["orig_faces"])
    tracks = p.expand(d["frames_normalized"])
    assert tracks.shape == (16, 186, 3)
    assert np.abs(tracks - d["tracks_original_topology"]).max() < 1e-6 * float(d["scale"][0])
    # frame 0 is the anchor itself: the user's vertices come back
    assert np.abs(tracks[0] - d["orig_vertices"]).max() < 1e-6


def test_mesh_prep_textured_keeps_uv_seams(mesh_fx):
    d = mesh_fx
    p = prepare_mesh(d["orig_vertices"], d["orig_faces"], uv=d["textured.uv"])
    assert (p.n_vertices, len(p.mesh.faces)) == (174, 321)
    assert np.array_equal(p.mesh.faces, d["textured.merged_faces"])
    assert np.abs(p.denormalize(p.mesh.vertices) - d["textured.merged_vertices"]).max() < 1e-6 * 3.0
    # coincident survivors make the index tie-break arbitrary: compare positions
    ours = p.mesh.vertices[p.merge_map]
    ref = p.mesh.vertices[d["textured.vertex_merge_map"]]
    assert np.abs(ours - ref).max() < 1e-9


@pytest.fixture(scope="module")
def frames_fx() -> dict:
    return load("frames_prep.safetensors")


@pytest.mark.parametrize("case", ["a", "b"])
def test_frames_prep_composite_box_pad_exact(frames_fx, case):
    d = frames_fx
    p = prepare_frames(d[f"{case}.input_rgba"].numpy())
    assert np.array_equal(p.rgb, d[f"{case}.processed_rgb"].numpy())
    assert [list(b) for b in p.frame_boxes] == d[f"{case}.frame_bbox_xywh"].tolist()
    assert list(p.box) == d[f"{case}.union_bbox_xywh"].tolist()
    assert list(p.pads) == d[f"{case}.pad_lrtb"].tolist()


def test_frames_alpha_validity_rule(frames_fx):
    got = [int(alpha_is_valid(a)) for a in frames_fx["valid.alpha"].numpy()]
    assert got == frames_fx["valid.expected"].tolist()


def test_frames_encoder_input_bit_exact(frames_fx):
    d = frames_fx
    u8, pixels = encoder_input(prepare_frames(d["a.input_rgba"].numpy()))
    assert np.array_equal(u8, d["a.encoder_input_u8"].numpy())
    lut = d["encoder_lut"]
    assert torch.equal(pixels, lut[torch.arange(3)[None, :, None, None], d["a.encoder_input_u8"].long()])
    sidecar = json.loads((fixtures_dir() / "frames_prep.json").read_text())
    digest = hashlib.sha256(pixels.numpy().astype("<f4").tobytes()).hexdigest()
    assert digest == sidecar["pixel_values"]["sha256_of_C_order_little_endian_bytes"]


def test_tiny_dinov2_tokens_through_transformers(frames_fx):
    d = frames_fx
    model = load_dinov2(fixtures_dir() / "dinov2_tiny")
    _, pixels = encoder_input(prepare_frames(d["a.input_rgba"].numpy()))
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    assert out.last_hidden_state.shape == (4, 257, 32)
    assert max_abs(out.last_hidden_state, d["a.dino_last_hidden_state"]) < 1e-5
    assert max_abs(out.hidden_states[0][0], d["a.dino_embeddings_frame0"]) < 1e-5


@pytest.mark.parametrize("n", [30, 15, 4, 3])
def test_flow_schedules_bit_exact(n):
    ref = json.loads((fixtures_dir() / "schedule" / "flow_schedule.json").read_text())["schedules"][f"steps_{n}"]
    s = flow_schedule(n)
    assert s.timesteps.tolist() == ref["timesteps"]
    assert s.distances.tolist() == ref["distances"]
    assert s.timesteps[-1].item() == pytest.approx(8.928571701049805)


def test_long_clip_windows_anchor_on_frame_0():
    ref = json.loads((fixtures_dir() / "schedule" / "flow_schedule.json").read_text())["windows_anchor0_size16_slide15"]
    for T, wins in ref.items():
        assert windows(int(T)) == [w["frames"] for w in wins], T
    assert windows(5) == [[0, 1, 2, 3, 4]]

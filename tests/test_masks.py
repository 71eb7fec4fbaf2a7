"""Mask sources against ground truth by construction: the renderer's alpha is the true mask.

Clips are rendered with afv_dev.synthetic, composited on known backgrounds, written to real files
(PNG folders, videos) and read back through the same entry points the pipeline uses.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from afv_dev import synthetic as S
from afv.errors import InputError
from afv.masks import (
    MaskResult,
    chroma_key,
    compute_masks,
    empty_frames,
    fill_holes,
    keep_consistent_components,
    median_subtraction,
    resolve_masks,
)
from afv.geometry.silhouette import camera_mask_iou, mask_iou as iou
from afv.mesh import Mesh
from afv.video import VideoClip, load_video

SIZE = (96, 96)
GREEN = np.array([40, 170, 60], np.float32)


def mean_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([iou(p, g) for p, g in zip(pred, gt)]))


def clip_of(rgb: np.ndarray, alpha: np.ndarray | None = None) -> VideoClip:
    T, H, W = rgb.shape[:3]
    return VideoClip(rgb, alpha, np.arange(T, dtype=np.int32), 24.0, (W, H), 1.0)


def composite(rgba: np.ndarray, background: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """rgba (T, H, W, 4), background (H, W, 3) or (3,) -> (T, H, W, 3) uint8 with Gaussian noise."""
    rng = np.random.default_rng(seed)
    fg = rgba[..., 3:] > 127
    img = np.where(fg, rgba[..., :3].astype(np.float32), np.broadcast_to(background, rgba[..., :3].shape))
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)


def textured_background(H: int, W: int, seed: int) -> np.ndarray:
    """A cluttered static scene: stripes, gradients and blurred random noise, (H, W, 3) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    bg = np.stack([128 + 60 * np.sin(xx / 5) + 40 * np.cos(yy / 7), 128 + 50 * np.sin((xx + yy) / 9), 100 + 80 * xx / W], -1)
    bg = bg + rng.normal(0, 25, bg.shape)
    return np.clip(cv2.GaussianBlur(bg.astype(np.float32), (3, 3), 0), 0, 255)


def sliding_box(n_frames: int = 12, size=SIZE) -> S.Sequence:
    """A textured box sliding across the view, so each pixel is covered in < half of the frames."""
    box = trimesh.creation.box(extents=(0.6, 0.6, 0.6)).subdivide().subdivide()
    v = np.asarray(box.vertices, np.float32)
    s = np.linspace(0, 1, n_frames)
    pos = np.stack([v + np.array([-1.4 + 2.8 * a, 0.25 * np.sin(3 * a), 0.0]) for a in s]).astype(np.float32)
    cam = S.default_camera(pos.reshape(-1, 3), size, direction=(0.0, 0.0, 1.0))
    return S.Sequence("sliding_box", Mesh(v, np.asarray(box.faces, np.int32)), pos, cam)


@pytest.fixture(scope="module")
def cylinder_rgba() -> np.ndarray:
    return S.render_sequence(S.bending_cylinder(n_frames=8, size=SIZE))


@pytest.fixture(scope="module")
def slide_rgba() -> np.ndarray:
    return S.render_sequence(sliding_box())


# ----------------------------------------------------------------------------- chroma


@pytest.mark.parametrize("name", ["bending_cylinder", "multi_part"])
def test_chroma_key_on_green_backdrop(name):
    rgba = S.render_sequence(S.SEQUENCES[name](n_frames=6, size=SIZE))
    gt = rgba[..., 3] > 127
    frames = composite(rgba, GREEN, noise=3.0, seed=1)
    masks, thr = chroma_key(frames)
    assert masks.shape == gt.shape and masks.dtype == bool
    assert mean_iou(masks, gt) > 0.95
    assert min(iou(m, g) for m, g in zip(masks, gt)) > 0.93
    # the threshold sits above the noise and far below the object's distance
    assert 3.0 < thr < 30.0


def test_auto_picks_chroma_for_uniform_backdrop(cylinder_rgba):
    gt = cylinder_rgba[..., 3] > 127
    res = resolve_masks("auto", clip_of(composite(cylinder_rgba, GREEN, 3.0, seed=2)))
    assert isinstance(res, MaskResult)
    assert res.method == "chroma", res.notes
    assert mean_iou(res.masks, gt) > 0.95
    assert res.empty_frames == []


def test_chroma_with_a_clip_without_object_finds_nothing():
    frames = composite(np.zeros((4, 64, 64, 4), np.uint8), GREEN, 3.0, seed=3)
    masks, _ = chroma_key(frames)
    assert masks.sum() == 0
    res = resolve_masks("auto", clip_of(frames), model_fallback=False)
    assert res.method == "none" and res.masks is None
    assert any("no object" in n for n in res.notes)


# ----------------------------------------------------------------------------- temporal median


def test_median_subtraction_on_static_cluttered_background(slide_rgba):
    gt = slide_rgba[..., 3] > 127
    assert gt.mean(0).max() < 0.5  # construction: the object moves more than its own size
    frames = composite(slide_rgba, textured_background(*SIZE[::-1], seed=4), noise=3.0, seed=5)
    masks, thr = median_subtraction(frames)
    cons = keep_consistent_components(masks)
    assert mean_iou(cons, gt) > 0.9
    assert min(iou(m, g) for m, g in zip(cons, gt)) > 0.85
    assert thr > 6.0


def test_auto_picks_median_for_static_camera(slide_rgba):
    gt = slide_rgba[..., 3] > 127
    frames = composite(slide_rgba, textured_background(*SIZE[::-1], seed=6), 3.0, seed=7)
    res = resolve_masks("auto", clip_of(frames))
    assert res.method == "median", res.notes
    assert mean_iou(res.masks, gt) > 0.9
    assert compute_masks("median", clip_of(frames)).shape == gt.shape


def test_auto_rejects_moving_camera(slide_rgba):
    # the same scene seen by a panning camera: the background shifts 3 px a frame
    H, W = SIZE[1], SIZE[0]
    big = textured_background(H, W + 3 * len(slide_rgba), seed=8)
    frames = np.stack(
        [composite(slide_rgba[t : t + 1], big[:, 3 * t : 3 * t + W], 3.0, seed=t)[0] for t in range(len(slide_rgba))]
    )
    res = resolve_masks("auto", clip_of(frames), model_fallback=False)
    assert res.method == "none" and res.masks is None
    assert any("camera moves" in n for n in res.notes), res.notes


def test_auto_uses_real_alpha_and_ignores_opaque_alpha(cylinder_rgba):
    gt = cylinder_rgba[..., 3] > 127
    rgb = composite(cylinder_rgba, GREEN, 3.0, seed=9)
    res = resolve_masks("auto", clip_of(rgb, cylinder_rgba[..., 3]))
    assert res.method == "alpha" and np.array_equal(res.masks, gt)
    opaque = np.full(gt.shape, 255, np.uint8)
    res = resolve_masks("auto", clip_of(rgb, opaque))
    assert res.method == "chroma" and mean_iou(res.masks, gt) > 0.95
    assert any("opaque" in n for n in res.notes)


# ----------------------------------------------------------------------------- consistency


def test_consistency_drops_spurious_blobs_and_fills_holes(cylinder_rgba):
    gt = cylinder_rgba[..., 3] > 127
    noisy = gt.copy()
    rng = np.random.default_rng(10)
    blobs = np.zeros_like(gt)
    for t in range(len(gt)):
        for _ in range(3):  # small blobs away from the object
            while True:
                y, x = rng.integers(4, SIZE[1] - 4, 2)
                if not gt[t, max(0, y - 8) : y + 8, max(0, x - 8) : x + 8].any():
                    break
            blobs[t, y - 2 : y + 2, x - 2 : x + 2] = True
    noisy |= blobs
    ys, xs = np.nonzero(gt[3])
    cy, cx = int(np.median(ys)), int(np.median(xs))
    noisy[3, cy - 1 : cy + 2, cx - 1 : cx + 2] = False  # a hole inside the object
    assert not np.array_equal(noisy, gt)
    out = keep_consistent_components(noisy)
    assert not (out & blobs).any()
    assert np.array_equal(out, gt)


def test_consistency_keeps_separate_parts_and_empty_frames():
    seq = S.multi_part(n_frames=5, size=SIZE)
    gt = S.render_sequence(seq)[..., 3] > 127
    n_parts = cv2.connectedComponents(gt[0].astype(np.uint8))[0] - 1
    assert n_parts >= 2
    gt[2] = False  # the object is hidden in one frame
    out = keep_consistent_components(gt)
    assert np.array_equal(out, gt)
    assert empty_frames(out) == [2]


def test_fill_holes_respects_max_area():
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[12:28, 12:28] = False  # 256-pixel opening
    ring[7:9, 7:9] = False  # 4-pixel hole
    out = fill_holes(ring, max_area=10)
    assert out[7:9, 7:9].all() and not out[12:28, 12:28].any()
    assert fill_holes(ring)[12:28, 12:28].all()


# ----------------------------------------------------------------------------- given masks


def _write_masks(folder: Path, masks: np.ndarray, kind: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        if kind == "gray255":
            img = m.astype(np.uint8) * 255
        elif kind == "gray01":
            img = m.astype(np.uint8)
        elif kind == "rgba":  # mask in the alpha channel, colour channels constant white
            img = np.dstack([np.full(m.shape + (3,), 255, np.uint8), m.astype(np.uint8) * 255])
        elif kind == "rgb16":
            img = np.repeat((m.astype(np.uint16) * 65535)[..., None], 3, axis=2)
        elif kind == "half":  # half the resolution, same aspect
            img = cv2.resize(m.astype(np.uint8) * 255, (m.shape[1] // 2, m.shape[0] // 2), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(folder / f"mask_{i}.png"), img)


@pytest.mark.parametrize("kind", ["gray255", "gray01", "rgba", "rgb16", "half"])
def test_mask_folder_round_trip(tmp_path, cylinder_rgba, kind):
    gt = cylinder_rgba[..., 3] > 127
    rgb = composite(cylinder_rgba, GREEN, 2.0, 11)
    S.write_png_folder(np.concatenate([rgb, np.full(gt.shape + (1,), 255, np.uint8)], axis=3), tmp_path / "video")
    _write_masks(tmp_path / "masks", gt, kind)
    clip = load_video(tmp_path / "video", "1:7:2", max_size=None)
    res = resolve_masks(str(tmp_path / "masks"), clip, n_source_frames=len(gt))
    assert res.method == "folder"
    want = gt[1:7:2]
    if kind == "half":  # the half-res mask brought up with nearest: exactly that, and close to the truth
        half = [cv2.resize(g.astype(np.uint8), (SIZE[0] // 2, SIZE[1] // 2), interpolation=cv2.INTER_NEAREST) for g in want]
        up = np.stack([cv2.resize(h, SIZE, interpolation=cv2.INTER_NEAREST) > 0 for h in half])
        assert np.array_equal(res.masks, up)
        assert mean_iou(res.masks, want) > 0.85
    else:
        assert np.array_equal(res.masks, want)
    # working resolution below the masks' resolution: resized with nearest
    small = load_video(tmp_path / "video", None, max_size=48)
    m = compute_masks(str(tmp_path / "masks"), small)
    assert m.shape == (len(gt), 48, 48)
    ref = np.stack([cv2.resize(g.astype(np.uint8), (48, 48), interpolation=cv2.INTER_AREA) > 0 for g in gt])
    assert mean_iou(m, ref) > 0.8


def test_mask_video_round_trip(tmp_path, cylinder_rgba):
    gt = cylinder_rgba[..., 3] > 127
    S.write_video(composite(cylinder_rgba, GREEN, 2.0, 12), tmp_path / "clip.avi")
    S.write_video(np.repeat(gt[..., None].astype(np.uint8) * 255, 3, axis=3), tmp_path / "mask.avi")
    clip = load_video(tmp_path / "clip.avi", "2::2", max_size=None)
    res = resolve_masks(str(tmp_path / "mask.avi"), clip)
    assert res.method == "video"
    assert mean_iou(res.masks, gt[2::2]) > 0.97  # MJPG is lossy at the edges


def test_empty_mask_frames_are_reported(tmp_path, cylinder_rgba):
    gt = cylinder_rgba[..., 3] > 127
    gt[[1, 4]] = False
    _write_masks(tmp_path / "masks", gt, "gray255")
    S.write_png_folder(cylinder_rgba, tmp_path / "video")
    clip = load_video(tmp_path / "video", None, max_size=None)
    res = resolve_masks(str(tmp_path / "masks"), clip)
    assert res.empty_frames == [1, 4]
    assert np.array_equal(res.masks, gt)


def test_bad_inputs_raise_input_error(tmp_path, cylinder_rgba):
    gt = cylinder_rgba[..., 3] > 127
    S.write_png_folder(cylinder_rgba, tmp_path / "video")
    clip = load_video(tmp_path / "video", None, max_size=None)
    rgb_clip = clip_of(clip.frames)
    cases = []
    _write_masks(tmp_path / "short", gt[:5], "gray255")
    cases.append((str(tmp_path / "short"), clip, "has 5 images"))
    (tmp_path / "emptydir").mkdir()
    cases.append((str(tmp_path / "emptydir"), clip, "no images"))
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(len(gt)):
        cv2.imwrite(str(wide / f"{i}.png"), np.zeros((SIZE[1], SIZE[0] * 2), np.uint8))
    cases.append((str(wide), clip, "aspect ratio"))
    cases.append((str(tmp_path / "video" / "00000.png"), clip, "single image"))
    (tmp_path / "m.txt").write_text("x")
    cases.append((str(tmp_path / "m.txt"), clip, "unsupported type"))
    cases.append(("no/such/path", clip, "neither a keyword"))
    cases.append(("alpha", rgb_clip, "no alpha channel"))
    cases.append(("median", clip_of(clip.frames[:2]), "at least 3 frames"))
    S.write_video(np.repeat(gt[:4, ..., None].astype(np.uint8) * 255, 3, axis=3), tmp_path / "short.avi")
    cases.append((str(tmp_path / "short.avi"), clip, "mask video short.avi"))
    for source, c, text in cases:
        with pytest.raises(InputError, match=text):
            resolve_masks(source, c)
    _write_masks(tmp_path / "extra", np.concatenate([gt, gt[:2]]), "gray255")
    with pytest.raises(InputError, match="video has 8 frames"):
        resolve_masks(str(tmp_path / "extra"), clip, n_source_frames=len(gt))


# ----------------------------------------------------------------------------- real footage


def _davis_dog() -> Path:
    for root in (Path(__file__).resolve().parents[1].parent / "shared" / "data", Path("/work/shared/data")):
        if (root / "video" / "davis_dog").is_dir():
            return root / "video" / "davis_dog"
    pytest.skip("DAVIS clip davis_dog not found (development data absent)")


def test_davis_dog_mask_folder():
    d = _davis_dog()
    clip = load_video(d / "img", "0:60:5", max_size=128)
    res = resolve_masks(str(d / "mask"), clip, n_source_frames=len(list((d / "img").iterdir())))
    W, H = clip.size
    assert res.masks.shape == (12, H, W) and res.method == "folder"
    assert res.empty_frames == []
    cover = res.masks.reshape(12, -1).mean(1)
    assert ((cover > 0.02) & (cover < 0.6)).all()  # a dog, not the whole frame or a speck
    # the same masks read at full resolution, downsampled by area, agree with the nearest resize
    full = cv2.imread(str(sorted((d / "mask").iterdir())[10]), cv2.IMREAD_GRAYSCALE) > 127
    ref = cv2.resize(full.astype(np.float32), (W, H), interpolation=cv2.INTER_AREA) > 0.5
    assert iou(res.masks[2], ref) > 0.9
    # the camera follows the dog: auto must see that the background is not static, on any stretch
    for rng in ("0:60:5", "0:16", "30:46"):
        auto = resolve_masks("auto", load_video(d / "img", rng, max_size=96), model_fallback=False)
        assert auto.method == "none" and any("camera moves" in n for n in auto.notes), (rng, auto.notes)


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_records_mask_method(tmp_path, cylinder_rgba):
    from afv.pipeline import animate, parse_request

    seq = S.bending_cylinder(n_frames=8, size=SIZE)
    rgb = composite(cylinder_rgba, GREEN, 3.0, seed=13)
    S.write_video(rgb, tmp_path / "clip.avi")  # a video file: no alpha, so auto must key the backdrop
    tracks = animate(parse_request(mesh=seq.mesh, video=tmp_path / "clip.avi", masks="auto", engine="static", device="cpu"))
    info = tracks.meta["masks_result"]
    assert info["method"] == "chroma" and info["empty_frames"] == []
    assert any("border uniform" in n for n in info["notes"])


def test_computed_masks_contradicting_the_given_camera_are_dropped(tmp_path):
    """Median subtraction cannot see an object that never moves; with a camera given, the
    pipeline notices that the masks disagree with the mesh and runs without them."""
    from afv.geometry.silhouette import camera_mask_iou
    from afv.pipeline import animate, parse_request
    from afv_dev.synthetic import rigid_sequence, render_sequence, write_png_folder

    seq = rigid_sequence(n_frames=6, size=(96, 96), subdivisions=1)
    seq.positions[:] = seq.mesh.vertices  # a still object
    rgba = render_sequence(seq, background=(0.3, 0.5, 0.2))
    rgba[..., 3] = 255  # no alpha: masks must be computed
    write_png_folder(rgba, tmp_path / "clip")
    cam = tmp_path / "cam.json"
    cam.write_text(__import__("json").dumps(seq.camera.to_json()))
    tr = animate(parse_request(mesh=seq.mesh, video=tmp_path / "clip", masks="median", camera=cam, engine="static", max_size=96))
    res = tr.meta["masks_result"]
    assert res["method"] == "none" and "ignored" in res["notes"][-1]
    # the check itself: the true silhouette scores 1, a shifted one much less
    true = rgba[0, ..., :3].any(-1) & (np.abs(rgba[0, ..., :3].astype(int) - [76, 128, 51]).sum(-1) > 10)
    assert camera_mask_iou(seq.mesh.vertices, seq.mesh.faces, seq.camera.K, seq.camera.pose(0), true) > 0.95
    assert camera_mask_iou(seq.mesh.vertices, seq.mesh.faces, seq.camera.K, seq.camera.pose(0), np.roll(true, 30, axis=1)) < 0.5


@pytest.mark.parametrize("engine", ["static", "articulated"])
def test_given_camera_contradicting_given_masks_is_a_warning(tmp_path, engine):
    """A camera given with the clip's own alpha: the pipeline checks the camera against mask 0
    before any engine; a camera shifted sideways on purpose is reported with its IoU, the true
    one is not, and in both cases the user's masks and camera reach the engine."""
    from dataclasses import replace

    from afv.geometry.silhouette import camera_mask_iou
    from afv.pipeline import animate, parse_request
    from afv_dev.synthetic import rigid_sequence, render_sequence, write_png_folder

    seq = rigid_sequence(n_frames=4, size=(96, 96), subdivisions=1)
    rgba = render_sequence(seq, background=(0.3, 0.5, 0.2))  # real alpha: masks "alpha"
    write_png_folder(rgba, tmp_path / "clip")
    M = seq.camera.mesh_to_camera.copy()
    M[:, 0, 3] += 0.35 * seq.mesh.bbox_diagonal()  # the mesh seen ~1/3 of its size to the side
    shifted = replace(seq.camera, mesh_to_camera=M)
    alpha0 = rgba[0, ..., 3] > 127
    iou_true = camera_mask_iou(seq.mesh.vertices, seq.mesh.faces, seq.camera.K, seq.camera.pose(0), alpha0)
    iou_shifted = camera_mask_iou(seq.mesh.vertices, seq.mesh.faces, shifted.K, shifted.pose(0), alpha0)
    assert iou_true > 0.95 and iou_shifted < 0.5, (iou_true, iou_shifted)
    opts = {"iters": 5, "root_iters": 5, "n_tracks": 100, "n_surface": 200} if engine == "articulated" else None

    def run(cam):
        tr = animate(parse_request(mesh=seq.mesh, video=tmp_path / "clip", masks="auto", camera=cam, engine=engine,
                                   options=opts, device="cpu", max_size=96))
        assert tr.meta["masks_result"]["method"] == "alpha"  # given masks are kept either way
        return [w for w in tr.meta["info"]["warnings"] if "does not match the first mask" in w]

    bad = run(shifted)
    assert len(bad) == 1 and bad[0].startswith(f"camera: the given camera does not match the first mask (IoU {iou_shifted:.2f})"), bad
    assert run(seq.camera) == []

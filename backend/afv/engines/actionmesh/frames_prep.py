"""Video frames on the way into the image encoder, as the reference prepares them.

Our masks replace the reference's background remover: each frame is composited on white with its
alpha, all frames are cropped to one shared box (every pixel with alpha > 0 counts), padded with
white to about square with a 10 % margin, then resized with Pillow's bicubic filter (short side 256,
long side truncated), centre-cropped to 224 and normalised for DINOv2. The arithmetic follows the
reference step by step (float32, truncation to uint8) so the encoder sees the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

PADDING_RATIO = 0.1
RESIZE_SHORT = 256
CROP = 224
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def alpha_is_valid(alpha: np.ndarray, min_ratio: float = 0.01, threshold: int = 127) -> bool:
    """(H, W) uint8: foreground (alpha > 127) and background both cover at least floor(1 %) of the pixels."""
    min_count = int(alpha.size * min_ratio)
    fg = int(np.count_nonzero(alpha > threshold))
    return fg >= min_count and alpha.size - fg >= min_count


def alpha_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) over every row and column with alpha > 0; None for an empty frame."""
    on = alpha > 0
    rows, cols = np.nonzero(on.any(axis=1))[0], np.nonzero(on.any(axis=0))[0]
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def union_box(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def composite_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 straight alpha -> (H, W, 3) float32 in [0, 1] over white (reference order of operations)."""
    a = rgba[..., 3:4].astype(np.float32) * np.float32(1.0 / 255.0)
    return rgba[..., :3].astype(np.float32) * np.float32(1.0 / 255.0) * a + np.float32(1.0) * (np.float32(1.0) - a)


def pad_amounts(w: int, h: int, ratio: float = PADDING_RATIO) -> tuple[int, int, int, int]:
    """(left, right, top, bottom): margin floor(ratio max(w, h)) plus half the difference to square."""
    m = max(w, h)
    base = int(m * ratio)
    px, py = base + (m - w) // 2, base + (m - h) // 2
    return px, px, py, py


@dataclass
class PreparedFrames:
    rgb: np.ndarray  # (T, h, w, 3) uint8: composited, cropped to the union box, padded
    frame_boxes: list[tuple[int, int, int, int] | None]  # per frame (x, y, w, h) of alpha > 0
    box: tuple[int, int, int, int]  # the union box
    pads: tuple[int, int, int, int]  # left, right, top, bottom
    valid: np.ndarray  # (T,) bool: the reference's alpha-validity rule


def prepare_frames(rgba: np.ndarray) -> PreparedFrames:
    """rgba: (T, H, W, 4) uint8 -> composited, cropped, padded uint8 frames. Needs one non-empty alpha."""
    boxes = [alpha_box(f[..., 3]) for f in rgba]
    present = [b for b in boxes if b is not None]
    if not present:
        raise ValueError("every frame's alpha is empty")
    x, y, w, h = box = union_box(present)
    left, right, top, bottom = pads = pad_amounts(w, h)
    out = []
    for frame in rgba:
        c = composite_white(frame)[y:y + h, x:x + w]
        c = np.pad(c, ((top, bottom), (left, right), (0, 0)), constant_values=np.float32(1.0))
        out.append((c * np.float32(255)).astype(np.uint8))  # truncation, as the reference
    valid = np.array([alpha_is_valid(f[..., 3]) for f in rgba])
    return PreparedFrames(np.stack(out), boxes, box, pads, valid)


def resize_and_crop(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, 224, 224) uint8: Pillow bicubic to short side 256 (long side truncated), centre crop."""
    h, w = rgb.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(RESIZE_SHORT * long / short)
    size = (new_long, RESIZE_SHORT) if h <= w else (RESIZE_SHORT, new_long)  # PIL takes (W, H)
    img = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
    top, left = (img.shape[0] - CROP) // 2, (img.shape[1] - CROP) // 2
    return np.ascontiguousarray(img[top:top + CROP, left:left + CROP].transpose(2, 0, 1))


def normalize_pixels(u8: np.ndarray) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> float32 (u/255 - mean)/std per channel, computed in float32."""
    x = torch.from_numpy(np.ascontiguousarray(u8)).float() / 255.0
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32).reshape(shape)
    std = torch.tensor(IMAGE_STD, dtype=torch.float32).reshape(shape)
    return (x - mean) / std


def encoder_input(frames: PreparedFrames) -> tuple[np.ndarray, torch.Tensor]:
    """-> ((T, 3, 224, 224) uint8, (T, 3, 224, 224) float32 pixel values for DINOv2)."""
    u8 = np.stack([resize_and_crop(f) for f in frames.rgb])
    return u8, normalize_pixels(u8)

"""Object masks for a clip: given (alpha, mask folder, mask video) or computed.

Mask source strings (CLI `--masks`, server field `masks`):
  auto     alpha channel if the clip has one, else none
  none     no masks
  alpha    the clip's alpha channel (error if it has none)
  PATH     a folder of mask images or a mask video, one mask per source frame
Result: (T, H, W) bool at the clip's working resolution, True = object.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .video import VideoClip, list_images, load_video, FrameRange

KEYWORDS = ("auto", "none", "alpha")


def masks_from_alpha(alpha: np.ndarray, threshold: int = 127) -> np.ndarray:
    """alpha: (T, H, W) uint8 -> (T, H, W) bool."""
    return alpha > threshold


def load_mask_source(path: Path, clip: VideoClip) -> np.ndarray:
    """Read masks for exactly the clip's selected frames from a folder or a mask video."""
    if path.is_dir():
        files = list_images(path)
        if len(files) <= int(clip.frame_indices.max()):
            raise InputError(f"mask folder {path} has {len(files)} images; frame {int(clip.frame_indices.max())} is needed")
        out = []
        for i in clip.frame_indices:
            m = cv2.imread(str(files[i]), cv2.IMREAD_UNCHANGED)
            if m is None:
                raise InputError(f"could not read mask {files[i].name}")
            if m.ndim == 3:
                m = m[..., 3] if m.shape[2] == 4 else m.max(axis=2)
            out.append(cv2.resize(m, clip.size, interpolation=cv2.INTER_NEAREST) > (m.max() / 2 if m.max() > 0 else 0))
        return np.stack(out)
    rng = FrameRange(int(clip.frame_indices[0]), int(clip.frame_indices[-1]) + 1, int(np.diff(clip.frame_indices).min()) if clip.n_frames > 1 else 1)
    mclip = load_video(path, rng, max_size=None)
    if mclip.n_frames != clip.n_frames:
        raise InputError(f"mask video has {mclip.n_frames} frames in the range, the video {clip.n_frames}")
    gray = mclip.frames.max(axis=3)
    return np.stack([cv2.resize(g, clip.size, interpolation=cv2.INTER_NEAREST) > 127 for g in gray])


def compute_masks(source: str | None, clip: VideoClip) -> np.ndarray | None:
    """Resolve a mask source string against a clip; None means the engine works without masks."""
    source = (source or "auto").strip()
    if source == "none":
        return None
    if source == "auto":
        return masks_from_alpha(clip.alpha) if clip.alpha is not None else None
    if source == "alpha":
        if clip.alpha is None:
            raise InputError("masks=alpha but the video has no alpha channel", "use PNG frames with alpha, or another mask source")
        return masks_from_alpha(clip.alpha)
    path = Path(source)
    if not path.exists():
        raise InputError(f"mask source '{source}' is neither a keyword {KEYWORDS} nor an existing path")
    return load_mask_source(path, clip)

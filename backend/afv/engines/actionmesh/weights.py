"""Where the published weights live, and loading them strictly.

Three Hugging Face repositories, laid out as the reference expects (`pretrained_weights/...`):

| component | repo | files |
|---|---|---|
| denoiser, autoencoder | facebook/ActionMesh | `denoiser/`, `autoencoder/` each `config.json` + `model.safetensors` |
| shape VAE (encoder) | VAST-AI/TripoSG | `vae/config.json` + `vae/diffusion_pytorch_model.safetensors` |
| image encoder | facebook/dinov2-large | `config.json` + `model.safetensors` |

Resolution, offline first: a local folder (option `weights_dir`, else `$AFV_ACTIONMESH_WEIGHTS`)
holding `ActionMesh/`, `TripoSG/` and `dinov2/`; otherwise the huggingface_hub cache
(`local_files_only`). Nothing is downloaded except by `afv weights fetch`.

Loading is strict: a checkpoint's safetensors header (keys, shapes) is compared with the network
built from its config before any tensor is read; a missing, unknown or misshapen key is refused
with the file and the key named. Tensors are then read one by one straight to the target device
and dtype, so a full checkpoint is never held twice.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ...errors import InputError

ENV_DIR = "AFV_ACTIONMESH_WEIGHTS"

LICENCE = (
    "ActionMesh weights (facebook/ActionMesh): FAIR Noncommercial Research License v1 - research and "
    "non-commercial use only; TripoSG VAE (VAST-AI/TripoSG): MIT; DINOv2-large (facebook/dinov2-large): "
    "Apache-2.0. Weights are never bundled: the user fetches them and accepts their licences."
)

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class WeightsError(InputError):
    """Weights missing, or a checkpoint that does not match the network it should load into."""


@dataclass(frozen=True)
class Component:
    name: str
    repo_id: str
    local_dir: str  # folder name under the local weights root
    subfolder: str  # inside the repo
    weights_file: str

    def files(self) -> list[str]:
        pre = f"{self.subfolder}/" if self.subfolder else ""
        return [pre + "config.json", pre + self.weights_file]


COMPONENTS: dict[str, Component] = {c.name: c for c in (
    Component("denoiser", "facebook/ActionMesh", "ActionMesh", "denoiser", "model.safetensors"),
    Component("autoencoder", "facebook/ActionMesh", "ActionMesh", "autoencoder", "model.safetensors"),
    Component("vae", "VAST-AI/TripoSG", "TripoSG", "vae", "diffusion_pytorch_model.safetensors"),
    Component("dinov2", "facebook/dinov2-large", "dinov2", "", "model.safetensors"),
)}


@dataclass(frozen=True)
class Resolved:
    component: Component
    folder: Path  # holds config.json and the weights file
    source: str  # "local" | "hf-cache"

    @property
    def config_path(self) -> Path:
        return self.folder / "config.json"

    @property
    def weights_path(self) -> Path:
        return self.folder / self.component.weights_file

    def config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot read {self.config_path}: {exc}", "re-fetch the weights: afv weights fetch") from None


def weights_root(weights_dir: str | os.PathLike | None = None) -> Path | None:
    root = weights_dir or os.environ.get(ENV_DIR)
    return Path(root).expanduser() if root else None


def _from_hf_cache(comp: Component) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        # the cache folder is read at call time (huggingface_hub reads its variable once, at import)
        snap = Path(snapshot_download(comp.repo_id, allow_patterns=comp.files(), local_files_only=True,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except Exception:  # not in the cache (or hub package unusable): simply absent
        return None
    folder = snap / comp.subfolder if comp.subfolder else snap
    return folder if all((snap / f).is_file() for f in comp.files()) else None


def resolve_component(name: str, weights_dir: str | os.PathLike | None = None) -> Resolved | None:
    """The folder holding one component's config and weights, or None when it is not on this machine."""
    comp = COMPONENTS[name]
    root = weights_root(weights_dir)
    if root is not None:
        folder = root / comp.local_dir / comp.subfolder if comp.subfolder else root / comp.local_dir
        if (folder / "config.json").is_file() and (folder / comp.weights_file).is_file():
            return Resolved(comp, folder, "local")
    folder = _from_hf_cache(comp)
    return Resolved(comp, folder, "hf-cache") if folder is not None else None


def resolve_all(weights_dir: str | os.PathLike | None = None) -> dict[str, Resolved]:
    """Every component, or a WeightsError naming the missing ones and how to get them."""
    found = {n: resolve_component(n, weights_dir) for n in COMPONENTS}
    missing = [n for n, r in found.items() if r is None]
    if missing:
        root = weights_root(weights_dir)
        where = f"in {root} or " if root is not None else ""
        raise WeightsError(
            f"actionmesh weights not found {where}in the Hugging Face cache: missing {', '.join(missing)} "
            f"({', '.join(sorted({COMPONENTS[n].repo_id for n in missing}))})",
            f"run `afv weights fetch` where the Hugging Face Hub is reachable, or set {ENV_DIR} to a folder "
            "with ActionMesh/, TripoSG/ and dinov2/ (see docs/engine_actionmesh.md)")
    return found  # type: ignore[return-value]


def availability(weights_dir: str | os.PathLike | None = None) -> tuple[bool, str]:
    """(True, where) when every component is present, else (False, what is missing and how to get it)."""
    try:
        found = resolve_all(weights_dir)
    except WeightsError as exc:
        return False, str(exc)
    return True, "; ".join(f"{n}: {r.folder} ({r.source})" for n, r in found.items())


def read_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A safetensors file's header, {key: (dtype, shape)}, without reading any tensor data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or n > 100_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})", "re-fetch the weights: afv weights fetch") from None
    header.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()}


def check_header(path: str | os.PathLike, expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse a checkpoint whose keys or shapes differ from `expected`, naming the file and the first bad keys."""
    header = read_header(path)
    missing = sorted(set(expected) - set(header))
    unknown = sorted(set(header) - set(expected))
    wrong = sorted(k for k in set(expected) & set(header) if tuple(header[k][1]) != tuple(expected[k]))
    bad_dtype = sorted(k for k, (dt, _) in header.items() if k in expected and dt not in _DTYPES)
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
    if unknown:
        problems.append(f"unknown key(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} ({len(unknown)} in all)")
    for k in wrong[:5]:
        problems.append(f"key {k!r} has shape {list(header[k][1])}, expected {list(expected[k])}")
    for k in bad_dtype[:5]:
        problems.append(f"key {k!r} has dtype {header[k][0]}, expected a float type")
    if problems:
        raise WeightsError(f"{path} does not match the network: " + "; ".join(problems),
                           "the checkpoint is for another model or version; re-fetch it with `afv weights fetch`")


def expected_shapes(build: Callable[[], nn.Module]) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the network `build()` makes, built on the meta device (no memory)."""
    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_strict(build: Callable[[], nn.Module], path: str | os.PathLike, device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None) -> nn.Module:
    """Build the network on the meta device, check the file's header, then read each tensor to device/dtype."""
    from safetensors import safe_open

    check_header(path, expected_shapes(build))
    with torch.device("meta"):
        module = build()
    state = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:  # straight to the device
        for key in f.keys():
            t = f.get_tensor(key)
            state[key] = t.to(dtype=dtype or t.dtype)
    module.load_state_dict(state, strict=True, assign=True)
    for name, buf in module.named_buffers():  # non-persistent buffers (none today) would still be on meta
        if buf.is_meta:
            raise WeightsError(f"{path}: buffer {name} has no value", "")
    return module.eval().requires_grad_(False)


def _dinov2_class() -> type:
    """transformers' Dinov2Model, importing its model module alone: the top-level `transformers`
    package would resolve the same module lazily, through more imports."""
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Model

    return Dinov2Model


def warm_up() -> None:
    """Import transformers' DINOv2 module now: 6-8 s of Python work that a job would otherwise wait for."""
    _dinov2_class()


def load_dinov2(folder: str | os.PathLike, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, timings: dict[str, float] | None = None) -> nn.Module:
    """DINOv2 through transformers (which maps checkpoint names across its versions), refused unless exact.

    transformers reports what it could not place; any missing, unexpected or misshapen key is an error
    naming the file, like `load_strict`. `timings` (optional) receives "dinov2_import": the seconds
    spent importing transformers' DINOv2 module (most of the loading time).
    """
    t0 = time.perf_counter()
    Dinov2Model = _dinov2_class()
    if timings is not None:
        timings["dinov2_import"] = time.perf_counter() - t0

    try:
        model, info = Dinov2Model.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    except Exception as exc:
        raise WeightsError(f"{folder}: DINOv2 could not be loaded ({type(exc).__name__}: {exc})",
                           "re-fetch facebook/dinov2-large with `afv weights fetch`") from None
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise WeightsError(f"{Path(folder) / 'model.safetensors'} does not match Dinov2Model: "
                           + "; ".join(f"{k} {sorted(map(str, v))[:5]}" for k, v in problems.items()),
                           "the checkpoint is not DINOv2 (facebook/dinov2-large); re-fetch it")
    return model.to(device).eval().requires_grad_(False)


def fetch(components: list[str] | None = None) -> dict[str, Path]:
    """Download into the huggingface_hub cache (needs the Hub). Raises WeightsError when it is unreachable."""
    from huggingface_hub import snapshot_download

    out = {}
    for name in components or list(COMPONENTS):
        comp = COMPONENTS[name]
        try:
            snap = Path(snapshot_download(comp.repo_id, allow_patterns=comp.files(),
                                          cache_dir=os.environ.get("HF_HUB_CACHE") or None))
        except Exception as exc:
            raise WeightsError(
                f"could not download {comp.repo_id} from the Hugging Face Hub: {type(exc).__name__}: {exc}",
                "this machine cannot reach huggingface.co (or the repo needs `huggingface-cli login` to accept its "
                f"licence); copy the weights from a machine that can and point {ENV_DIR} at them") from None
        out[name] = snap / comp.subfolder if comp.subfolder else snap
    return out

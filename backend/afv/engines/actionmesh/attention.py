"""Scaled dot-product attention: flash-attn where it is installed and usable, PyTorch SDPA otherwise.

All three ActionMesh networks call `attention(q, k, v)` with heads already split:
`q: (B, H, Sq, d)`, `k, v: (B, H, Sk, d)` -> `(B, H, Sq, d)`, softmax scale 1/sqrt(d), no mask.

flash-attn (2.x `flash_attn`, or 4.x `flash_attn.cute`) runs only on CUDA in fp16/bf16 with its own
(B, S, H, d) layout; everything else (CPU, fp32, no package) goes through
`torch.nn.functional.scaled_dot_product_attention`; on CUDA it is asked to prefer its cuDNN kernel
(then flash, memory-efficient, math). `set_backend("sdpa")` leaves SDPA's own choice.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

_BACKEND = "auto"  # auto | sdpa | flash | cudnn
_FLASH: Callable | None = None
_FLASH_NAME = ""
_FLASH_TRIED = False


def _load_flash() -> Callable | None:
    """The flash-attn forward (q, k, v in (B, S, H, d)) -> (B, S, H, d), or None when not installed."""
    global _FLASH, _FLASH_NAME, _FLASH_TRIED
    if _FLASH_TRIED:
        return _FLASH
    _FLASH_TRIED = True
    for mod_name, fn_name in (("flash_attn.cute", "flash_attn_func"), ("flash_attn", "flash_attn_func")):
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except Exception:  # not installed, or built for another torch/CUDA: fall back to SDPA
            continue
        _FLASH, _FLASH_NAME = fn, mod_name
        break
    return _FLASH


def set_backend(name: str) -> None:
    """auto (flash-attn when usable, else SDPA) | sdpa | flash (error when flash-attn is unusable) |
    cudnn (SDPA preferring its cuDNN kernel, which is often the fastest on Hopper; others as fallback)."""
    global _BACKEND
    if name not in ("auto", "sdpa", "flash", "cudnn"):
        raise ValueError(f"unknown attention backend {name!r}")
    if name == "flash" and _load_flash() is None:
        raise RuntimeError("flash-attn is not installed or could not be imported")
    _BACKEND = name


def backend_name(device: torch.device, dtype: torch.dtype) -> str:
    """Which implementation `attention` uses for tensors of this device and dtype."""
    if _BACKEND in ("auto", "flash") and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _load_flash():
        return _FLASH_NAME
    if _BACKEND == "flash":
        raise RuntimeError("flash-attn needs CUDA tensors in float16/bfloat16")
    # on CUDA, SDPA's cuDNN kernel ran 1.6x faster than its flash kernel on the H200 at the denoiser's
    # shape (docs/engine_actionmesh.md); the others stay as fallbacks for shapes/dtypes it refuses
    return "sdpa-cudnn" if _BACKEND in ("auto", "cudnn") and device.type == "cuda" else "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: (B, H, Sq, d), k/v: (B, H, Sk, d) -> (B, H, Sq, d); scale 1/sqrt(d), no mask, no dropout."""
    name = backend_name(q.device, q.dtype)
    if name == "sdpa-cudnn":
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        with sdpa_kernel(order, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v)
    if name != "sdpa":
        out = _FLASH(*(t.transpose(1, 2).contiguous() for t in (q, k, v)))
        if isinstance(out, tuple):  # flash-attn 4 returns (out, lse)
            out = out[0]
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)

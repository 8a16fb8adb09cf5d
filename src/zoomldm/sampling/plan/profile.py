"""Activation memory and FLOPs of the networks from a shape-only trace: one forward pass of the UNet, the
VQ decoder and the VQ encoder on ``meta`` tensors (no arithmetic) under a dispatch mode that records every
allocation and its release (:func:`activation_profile`); the dtype names of the plan and their sizes.
"""

from __future__ import annotations

import functools
import json
import weakref
from typing import Any

from ...config import ZoomLDMConfig
from .model import _config_key

#: margin on the traced activation peaks: the meta-device trace counts tensors, not the allocator; measured
#: against the resident-memory growth of real CPU forward passes it was 0.76–1.5× of the truth (brca VQ
#: decode ×2: 1 GiB traced / 780 MiB measured; brca VQ encode ×2: 322 / 347 MiB; tiny VQ decode ×4: 193 /
#: 264 MiB; tiny UNet ×8 rows: 88 / 134 MiB)
ACTIVATION_MARGIN = 1.25


class _PeakMemory:
    """A dispatch mode that adds every new tensor's storage on allocation and subtracts it on release: the
    peak of live activation bytes of the code it wraps (no allocator caching or fragmentation)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                from torch.utils._pytree import tree_flatten

                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if hasattr(t, "untyped_storage") and not t._is_view():
                        n = t.untyped_storage().nbytes()
                        outer.live += n
                        outer.peak = max(outer.peak, outer.live)
                        weakref.finalize(t, outer._free, n)
                return out

        self.mode = Mode()
        self.live = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n


@functools.lru_cache(maxsize=16)
def _profile_cached(key: str, dtype: str, vae_dtype: str) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ...models.autoencoder import build_vae
    from ...models.unet import build_unet

    cfg = ZoomLDMConfig.from_dict(json.loads(key))
    dt, vdt = _torch_dtype(dtype), _torch_dtype(vae_dtype)
    with torch.device("meta"):
        unet, vae = build_unet(cfg.unet), build_vae(cfg.vae)
    if dt != torch.float32:
        unet = unet.to(dt)
    if vdt != torch.float32:
        vae = vae.to(vdt)
    C, P, S, D = cfg.unet["in_channels"], cfg.latent_size, cfg.image_size, cfg.context_dim
    result: dict[str, float] = {}

    def measure(name: str, fn, batch: int) -> None:
        peak, flops = _PeakMemory(), FlopCounterMode(display=False)
        with torch.no_grad(), _fused_attention() as attention_flops, flops, peak.mode:
            fn(batch)
        result[f"{name}_{batch}"] = float(peak.peak)
        result[f"{name}_flops_{batch}"] = float(flops.get_total_flops() + attention_flops[0])

    def run_unet(b):
        x = torch.zeros(b, C, P, P, device="meta", dtype=dt)
        unet(
            x,
            torch.zeros(b, device="meta"),
            encoder_hidden_states=torch.zeros(b, 65, D, device="meta", dtype=dt),
        )

    def run_decode(b):
        vae.decode(torch.zeros(b, C, P, P, device="meta", dtype=vdt))

    def run_encode(b):
        vae.encode(torch.zeros(b, 3, S, S, device="meta", dtype=vdt))

    for name, fn in (("unet", run_unet), ("decode", run_decode), ("encode", run_encode)):
        for b in (1, 2):
            measure(name, fn, b)
    return result


class _fused_attention:
    """Replace ``F.scaled_dot_product_attention`` during a meta trace by its output allocation alone, and
    count its FLOPs (4·B·H·L·S·E): on ``meta`` PyTorch would trace the unfused math path and record the
    L×S score matrices, which the fused CPU and CUDA kernels never allocate (measured: the traced VQ encoder
    of the tiny preset was 4× its real peak with them)."""

    def __enter__(self) -> list[float]:
        import torch
        import torch.nn.functional as F

        self.original = F.scaled_dot_product_attention
        counter = self.counter = [0.0]

        def fused(q, k, v, *args, **kwargs):
            counter[0] += 4.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
            return torch.empty(*q.shape[:-1], v.shape[-1], device=q.device, dtype=q.dtype)

        F.scaled_dot_product_attention = fused
        return counter

    def __exit__(self, *exc: object) -> None:
        import torch.nn.functional as F

        F.scaled_dot_product_attention = self.original


def activation_profile(config: ZoomLDMConfig, dtype: str = "float32", vae_dtype: str = "float32") -> dict:
    """Per-item activation bytes and FLOPs of one UNet row, one VQ decode and one VQ encode, and their
    fixed parts, from forward passes on the ``meta`` device (shapes only): ``{"unet": (fixed, per_item),
    "unet_flops": per_item, …}``. Peak activation memory of a batch is affine in its size (as in
    :mod:`.memory`), so two probes (1 and 2 items) give both parts."""
    raw = _profile_cached(_config_key(config), dtype, vae_dtype)
    out: dict[str, Any] = {}
    for name in ("unet", "decode", "encode"):
        one, two = raw[f"{name}_1"], raw[f"{name}_2"]
        per = max(two - one, 0.0)
        out[name] = (ACTIVATION_MARGIN * max(one - per, 0.0), ACTIVATION_MARGIN * per)
        out[f"{name}_flops"] = raw[f"{name}_flops_1"]
    return out


def _torch_dtype(name: str):
    """The pipeline's dtype names (``float32``/``fp32``, ``float16``/``fp16``, ``bfloat16``/``bf16``)."""
    from ...dtypes import torch_dtype

    return torch_dtype(name)


def _dtype_bytes(name: str) -> int:
    return 4 if _torch_dtype(name).itemsize == 4 else 2

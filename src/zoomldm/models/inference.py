"""Inference-only speed settings for the UNet and the VQ autoencoder (sampling, joint sampling, features).

Every setting is an exact re-arrangement of the same arithmetic, so outputs change only by floating-point
rounding (tested in ``tests/models/test_inference.py``):

* **fused QKV** (diffusers' ``fuse_projections``): one ``[3C, C]`` matmul instead of the q, k and v ones in
  every self-attention (k and v in cross-attention) of the UNet and of the VQ's mid-block attention;
* **channels_last**: convolution weights in NHWC, the layout tensor cores want; PyTorch then runs the
  convolutions in NHWC without the per-call transposes of NCHW half-precision convolutions. On by default
  only on CUDA: on a CPU it was slower for the UNet (measured on the development machine, see
  ``benchmarks/RESULTS.md``);
* **compile**: ``nn.Module.compile`` (in place, so ``.config``, ``.dtype`` and the state-dict keys stay those
  of the diffusers model) of the UNet and of the VQ encoder and decoder.

Fused projections add ``to_qkv`` / ``to_kv`` layers next to the original ``to_q``/``to_k``/``to_v`` (which
keep their weights). :func:`unfused` removes them for the duration of a ``state_dict`` / ``save_pretrained``
so checkpoints never contain them, and puts them back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

_FUSED = ("to_qkv", "to_kv", "to_added_qkv")


def _attention_modules(module: torch.nn.Module) -> list[Attention]:
    return [m for m in module.modules() if isinstance(m, Attention)]


def fuse_qkv(module: torch.nn.Module) -> int:
    """Fuse the q/k/v projections of every diffusers ``Attention`` in ``module``; returns how many."""
    count = 0
    for attn in _attention_modules(module):
        if getattr(attn, "fused_projections", False):
            continue
        with torch.no_grad():
            attn.fuse_projections(fuse=True)
        attn.set_processor(FusedAttnProcessor2_0())
        count += 1
    return count


def unfuse_qkv(module: torch.nn.Module) -> int:
    """Undo :func:`fuse_qkv`: drop the fused layers, back to the scaled-dot-product processor."""
    count = 0
    for attn in _attention_modules(module):
        if not getattr(attn, "fused_projections", False):
            continue
        for name in _FUSED:
            if hasattr(attn, name):
                delattr(attn, name)
        attn.fused_projections = False
        attn.set_processor(AttnProcessor2_0())
        count += 1
    return count


def fused_count(module: torch.nn.Module) -> int:
    """How many attention modules of ``module`` have fused projections."""
    return sum(bool(getattr(a, "fused_projections", False)) for a in _attention_modules(module))


def is_fused(module: torch.nn.Module) -> bool:
    return fused_count(module) > 0


@contextlib.contextmanager
def unfused(*modules: torch.nn.Module) -> Iterator[None]:
    """Temporarily remove fused projections (their weights are copies of ``to_q/k/v``) so that state dicts
    and saved checkpoints hold only the model's own keys."""
    refuse = [m for m in modules if is_fused(m)]
    for m in refuse:
        unfuse_qkv(m)
    try:
        yield
    finally:
        for m in refuse:
            fuse_qkv(m)


def optimize_for_inference(
    unet: torch.nn.Module,
    vae: torch.nn.Module | None = None,
    *,
    channels_last: bool | None = None,
    fuse_projections: bool = True,
    compile: bool | str = False,
) -> dict:
    """Apply the settings in place and return what was applied (recorded in sampling provenance).

    Args:
        unet, vae: the networks (``vae=None``: the UNet alone, e.g. a second, live-weight UNet).
        channels_last: NHWC convolution weights (default: on for CUDA, off elsewhere).
        fuse_projections: fused QKV projections in the UNet and the VQ attention.
        compile: ``False``, ``True`` (torch.compile default mode) or a mode name
            (``"max-autotune"``, ``"reduce-overhead"``, ``"max-autotune-no-cudagraphs"``).
    """
    device = next(unet.parameters()).device
    if channels_last is None:
        channels_last = device.type == "cuda"
    applied: dict = {"channels_last": bool(channels_last), "fused_qkv": 0, "compile": compile or False}
    networks = [unet] if vae is None else [unet, vae]
    if fuse_projections:
        for module in networks:
            fuse_qkv(module)
    applied["fused_qkv"] = sum(fused_count(m) for m in networks)  # also those fused by an earlier call
    if channels_last:
        for module in networks:
            module.to(memory_format=torch.channels_last)
    if compile:
        modes = {"default", "max-autotune", "reduce-overhead", "max-autotune-no-cudagraphs"}
        mode = None if compile is True else str(compile)
        if mode is not None and mode not in modes:
            raise ValueError(f"unknown torch.compile mode {compile!r}; expected one of {sorted(modes)}")
        for module in [unet] if vae is None else [unet, vae.encoder, vae.decoder]:
            module.compile(mode=None if mode == "default" else mode)
    return applied

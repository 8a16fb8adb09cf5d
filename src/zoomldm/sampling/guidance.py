"""Classifier-free guidance: one batched UNet call for the conditional and unconditional branches.

``e = e_u + s·(e_c − e_u)`` with the unconditional context = zeros (SPEC §3). ``s`` is the diffusers
convention (s = 1: no guidance); the large-image code's ``(w+1)·e_c − w·e_u`` is the same with s = w + 1.
Rows are evaluated in chunks of ``chunk_size`` so that large tile batches fit in GPU memory.
"""

from __future__ import annotations

import torch


def unet_eps(
    unet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """ε = UNet(x, t, context) in the UNet's dtype, returned as float32, optionally in row chunks."""
    dtype = unet.dtype
    t = torch.as_tensor(t, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    step = chunk_size or x.shape[0]
    outs = []
    for i in range(0, x.shape[0], step):
        out = unet(
            x[i : i + step].to(dtype), t[i : i + step], encoder_hidden_states=context[i : i + step].to(dtype)
        ).sample
        outs.append(out.float())
    return torch.cat(outs)


def guided_eps(
    unet,
    x: torch.Tensor,
    t: torch.Tensor | int | float,
    context: torch.Tensor,
    guidance_scale: float,
    uncond: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Guided ε for latents ``x`` [B,C,H,W] and contexts [B,T,D]; one batch ``[uncond, cond]``."""
    if guidance_scale == 1.0:
        return unet_eps(unet, x, t, context, chunk_size)
    if uncond is None:
        uncond = torch.zeros_like(context)
    t = torch.as_tensor(t, device=x.device)
    t2 = t.expand(x.shape[0]).repeat(2) if t.dim() == 0 else t.repeat(2)
    eps = unet_eps(unet, torch.cat([x, x]), t2, torch.cat([uncond, context]), chunk_size)
    e_u, e_c = eps.chunk(2)
    return e_u + guidance_scale * (e_c - e_u)

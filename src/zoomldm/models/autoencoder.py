"""The VQ-f4 autoencoder: a diffusers ``VQModel`` with the official quantiser distance (SPEC §2.3).

``vae.encode(x).latents`` is the official ``encode`` (encoder + quant_conv, not quantised) and
``vae.decode(h).sample`` quantises first, as the official ``decode_first_stage``.

Why a quantiser subclass: diffusers picks codes by ``argmin(cdist(z, e))`` while the official taming
``VectorQuantizer2`` uses ``argmin(|z|² + |e|² − 2 z·e)``. The two round differently, so at near-ties the
chosen code can differ (2 in 262,144 random latents, ../shared/compat/DIFFUSERS.md). Keeping the official
formula makes indices tie-exact; parameters and state-dict keys are diffusers' own.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import VQModel
from diffusers.models.autoencoders.vae import VectorQuantizer


class OfficialVectorQuantizer(VectorQuantizer):
    """diffusers' ``VectorQuantizer`` with the official (taming, legacy) nearest-code distance."""

    #: largest distance matrix built at once (elements; 2^27 = 512 MiB in float32)
    max_distance_elements: int = 2**27

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.vq_embed_dim)
        codebook = self.embedding.weight
        code_sq = codebook.pow(2).sum(dim=1)
        # The [rows, n_codes] distance matrix is built in row chunks so that its memory is bounded
        # (64 tiles of 64² latents × 8192 codes would be 8.6 GB in float32 at once). Every row's distances
        # are computed by the same formula either way, so the chosen codes do not depend on the chunking.
        step = max(1, self.max_distance_elements // max(1, codebook.shape[0]))
        indices = torch.cat(
            [
                torch.argmin(
                    rows.pow(2).sum(dim=1, keepdim=True)
                    + code_sq
                    - 2 * torch.einsum("bd,dn->bn", rows, codebook.t()),
                    dim=1,
                )
                for rows in flat.split(step)
            ]
        )
        z_q = self.embedding(indices).view(z.shape)
        if self.legacy:
            loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        else:
            loss = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()  # straight-through, as the official code
        z_q = z_q.permute(0, 3, 1, 2).contiguous()
        if self.sane_index_shape:
            indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        else:
            indices = indices.reshape(-1, 1)
        return z_q, loss, (None, None, indices)


def use_official_quantizer(vae: VQModel) -> VQModel:
    """Switch ``vae.quantize`` to the official distance in place (same parameters and keys)."""
    if vae.quantize.remap is not None:
        raise ValueError("index remapping is not used by ZoomLDM's VQ-f4")
    vae.quantize.__class__ = OfficialVectorQuantizer
    return vae


def build_vae(config: dict[str, Any]) -> VQModel:
    """A randomly initialised VQ-f4 with the given diffusers config (``ZoomLDMConfig.vae``)."""
    return use_official_quantizer(VQModel(**config))


@torch.no_grad()
def rescale_latents(vae: VQModel, scale: float) -> VQModel:
    """Multiply the VQ-f4's latent space by ``scale``, exactly, in place: ``encode`` returns ``scale·h`` and
    ``decode(scale·h)`` equals the old ``decode(h)``.

    ``quant_conv`` (the last layer of ``encode``) and the codebook are multiplied by ``scale`` and the input
    weights of ``post_quant_conv`` divided by it. A uniform factor multiplies every code distance by
    ``scale²``, so the nearest code, hence the decoded image, is unchanged (up to float rounding).

    Why: ZoomLDM's latents are used unscaled (SPEC §10.3: the diffusion schedule sees the VQ's raw
    latents; ``scaling_factor`` is 1), and the β schedule assumes latents of about unit spread, as the
    official VQ-f4's are. A freshly trained VQ has no such guarantee (the embedded tiny VQ's latents had a
    std of 0.23, which put the signal below the noise from t ≈ 100 on); ``zoomldm train-vae`` therefore
    exports its VQ rescaled to unit latent std (:func:`zoomldm.train.vae.latent_scale`).
    """
    if not (scale > 0 and torch.isfinite(torch.tensor(scale))):
        raise ValueError(f"latent scale must be a positive finite number, got {scale!r}")
    vae.quant_conv.weight.mul_(scale)
    if vae.quant_conv.bias is not None:
        vae.quant_conv.bias.mul_(scale)
    vae.quantize.embedding.weight.mul_(scale)
    vae.post_quant_conv.weight.div_(scale)
    return vae

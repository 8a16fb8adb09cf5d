"""The ZoomLDM UNet: a diffusers ``UNet2DConditionModel`` built from the config (SPEC §2.2).

The official ``openaimodel.UNetModel`` maps exactly onto it (block_out_channels 192/384/576/960, one
attention head as wide as the block, cross-attention to the 65 Summarizer tokens); diffusers' defaults
(``flip_sin_to_cos=True``, ``freq_shift=0``, GroupNorm 32 / eps 1e-5, GEGLU) are already the official ones.
"""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DConditionModel


def build_unet(config: dict[str, Any]) -> UNet2DConditionModel:
    """A randomly initialised UNet with the given diffusers config (``ZoomLDMConfig.unet``)."""
    return UNet2DConditionModel(**config)

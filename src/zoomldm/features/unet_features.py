"""ZoomLDM UNet features of 256² images: noise the latent to a small t, run the conditioned UNet, pool blocks.

SPEC §7 (a reconstruction; the authors published no feature code): each tile's VQ latent ``z0`` (SPEC §2.3,
unquantised) is noised to timestep ``t`` with the official schedule, ``x_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε``, and the
UNet is run at ``t`` with the Summarizer tokens of the tile's own SSL grid and magnification. Forward hooks
capture the output of the chosen blocks — ``mid`` (the middle block) and ``up<i>`` (``unet.up_blocks[i]``,
the decoder; ``up0`` is the coarsest) — the blocks whose outputs the official ``return_intermediates``
returns (its 12 ``output_blocks`` are grouped three per diffusers up block). Each block output is
global-average-pooled and the pooled vectors are concatenated in the order asked.

``ε`` is one ``N(0, I)`` latent drawn from ``seed`` and shared by every tile: a tile's feature then depends
on nothing but the tile (not on batch size, order, worker or slide), and differences between tiles are
never noise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..errors import ZoomLDMError, quoted
from ..scales import Magnification
from ..schedule import make_scheduler

_BLOCK = re.compile(r"^(mid|up([0-9]{1,4}))$")  # ASCII digits: int() refuses others and 5000-digit numbers


class _Captured(Exception):
    """Raised by the hook of the last block needed: the rest of the decoder (its most expensive,
    full-resolution blocks) and the output convolution are skipped."""


def parse_blocks(blocks: str | Sequence[str], n_up: int) -> tuple[str, ...]:
    """Validate block names (``mid``, ``up0`` … ``up<n_up-1>``) given as a list or ``"mid,up1"``."""
    names = [
        b.strip().lower() for b in (blocks.split(",") if isinstance(blocks, str) else blocks) if b.strip()
    ]
    if not names:
        raise ZoomLDMError("give at least one UNet block, e.g. --blocks mid,up1")
    for name in names:
        match = _BLOCK.match(name)
        if match is None or (match.group(2) is not None and int(match.group(2)) >= n_up):
            raise ZoomLDMError(f"unknown UNet block {quoted(name)}; this UNet has mid and up0..up{n_up - 1}")
    if len(set(names)) != len(names):
        raise ZoomLDMError(f"a UNet block is named twice in {names}")
    return tuple(names)


def block_channels(unet: Any, name: str) -> int:
    """Channels of a block's output (diffusers ``UNet2DConditionModel`` config)."""
    channels = list(unet.config.block_out_channels)
    return channels[-1] if name == "mid" else list(reversed(channels))[int(name[2:])]


class UNetFeatureExtractor:
    """Pooled UNet block features of 256² images for a loaded model (:class:`~zoomldm.models.bundle.ZoomLDMModel`).

    Args:
        pipe: the model (its ``vae``, ``unet``, ``summarizer`` and schedule are used as they are).
        blocks: block names, see :func:`parse_blocks`.
        timestep: the noise level ``t`` in ``0 … T−1`` (small: the image stays recognisable).
        seed: seed of the shared noise latent.
    """

    def __init__(
        self, pipe: Any, blocks: str | Sequence[str] = ("mid", "up1"), timestep: int = 100, seed: int = 0
    ):
        self.pipe = pipe
        self.blocks = parse_blocks(blocks, len(pipe.unet.up_blocks))
        total = int(pipe.config.schedule["num_train_timesteps"])
        if not 0 <= int(timestep) < total:
            raise ZoomLDMError(f"--timestep must be in 0..{total - 1}, got {timestep}")
        self.timestep = int(timestep)
        self.seed = int(seed)
        self.scheduler = make_scheduler("ddim", pipe.config.schedule)  # add_noise on the official ᾱ
        self._noise: torch.Tensor | None = None

    @property
    def dims(self) -> dict[str, int]:
        """Feature size of each block (its channel count)."""
        return {name: block_channels(self.pipe.unet, name) for name in self.blocks}

    @property
    def dim(self) -> int:
        return sum(self.dims.values())

    def describe(self) -> dict[str, Any]:
        """Settings recorded in every feature file."""
        return {
            "timestep": self.timestep,
            "blocks": ",".join(self.blocks),
            "block_dims": ",".join(str(d) for d in self.dims.values()),
            "pooling": "global average",
            "noise": f"one N(0, I) latent from seed {self.seed}, shared by all tiles; official schedule add_noise",
            "seed": self.seed,
        }

    def noise(self, shape: Sequence[int]) -> torch.Tensor:
        """The shared noise latent ``[C, h, w]`` (float32, CPU), drawn once from the seed."""
        if self._noise is None or tuple(self._noise.shape) != tuple(shape):
            generator = torch.Generator().manual_seed(self.seed)
            self._noise = torch.randn(tuple(shape), generator=generator)
        return self._noise

    @contextmanager
    def _hooks(self, store: dict[str, torch.Tensor]):
        unet = self.pipe.unet
        modules = {
            name: unet.mid_block if name == "mid" else unet.up_blocks[int(name[2:])] for name in self.blocks
        }

        order = ["mid", *(f"up{i}" for i in range(len(unet.up_blocks)))]  # execution order
        last = max(self.blocks, key=order.index)

        def hook(name: str):
            def capture(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
                tensor = output[0] if isinstance(output, tuple) else output
                store[name] = tensor.float().mean(dim=(-2, -1))  # global average pool → [B, C]
                if name == last:
                    raise _Captured

            return capture

        handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def __call__(
        self,
        images: np.ndarray | torch.Tensor,
        grids: Sequence[torch.Tensor],
        magnification: str | int | Magnification,
    ) -> np.ndarray:
        """Features ``[B, dim]`` float32 of uint8 images ``[B, 256, 256, 3]`` and their raw SSL grids.

        Args:
            images: uint8 ``[B, H, W, 3]`` (numpy or torch), or float ``[B, 3, H, W]`` in ``[-1, 1]``.
            grids: one raw (unpooled) SSL grid ``[C, h, w]`` per image (pooled + standardised here).
            magnification: the images' magnification (the Summarizer's magnification token).
        """
        x = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else torch.as_tensor(images)
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if len(grids) != x.shape[0]:
            raise ZoomLDMError(f"got {len(grids)} SSL grids for {x.shape[0]} images")
        pipe = self.pipe
        latents = pipe.encode_images(x)  # unquantised, unscaled [B, 3, h, w] float32 (SPEC §10.3)
        noise = self.noise(latents.shape[1:]).to(latents.device).expand_as(latents)
        t = torch.full((latents.shape[0],), self.timestep, dtype=torch.long, device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        context = pipe.condition(list(grids), magnification)
        captured: dict[str, torch.Tensor] = {}
        with self._hooks(captured):
            dtype = pipe.dtype
            try:
                pipe.unet(noisy.to(dtype), t, encoder_hidden_states=context.to(dtype))
            except _Captured:
                pass
        return torch.cat([captured[name] for name in self.blocks], dim=1).cpu().numpy()

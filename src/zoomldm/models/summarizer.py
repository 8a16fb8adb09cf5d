"""The Summarizer: magnification-aware conditioner (official ``EmbeddingViT2_5``, SPEC §2.1).

It turns a grid of SSL embeddings (one per 256² base tile, row-major) and a magnification index into
the 65 cross-attention tokens of the UNet:

1. tokens = ``dim_reduce`` of the row-major grid tokens;
2. layout among ``seq_length`` (64) positions: an 8×8 grid is used as is; a smaller grid of n tokens is
   placed at positions ``32 − n//2 … 32 − n//2 + n − 1`` with the learned ``pad_token`` everywhere else
   (1×1 → position 32, 2×2 → 30..33, 4×4 → 24..39: exactly the official layout);
3. the magnification embedding is prepended (position 0), torchvision's ViT ``Encoder`` (same keys and
   numbers as the official one), ``final_proj``, and a last LayerNorm.

Beyond the official code (which fails on these inputs):

* **odd or non-square grids** (3×3, 2×4, …) use the same centring rule ``32 − n//2``; for even n it is
  the official rule, and for odd n it centres the tokens with the extra one on the right;
* **grids larger than 8×8** are average-pooled to at most 8×8 per side (``adaptive_avg_pool2d``), as the
  authors' data loaders do before the model. Note that training standardises each token *after*
  pooling (SPEC §1.4): use :func:`zoomldm.conditioning.prepare_grid` on raw grids, which pools and then
  standardises, so this in-model pooling only matters for callers that skip it.

Classifier-free dropout is not part of ``forward``: the trainer applies :meth:`drop_conditions` (whole
contexts zeroed after the final LayerNorm, the official and only unconditional signal). So there is no
``p_uncond`` to forget to zero at inference (the official pitfall, SPEC §9e).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torchvision.models.vision_transformer import Encoder

from ..errors import ZoomLDMError

GridInput = torch.Tensor | Sequence[torch.Tensor]


class Summarizer(ModelMixin, ConfigMixin):
    """Grid of SSL embeddings + magnification → ``[B, 1 + seq_length, hidden]`` context tokens."""

    @register_to_config
    def __init__(
        self,
        input_channels: int = 1024,
        hidden_channels: int = 512,
        mlp_dim: int = 2048,
        num_layers: int = 12,
        num_heads: int = 8,
        mag_levels: int = 8,
        seq_length: int = 64,
    ) -> None:
        super().__init__()
        self.mag_embedding = nn.Embedding(mag_levels, hidden_channels)
        self.dim_reduce = nn.Linear(input_channels, hidden_channels)
        self.pad_token = nn.Parameter(torch.randn(1, 1, hidden_channels))
        self.encoder = Encoder(
            seq_length=seq_length + 1,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_channels,
            mlp_dim=mlp_dim,
            dropout=0.0,
            attention_dropout=0.0,
        )
        self.final_proj = nn.Linear(hidden_channels, hidden_channels)
        self.layer_norm = nn.LayerNorm(hidden_channels)

    @property
    def max_side(self) -> int:
        return int(math.isqrt(self.config.seq_length))

    # ------------------------------------------------------------------------------------------
    def _as_list(self, ssl: GridInput) -> list[torch.Tensor]:
        grids = list(ssl.unbind(0)) if isinstance(ssl, torch.Tensor) and ssl.dim() == 4 else list(ssl)
        out = []
        for g in grids:
            if g.dim() == 1:  # a single 20x embedding
                g = g[:, None, None]
            elif g.dim() == 2:  # official 2-D inputs are unsqueezed
                g = g[:, None, :]
            if g.dim() != 3:
                raise ZoomLDMError(f"an SSL grid must be [C, h, w]; got shape {tuple(g.shape)}")
            if g.shape[0] != self.config.input_channels:
                raise ZoomLDMError(
                    f"SSL grid has {g.shape[0]} channels; this model expects {self.config.input_channels} "
                    "(the embedding size of its SSL encoder, e.g. 1024 for UNI / DINOv2 ViT-L)"
                )
            h, w = g.shape[-2:]
            s = self.max_side
            if h > s or w > s:
                g = F.adaptive_avg_pool2d(g[None], (min(h, s), min(w, s)))[0]
            out.append(g)
        return out

    def embed_grids(self, ssl: GridInput) -> torch.Tensor:
        """Dim-reduced tokens laid out among ``seq_length`` positions: ``[B, seq_length, hidden]``."""
        grids = self._as_list(ssl)
        seq, hidden = self.config.seq_length, self.config.hidden_channels
        dtype = self.dim_reduce.weight.dtype
        out = self.pad_token.to(dtype).expand(len(grids), seq, hidden).clone()
        # group equal sizes so a batch of many 1×1 tiles is one matmul
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(grids):
            by_shape.setdefault(tuple(g.shape[-2:]), []).append(i)
        for (h, w), idx in by_shape.items():
            stacked = torch.stack([grids[i] for i in idx]).to(device=out.device, dtype=dtype)
            tokens = self.dim_reduce(stacked.flatten(2).transpose(1, 2))  # row-major [b, n, hidden]
            n = h * w
            start = 0 if n == seq else seq // 2 - n // 2
            out[idx, start : start + n] = tokens.to(out.dtype)  # autocast may give half-precision tokens
        return out

    def forward(self, ssl: GridInput, magnification: torch.Tensor | int | Sequence[int]) -> torch.Tensor:
        """Context tokens ``[B, 1 + seq_length, hidden]`` for grids ``ssl`` at level ``magnification``."""
        x = self.embed_grids(ssl)
        mag = torch.as_tensor(magnification, device=x.device).long().reshape(-1)
        if mag.numel() == 1 and x.shape[0] > 1:
            mag = mag.expand(x.shape[0])
        if mag.numel() != x.shape[0]:
            raise ZoomLDMError(f"got {x.shape[0]} grids but {mag.numel()} magnification indices")
        if int(mag.min()) < 0 or int(mag.max()) >= self.config.mag_levels:
            raise ZoomLDMError(
                f"magnification index out of range 0..{self.config.mag_levels - 1}: {mag.tolist()}"
            )
        x = torch.cat([self.mag_embedding(mag)[:, None], x], dim=1)
        x = self.encoder(x)
        return self.layer_norm(self.final_proj(x))

    @staticmethod
    def drop_conditions(
        context: torch.Tensor, p: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Classifier-free dropout: zero whole contexts with probability ``p`` (official ``encode``)."""
        if p <= 0:
            return context
        device = generator.device if generator is not None else context.device
        keep = torch.rand(context.shape[0], generator=generator, device=device) >= p
        return context * keep[:, None, None].to(device=context.device, dtype=context.dtype)

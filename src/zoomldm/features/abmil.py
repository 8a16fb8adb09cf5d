"""Gated attention MIL (ABMIL; Ilse, Tomczak & Welling, ICML 2018, "Attention-based Deep Multiple Instance
Learning", gated variant, eq. 9).

A bag of tile features ``h_k`` is embedded (``Linear → ReLU → Dropout``), each tile gets the attention score
``a_k ∝ exp(wᵀ(tanh(V h_k) ⊙ sigm(U h_k)))`` (softmax over the bag), the bag embedding is ``Σ a_k h_k``,
and a linear layer gives the class logits. Defaults follow CONVENTIONS.md (the CLAM/TRIDENT setting):
embedding 512, attention hidden 256, dropout 0.25.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ZoomLDMError
from ..fsutil import atomic_path


@dataclass(frozen=True)
class ABMILConfig:
    """Architecture of :class:`GatedABMIL` (stored in the model file's metadata)."""

    in_dim: int
    n_classes: int
    embed_dim: int = 512
    attn_dim: int = 256
    dropout: float = 0.25


class GatedABMIL(nn.Module):
    """Gated-attention MIL classifier over bags of tile features."""

    def __init__(self, config: ABMILConfig) -> None:
        super().__init__()
        if config.n_classes < 2:
            raise ZoomLDMError(f"ABMIL needs at least 2 classes, got {config.n_classes}")
        self.config = config
        self.embed = nn.Sequential(
            nn.Linear(config.in_dim, config.embed_dim), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.attention_v = nn.Sequential(
            nn.Linear(config.embed_dim, config.attn_dim), nn.Tanh(), nn.Dropout(config.dropout)
        )
        self.attention_u = nn.Sequential(
            nn.Linear(config.embed_dim, config.attn_dim), nn.Sigmoid(), nn.Dropout(config.dropout)
        )
        self.attention_w = nn.Linear(config.attn_dim, 1)
        self.classifier = nn.Linear(config.embed_dim, config.n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and attention weights of one bag or a padded batch of bags.

        Args:
            x: ``[N, D]`` (one bag) or ``[B, N, D]`` (bags padded to a common N).
            mask: ``[B, N]`` bool, True for real tiles (only with batched input).

        Returns:
            ``(logits, attention)``: ``[C]`` and ``[N]`` for one bag, ``[B, C]`` and ``[B, N]`` for a batch;
            attention is softmax-normalised over each bag's tiles (padding gets 0).
        """
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.config.in_dim:
            raise ZoomLDMError(
                f"ABMIL expects bags of {self.config.in_dim}-d features, got shape {tuple(x.shape)}"
            )
        h = self.embed(x)  # [B, N, E]
        scores = self.attention_w(self.attention_v(h) * self.attention_u(h)).squeeze(-1)  # [B, N]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=-1)
        logits = self.classifier(torch.einsum("bn,bne->be", attention, h))
        if single:
            return logits[0], attention[0]
        return logits, attention


def save_abmil(model: GatedABMIL, path: str | Path, classes: list[str], extra: dict | None = None) -> Path:
    """Save weights as safetensors; the architecture, class names and ``extra`` go into the file's metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {
        "format": "pt",
        "abmil_config": json.dumps(asdict(model.config)),
        "classes": json.dumps(classes),
    }
    if extra:
        metadata["extra"] = json.dumps(extra, default=str)
    with atomic_path(path) as tmp:  # also gives the umask's permissions (safetensors writes 0600)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
            str(tmp),
            metadata=metadata,
        )
    return path


def load_abmil(path: str | Path, device: str | torch.device = "cpu") -> tuple[GatedABMIL, list[str], dict]:
    """Load a model written by :func:`save_abmil`: ``(model in eval mode, class names, extra metadata)``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise ZoomLDMError(f"{path}: not a safetensors MIL model ({err})") from None
    if "abmil_config" not in metadata or "classes" not in metadata:
        raise ZoomLDMError(f"{path}: no ABMIL metadata; expected a model written by 'zoomldm mil train'")
    model = GatedABMIL(ABMILConfig(**json.loads(metadata["abmil_config"])))
    model.load_state_dict(load_file(str(path)))
    model.to(device).eval()
    return model, list(json.loads(metadata["classes"])), json.loads(metadata.get("extra", "{}"))

"""The Conditioning Diffusion Model (CDM): a DiT over the Summarizer's 65 output tokens (SPEC §6).

The CDM generates what the Summarizer would output for a magnification level, so ZoomLDM can sample
patches without a reference image: its samples go straight to the UNet as cross-attention context.

Architecture (the authors' ``cdm_dit/models.py``, a DiT adapted to a 1-D token sequence):

* ``x_embedder``: ``Linear(token_dim → hidden)`` applied to each token, plus a **fixed** 1-D sin-cos
  positional embedding over the 65 positions (``pos_embed``, MAE/DiT layout ``[sin | cos]``);
* ``t_embedder``: a 256-d sinusoidal timestep embedding (``[cos | sin]``) → ``Linear, SiLU, Linear``;
* ``y_embedder``: ``Embedding(levels, hidden)`` for the magnification (one more row only when
  ``class_dropout_prob > 0``; the authors use 0, so the CDM has no classifier-free guidance);
  the conditioning vector is ``c = t_emb + y_emb``;
* ``depth`` adaLN-Zero DiT blocks (LayerNorm without affine, eps 1e-6; timm ``Attention`` with qkv bias;
  timm ``Mlp`` with ratio 4 and tanh-GELU; ``SiLU, Linear(hidden → 6·hidden)`` modulation);
* ``final_layer``: adaLN (``2·hidden``) + ``Linear(hidden → 2·token_dim)`` (``learn_sigma`` doubles the
  output: the first ``token_dim`` channels are x̂0, the last ones the learned-range variance values).

Layout: the official DiT takes and returns channels-first ``[B, 512, 65]`` and transposes to tokens
internally. Our public API is token-major — ``forward(tokens [B, 65, D], t, magnification)`` returns
``[B, 65, 2·D]`` — which is the official computation without the two transposes; the state-dict keys
are the official ones, so the authors' checkpoints load as they are (:func:`load_official_cdm`).
Presets (:data:`CDM_PRESETS`): DiT-S/B/L/XL, DiT-B by default (the authors' README).

``pos_embed`` is a persistent buffer here (the official code makes it a ``Parameter`` with
``requires_grad=False``): same key and values, but it is not counted as a parameter and an optimizer or
EMA never touches it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from timm.layers import Attention, Mlp
from torch import nn

from ..errors import CheckpointError, ConfigError, ZoomLDMError
from ..tensorfiles import load_pretrained_component, load_safetensors, load_torch

#: DiT sizes of the authors' ``DiT_models`` table (depth, hidden size, heads); DiT-B is their default.
CDM_PRESETS: dict[str, dict[str, int]] = {
    "DiT-S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "DiT-B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "DiT-L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
    "DiT-XL": {"depth": 28, "hidden_size": 1152, "num_heads": 16},
}
DEFAULT_PRESET = "DiT-B"


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _tanh_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class DiTBlock(nn.Module):
    """Pre-LN transformer block whose norms are modulated (shift, scale) and residuals gated by ``c``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=_tanh_gelu, drop=0.0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (``[cos | sin]``, max period 10000) → MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # diffusers' helper with flip_sin_to_cos=True, shift 0 is exactly the GLIDE/DiT [cos | sin] form
        freq = get_timestep_embedding(
            t, self.frequency_embedding_size, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Magnification index → vector; the extra row (index ``num_classes``) is the dropped label."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, drop: bool) -> torch.Tensor:
        if drop and self.dropout_prob > 0:
            dropped = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(dropped, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, detach_variance: bool = False) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        h = _modulate(self.norm_final(x), shift, scale)
        if not detach_variance or self.linear.out_features % 2:
            return self.linear(h)
        # ``self.linear(h)`` up to float rounding; the variance half sees ``h`` without its gradient, so a loss
        # on it trains the variance rows of this layer only, not the shared trunk (see CDMDiffusion)
        w_mean, w_var = self.linear.weight.chunk(2, dim=0)
        b_mean, b_var = self.linear.bias.chunk(2, dim=0)
        return torch.cat(
            [nn.functional.linear(h, w_mean, b_mean), nn.functional.linear(h.detach(), w_var, b_var)], -1
        )


class ConditioningDiT(ModelMixin, ConfigMixin):
    """DiT that denoises Summarizer tokens ``[B, num_tokens, token_dim]`` given a magnification index.

    Args:
        token_dim: width of a Summarizer token (512 for the published models, 64 for the compat model).
        num_tokens: sequence length (65: the magnification token + 64 grid tokens).
        hidden_size, depth, num_heads: transformer size (see :data:`CDM_PRESETS`).
        mlp_ratio: MLP width / hidden size.
        num_magnifications: number of magnification labels (8 for BRCA, 4 for NAIP).
        class_dropout_prob: label dropout during training (0 in the authors' CDM: no guidance).
        learn_sigma: also output the learned-range variance values (doubles the output width).
        frequency_embedding_size: width of the sinusoidal timestep features.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        token_dim: int = 512,
        num_tokens: int = 65,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_magnifications: int = 8,
        class_dropout_prob: float = 0.0,
        learn_sigma: bool = True,
        frequency_embedding_size: int = 256,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads or hidden_size % 2:
            raise ZoomLDMError(
                f"hidden_size {hidden_size} must be even and divisible by num_heads {num_heads}"
            )
        self.out_channels = token_dim * 2 if learn_sigma else token_dim
        self.gradient_checkpointing = False
        self.x_embedder = nn.Linear(token_dim, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
        self.y_embedder = LabelEmbedder(num_magnifications, hidden_size, class_dropout_prob)
        pos = get_1d_sincos_pos_embed_from_grid(hidden_size, torch.arange(num_tokens, dtype=torch.float64))
        self.register_buffer("pos_embed", pos.float().unsqueeze(0), persistent=True)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, self.out_channels)
        self._init_weights()

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **overrides: Any) -> ConditioningDiT:
        """A model of one of the :data:`CDM_PRESETS` sizes; ``overrides`` set the other arguments."""
        if name not in CDM_PRESETS:
            raise ZoomLDMError(f"unknown CDM preset {name!r}; expected one of {', '.join(CDM_PRESETS)}")
        return cls(**{**CDM_PRESETS[name], **overrides})

    def _init_weights(self) -> None:
        # DiT's initialisation: xavier Linear layers, small label/timestep embeddings, and adaLN-Zero
        # (every block's modulation and the output layer start at zero, so each block is the identity).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        tokens: torch.Tensor,
        timestep: torch.Tensor,
        magnification: torch.Tensor,
        detach_variance: bool = False,
    ) -> torch.Tensor:
        """Predict ``[x̂0 | variance values]`` ``[B, num_tokens, out_channels]`` for noisy ``tokens``.

        Args:
            tokens: ``[B, num_tokens, token_dim]`` noisy tokens x_t.
            timestep: ``[B]`` (or scalar) diffusion step in ``0 … 999`` (the original, not respaced, index).
            magnification: ``LongTensor[B]`` magnification index.
            detach_variance: the same output (up to float rounding), but gradients of the variance values stop at the output
                layer (training: :meth:`~zoomldm.models.cdm_diffusion.CDMDiffusion.training_losses`).
        """
        cfg = self.config
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (cfg.num_tokens, cfg.token_dim):
            raise ZoomLDMError(
                f"CDM input must be [B, {cfg.num_tokens}, {cfg.token_dim}] tokens, got {list(tokens.shape)}"
            )
        batch = tokens.shape[0]
        timestep = torch.as_tensor(timestep, device=tokens.device).reshape(-1).expand(batch)
        magnification = torch.as_tensor(magnification, device=tokens.device).long().reshape(-1).expand(batch)
        if magnification.numel() and (
            magnification.min() < 0 or magnification.max() >= cfg.num_magnifications
        ):
            raise ZoomLDMError(f"magnification index must be in 0..{cfg.num_magnifications - 1}")
        x = self.x_embedder(tokens) + self.pos_embed.to(tokens.dtype)
        c = self.t_embedder(timestep) + self.y_embedder(magnification, drop=self.training)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c)
            else:
                x = block(x, c)
        return self.final_layer(x, c, detach_variance=detach_variance)

    def forward_official(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The authors' calling convention: channels-first ``x [B, token_dim, 65]`` → ``[B, 2·token_dim, 65]``."""
        return self.forward(x.transpose(1, 2), t, y).transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# the authors' checkpoints
# ------------------------------------------------------------------------------------------------
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def _read_cdm_file(path: Path) -> Any:
    """The raw content of a CDM checkpoint file; damaged files, directories and pickles that carry code
    are one-line :class:`CheckpointError` s that name the file (:mod:`zoomldm.tensorfiles`)."""
    if path.suffix == ".safetensors":
        return load_safetensors(path, "safetensors CDM checkpoint")
    # DiT's train script pickles its argparse.Namespace under "args"; allow that one plain class
    return load_torch(path, "PyTorch CDM checkpoint", safe_globals=[argparse.Namespace])


def _select_state(raw: Any, name: str) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """(state dict, where it came from, training args) of a DiT checkpoint in any of the usual layouts."""
    args: dict[str, Any] = {}
    if isinstance(raw, Mapping) and isinstance(raw.get("args"), argparse.Namespace | Mapping):
        args = dict(vars(raw["args"]) if isinstance(raw["args"], argparse.Namespace) else raw["args"])
    source = "flat"
    if isinstance(raw, Mapping):
        for key in ("ema", "model", "state_dict"):  # DiT saves {"model", "ema", "opt", "args"}: EMA first
            if isinstance(raw.get(key), Mapping):
                raw, source = raw[key], key
                break
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{name}: expected a DiT state dict (flat, or under 'ema' / 'model')")
    state = {k.removeprefix("module."): v for k, v in raw.items()}  # DDP-wrapped saves
    return state, source, args


def infer_cdm_config(
    state: Mapping[str, torch.Tensor], preset: str | None = None, num_heads: int | None = None
) -> dict[str, Any]:
    """:class:`ConditioningDiT` arguments read off the shapes of an official DiT state dict.

    Depth, widths, label count and ``learn_sigma`` follow from the shapes; the head count does not
    (``qkv`` is ``[3·hidden, hidden]`` for any head count), so it comes from ``num_heads``, ``preset``, or
    the preset whose depth and hidden size match.
    """

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"missing key {key!r}: not a DiT checkpoint of the authors' CDM layout")
        return state[key]

    hidden, token_dim = need("x_embedder.weight").shape
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))), default=-1)
    if depth == 0:
        raise CheckpointError("missing keys 'blocks.0.*': the checkpoint has no DiT blocks")
    labels = need("y_embedder.embedding_table.weight").shape[0]
    out = need("final_layer.linear.weight").shape[0]
    if out not in (token_dim, 2 * token_dim):
        raise CheckpointError(
            f"key 'final_layer.linear.weight' has {out} outputs; expected {token_dim} or {2 * token_dim}"
        )
    config = {
        "token_dim": int(token_dim),
        "num_tokens": int(need("pos_embed").shape[1]),
        "hidden_size": int(hidden),
        "depth": depth,
        "mlp_ratio": need("blocks.0.mlp.fc1.weight").shape[0] / hidden,
        "num_magnifications": int(labels),
        "learn_sigma": out == 2 * token_dim,
        "frequency_embedding_size": int(need("t_embedder.mlp.0.weight").shape[1]),
    }
    if preset is not None:
        if preset not in CDM_PRESETS:
            raise ZoomLDMError(f"unknown CDM preset {preset!r}; expected one of {', '.join(CDM_PRESETS)}")
        size = CDM_PRESETS[preset]
        if (size["depth"], size["hidden_size"]) != (depth, hidden):
            raise CheckpointError(
                f"preset {preset} has depth {size['depth']} and hidden size {size['hidden_size']}, "
                f"the checkpoint has depth {depth} and hidden size {hidden}"
            )
        num_heads = num_heads or size["num_heads"]
    if num_heads is None:
        matches = [p for p, s in CDM_PRESETS.items() if (s["depth"], s["hidden_size"]) == (depth, hidden)]
        if not matches:
            raise ZoomLDMError(
                f"depth {depth} / hidden size {hidden} is no DiT preset; pass num_heads (heads are not in the weights)"
            )
        num_heads = CDM_PRESETS[matches[0]]["num_heads"]
    config["num_heads"] = int(num_heads)
    return config


def load_official_cdm(
    path: str | Path, preset: str | None = None, num_heads: int | None = None, prefer_ema: bool = True
) -> tuple[ConditioningDiT, dict[str, Any]]:
    """Load the authors' CDM checkpoint (``cdm_dit/train_cdm.py`` output, or a bare DiT state dict).

    Reads ``.pt/.ckpt`` with ``torch.load(weights_only=True)`` (or ``.safetensors``), takes the EMA weights
    of a ``{"model", "ema", "opt", "args"}`` training checkpoint (the authors sample with EMA), infers the
    size from the keys, and checks every key and shape: a missing, unexpected or mis-shaped key is a
    :class:`~zoomldm.errors.CheckpointError` that names it.

    Returns:
        ``(model in eval mode, info)``; ``info`` holds ``source`` (``"ema"``, ``"model"``, ``"flat"``),
        ``config``, ``preset`` (matching preset name or ``None``) and the training ``args`` if saved.
    """
    from ..checkpoints import load_into

    path = Path(path)
    raw = _read_cdm_file(path)
    if not prefer_ema and isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        raw = {"model": raw["model"], "args": raw.get("args")}
    state, source, args = _select_state(raw, path.name)
    if preset is None and isinstance(args.get("model"), str) and args["model"] in CDM_PRESETS:
        preset = args["model"]
    try:
        config = infer_cdm_config(state, preset=preset, num_heads=num_heads)
    except ZoomLDMError as err:  # e.g. a ZoomLDM checkpoint given as the CDM: say which file
        raise type(err)(f"{path}: {err}") from err
    model = ConditioningDiT(**config)
    load_into(model, state, "cdm", hint=f" (in {path.name})")
    matched = [
        p
        for p, s in CDM_PRESETS.items()
        if (s["depth"], s["hidden_size"], s["num_heads"])
        == (config["depth"], config["hidden_size"], config["num_heads"])
    ]
    info = {"source": source, "config": config, "preset": matched[0] if matched else None, "args": args}
    return model.eval(), info


def load_cdm(path: str | Path, **official_kwargs: Any) -> tuple[ConditioningDiT, dict[str, Any]]:
    """A CDM from our format (a ``save_pretrained`` folder, e.g. a ``train-cdm`` checkpoint's ``cdm/``)
    or from the authors' DiT checkpoint file (:func:`load_official_cdm`); returns ``(model, info)``."""
    path = Path(path)
    if path.is_dir():
        if (path / "cdm" / "config.json").is_file():  # a train-cdm checkpoint directory
            path = path / "cdm"
        if not (path / "config.json").is_file():
            raise ZoomLDMError(f"{path} is not a CDM folder (no config.json)")
        # float32 whatever the stored precision (the embedded model keeps its CDM in float16 to save space)
        model = load_pretrained_component(ConditioningDiT, path, "CDM").float().eval()
        return model, {"source": "ours", "config": dict(model.config), "preset": None, "args": {}}
    return load_official_cdm(path, **official_kwargs)


def check_cdm_fits(pipe: Any, cdm: Any) -> None:
    """Refuse, in one line, a CDM whose tokens the pipeline's UNet cannot take: not a
    :class:`ConditioningDiT`, another token width than the UNet's context, or fewer magnification labels
    than the model has levels (reference-free patches and large images)."""
    cfg = getattr(cdm, "config", None)
    token_dim = getattr(cfg, "token_dim", None)
    if token_dim is None:
        raise ConfigError("cdm must be a ConditioningDiT (zoomldm.models.cdm)")
    if token_dim != pipe.config.context_dim:
        raise ConfigError(
            f"the CDM makes {token_dim}-d tokens; this model's context is {pipe.config.context_dim}-d"
        )
    if cfg.num_magnifications < len(pipe.scales):
        raise ConfigError(
            f"the CDM knows {cfg.num_magnifications} magnifications; the model has {len(pipe.scales)}"
        )

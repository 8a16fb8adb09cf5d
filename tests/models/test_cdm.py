"""The CDM's DiT: shapes, adaLN-Zero at init, parameter counts, save/load, the authors' checkpoint layout."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import Attention, Mlp
from torch import nn

from zoomldm.errors import CheckpointError, ZoomLDMError
from zoomldm.models.cdm import CDM_PRESETS, ConditioningDiT, infer_cdm_config, load_official_cdm

TINY = {"token_dim": 32, "hidden_size": 64, "depth": 2, "num_heads": 4, "num_magnifications": 8}


def _tiny(**kw) -> ConditioningDiT:
    torch.manual_seed(0)
    return ConditioningDiT(**{**TINY, **kw}).eval()


def _randomize(module: nn.Module, seed: int = 1) -> None:
    """Redraw every parameter (the zero-initialised adaLN/output layers would hide layout mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1] if p.dim() > 1 else 16))


# ------------------------------------------------------------------------------------------------
# A DiT written the authors' way from SPEC §6 (channels-first [B, C, 65] in and out, numpy sin-cos
# positions, its own GLIDE timestep features), used as the reference for our token-major model.
# ------------------------------------------------------------------------------------------------
def _official_pos_embed(dim: int, n: int) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.arange(n, dtype=np.float64)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def _glide_timestep(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _RefBlock(nn.Module):
    def __init__(self, h: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(h, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=h, hidden_features=4 * h, act_layer=lambda: nn.GELU(approximate="tanh"), drop=0
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1[:, None] * self.attn(self.norm1(x) * (1 + sc1[:, None]) + s1[:, None])
        return x + g2[:, None] * self.mlp(self.norm2(x) * (1 + sc2[:, None]) + s2[:, None])


class _RefDiT(nn.Module):
    def __init__(self, c: int, h: int, depth: int, heads: int, classes: int, n: int = 65) -> None:
        super().__init__()
        self.x_embedder = nn.Linear(c, h)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, h), nn.SiLU(), nn.Linear(h, h))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(classes, h)
        self.pos_embed = nn.Parameter(
            torch.from_numpy(_official_pos_embed(h, n)).float()[None], requires_grad=False
        )
        self.blocks = nn.ModuleList([_RefBlock(h, heads) for _ in range(depth)])
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(h, 2 * c)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 2 * h))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x.transpose(1, 2)) + self.pos_embed
        c = self.t_embedder.mlp(_glide_timestep(t)) + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(self.final_layer.norm_final(x) * (1 + scale[:, None]) + shift[:, None])
        return x.transpose(1, 2)


def _reference(seed: int = 3) -> _RefDiT:
    torch.manual_seed(seed)
    ref = _RefDiT(TINY["token_dim"], TINY["hidden_size"], TINY["depth"], TINY["num_heads"], 8)
    pos = ref.pos_embed.detach().clone()
    _randomize(ref, seed)
    with torch.no_grad():
        ref.pos_embed.copy_(pos)  # fixed, as in the authors' code
    return ref.eval()


def _official_inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, TINY["token_dim"], 65, generator=g)
    return x, torch.tensor([999, 500, 0])[:batch], torch.tensor([0, 3, 7])[:batch]


# ------------------------------------------------------------------------------------------------
def test_shapes_layout_and_input_errors() -> None:
    model = _tiny()
    _randomize(model)
    tokens = torch.randn(3, 65, 32)
    out = model(tokens, torch.tensor([0, 10, 999]), torch.tensor([0, 1, 7]))
    assert out.shape == (3, 65, 64)  # [x̂0 | variance values]
    # the authors' channels-first convention is the same computation transposed
    official = model.forward_official(
        tokens.transpose(1, 2), torch.tensor([0, 10, 999]), torch.tensor([0, 1, 7])
    )
    torch.testing.assert_close(official, out.transpose(1, 2), rtol=0, atol=0)
    # a scalar timestep / magnification is broadcast over the batch
    torch.testing.assert_close(model(tokens, 10, 1)[1], out[1], rtol=1e-6, atol=1e-6)
    assert ConditioningDiT(**{**TINY, "learn_sigma": False})(tokens, 5, 0).shape == (3, 65, 32)
    with pytest.raises(ZoomLDMError, match=r"\[B, 65, 32\]"):
        model(tokens.transpose(1, 2), 5, 0)
    with pytest.raises(ZoomLDMError, match="0..7"):
        model(tokens, 5, torch.tensor([0, 8, 1]))


def test_adaln_zero_makes_every_block_the_identity_and_the_output_zero_at_init() -> None:
    model = _tiny()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 65, 64, generator=g)
    c = torch.randn(4, 64, generator=g)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)  # gates are exactly zero
    out = model(
        torch.randn(4, 65, 32, generator=g), torch.tensor([0, 1, 500, 999]), torch.tensor([0, 2, 4, 6])
    )
    assert torch.count_nonzero(out) == 0
    # and the rest of the DiT init: xavier Linear (bounded), N(0, 0.02) embeddings, fixed positions
    w = model.x_embedder.weight
    assert w.abs().max() <= math.sqrt(6 / (w.shape[0] + w.shape[1])) + 1e-7
    assert 0.01 < model.y_embedder.embedding_table.weight.std() < 0.03
    assert 0.01 < model.t_embedder.mlp[0].weight.std() < 0.03
    assert model.y_embedder.embedding_table.weight.shape[0] == 8  # no CFG row with dropout 0
    assert (
        ConditioningDiT(**{**TINY, "class_dropout_prob": 0.1}).y_embedder.embedding_table.weight.shape[0] == 9
    )
    pos = torch.from_numpy(_official_pos_embed(64, 65)).float()
    torch.testing.assert_close(model.pos_embed[0], pos, rtol=0, atol=1e-6)
    assert "pos_embed" not in dict(model.named_parameters())


def _dit_parameter_count(
    hidden: int, depth: int, token_dim: int = 512, labels: int = 8, freq: int = 256
) -> int:
    """DiT parameters by hand (biases included; pos_embed is a fixed buffer, not counted).

    per block: qkv 3h²+3h, proj h²+h, fc1 4h²+4h, fc2 4h²+h, adaLN 6h²+6h  → 18h² + 15h
    x_embedder D·h+h; t-MLP F·h+h + h²+h; labels K·h; final adaLN 2h²+2h; output h·2D + 2D
    """
    h, d = hidden, token_dim
    return depth * (18 * h * h + 15 * h) + 3 * h * h + (3 * d + freq + labels + 5) * h + 2 * d


@pytest.mark.parametrize("preset", ["DiT-S", "DiT-B"])
def test_parameter_counts_match_the_dit_formula(preset: str) -> None:
    size = CDM_PRESETS[preset]
    with torch.device("meta"):
        model = ConditioningDiT.from_preset(preset)
    n = sum(p.numel() for p in model.parameters())
    assert n == _dit_parameter_count(size["hidden_size"], size["depth"])
    assert n == {"DiT-S": 33_056_128, "DiT-B": 130_696_960}[preset]
    assert model.config.depth == size["depth"] and model.config.num_heads == size["num_heads"]
    with pytest.raises(ZoomLDMError, match="unknown CDM preset"):
        ConditioningDiT.from_preset("DiT-XXL")


def test_save_pretrained_roundtrip(tmp_path) -> None:
    model = _tiny(num_magnifications=4)
    _randomize(model)
    model.save_pretrained(tmp_path / "cdm")
    assert (tmp_path / "cdm" / "config.json").is_file()
    assert (tmp_path / "cdm" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ConditioningDiT.from_pretrained(tmp_path / "cdm").eval()
    keys = ConditioningDiT.extract_init_dict(dict(model.config))[0].keys()
    assert {k: loaded.config[k] for k in keys} == {k: model.config[k] for k in keys}
    x = torch.randn(2, 65, 32)
    torch.testing.assert_close(
        loaded(x, torch.tensor([3, 900]), torch.tensor([0, 3])),
        model(x, torch.tensor([3, 900]), torch.tensor([0, 3])),
        rtol=0,
        atol=0,
    )


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = _tiny()
    _randomize(model)
    model.train()
    x = torch.randn(2, 65, 32)
    t, y = torch.tensor([3, 700]), torch.tensor([1, 5])

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(x, t, y).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# the authors' checkpoint layout
# ------------------------------------------------------------------------------------------------
def _save_dit_training_checkpoint(path, ema_sd, live_sd, model_name: str = "DiT-tiny") -> None:
    args = argparse.Namespace(model=model_name, global_batch_size=256, epochs=1400)
    torch.save(
        {"model": live_sd, "ema": ema_sd, "opt": {"state": {}, "param_groups": []}, "args": args}, path
    )


def test_official_dit_parity_and_ema_preference(tmp_path) -> None:
    ref = _reference()
    live = _reference(seed=11).state_dict()
    path = tmp_path / "0050000.pt"
    _save_dit_training_checkpoint(path, ref.state_dict(), live)

    model, info = load_official_cdm(path, num_heads=4)
    assert info["source"] == "ema" and info["args"]["model"] == "DiT-tiny" and info["preset"] is None
    assert info["config"] == {
        **TINY,
        "num_tokens": 65,
        "mlp_ratio": 4.0,
        "learn_sigma": True,
        "frequency_embedding_size": 256,
    }
    assert not model.training
    x, t, y = _official_inputs()
    with torch.no_grad():
        expected = ref(x, t, y)
        got = model.forward_official(x, t, y)
    assert expected.abs().max() > 0.1  # random weights: a non-trivial output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    live_model, info = load_official_cdm(path, num_heads=4, prefer_ema=False)
    assert info["source"] == "model"
    torch.testing.assert_close(live_model.x_embedder.weight, live["x_embedder.weight"], rtol=0, atol=0)

    # a bare, DDP-prefixed state dict also loads
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "flat.pt")
    flat, info = load_official_cdm(tmp_path / "flat.pt", num_heads=4)
    assert info["source"] == "flat"
    torch.testing.assert_close(flat.forward_official(x, t, y), got, rtol=0, atol=0)


def test_official_checkpoint_errors_name_the_key(tmp_path) -> None:
    sd = _reference().state_dict()

    def load(state: dict, **kw):
        torch.save({"ema": state}, tmp_path / "c.pt")
        return load_official_cdm(tmp_path / "c.pt", **{"num_heads": 4, **kw})

    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc2\.bias"):
        load({k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"})
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.proj\.weight.*\[64, 60\]"):
        load({**sd, "blocks.0.attn.proj.weight": sd["blocks.0.attn.proj.weight"][:, :60]})
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.extra"):
        load({**sd, "blocks.0.attn.extra": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="x_embedder.weight"):
        load({k: v for k, v in sd.items() if not k.startswith("x_embedder")})
    with pytest.raises(ZoomLDMError, match="num_heads"):
        load(sd, num_heads=None)  # depth 2 / hidden 64 is no preset: heads cannot be inferred
    with pytest.raises(CheckpointError, match="preset DiT-S"):
        load(sd, preset="DiT-S")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_official_cdm(tmp_path / "bad.pt")
    with pytest.raises(ZoomLDMError, match="not found"):
        load_official_cdm(tmp_path / "missing.pt")


@pytest.mark.parametrize("preset", list(CDM_PRESETS))
def test_presets_are_inferred_from_the_keys(preset: str) -> None:
    with torch.device("meta"):
        state = ConditioningDiT.from_preset(preset).state_dict()
    config = infer_cdm_config(state)
    assert {k: config[k] for k in ("depth", "hidden_size", "num_heads")} == CDM_PRESETS[preset]
    assert config["token_dim"] == 512 and config["num_magnifications"] == 8 and config["learn_sigma"]

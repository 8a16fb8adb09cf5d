"""Official checkpoint loading: every manifest key consumed, clear errors, our format round trip."""

from __future__ import annotations

import json

import pytest
import torch

from zoomldm import CheckpointError, ZoomLDMError, ZoomLDMPipeline
from zoomldm.checkpoints import convert_official, ema_key, load_into, read_state_dict, resolve_checkpoint
from zoomldm.config import ZoomLDMConfig
from zoomldm.models import Summarizer, build_unet, build_vae
from zoomldm.schedule import official_alphas_cumprod, official_betas


def manifest_state_dict(path, cfg: ZoomLDMConfig) -> dict[str, torch.Tensor]:
    """A state dict with exactly the manifest's keys, shapes and dtypes (uninitialised memory)."""
    entries = json.loads(path.read_text())["entries"]
    sd = {e["key"]: torch.empty(e["shape"], dtype=getattr(torch, e["dtype"])) for e in entries}
    sd["betas"] = official_betas(cfg.schedule).float()
    sd["alphas_cumprod"] = official_alphas_cumprod(cfg.schedule)
    sd["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int32)
    return sd


def validate(sd, cfg, ema=True):
    weights = convert_official(sd, cfg, ema=ema)
    with torch.device("meta"):
        modules = {
            "unet": build_unet(cfg.unet),
            "vae": build_vae(cfg.vae),
            "summarizer": Summarizer(**cfg.summarizer),
        }
    for name, module in modules.items():
        load_into(module, getattr(weights, name), name, weights.origin)
    return weights, modules


@pytest.mark.parametrize("preset", ["brca", "naip"])
@pytest.mark.parametrize("ema", [True, False])
def test_manifest_every_key_consumed(compat_dir, preset, ema):
    cfg = ZoomLDMConfig.from_preset(preset)
    sd = manifest_state_dict(compat_dir / f"manifest_{preset}.json", cfg)
    assert len(sd) == 1750
    weights, modules = validate(sd, cfg, ema)
    # the published parameter counts (SPEC §2.1-2.3)
    assert sum(p.numel() for p in modules["unet"].parameters()) == 400_920_579
    assert sum(p.numel() for p in modules["vae"].parameters()) == 55_322_782
    # brca: 38,656,000 (SPEC); naip has 4 instead of 8 magnification embeddings of width 512
    expected = 38_656_000 - (4 * 512 if preset == "naip" else 0)
    assert sum(p.numel() for p in modules["summarizer"].parameters()) == expected
    # every official tensor ended up somewhere (the EMA and live copies are both accounted for)
    used = set(weights.origin.values())
    prefix = "model_ema." if ema else "model.diffusion_model."
    assert {k for k in sd if k.startswith(prefix)} - {"model_ema.decay", "model_ema.num_updates"} <= used
    assert {k for k in sd if k.startswith(("cond_stage_model.", "first_stage_model."))} <= used
    assert weights.ema_num_updates == 7


def test_naip_checkpoint_with_brca_config_names_the_key(compat_dir):
    sd = manifest_state_dict(compat_dir / "manifest_naip.json", ZoomLDMConfig.from_preset("naip"))
    with pytest.raises(
        CheckpointError, match=r"cond_stage_model\.mag_embedding\.weight.*\[4, 512\].*\[8, 512\]"
    ):
        validate(sd, ZoomLDMConfig.from_preset("brca"))


@pytest.fixture(scope="module")
def small_sd(small_checkpoint):
    return read_state_dict(small_checkpoint)


@pytest.fixture(scope="module")
def small_cfg(small_config):
    return ZoomLDMConfig.resolve(small_config)


@pytest.mark.parametrize(
    "key",
    [
        "model.diffusion_model.out.2.weight",
        "model_ema.diffusion_modelout2weight",
        "cond_stage_model.pad_token",
        "first_stage_model.quantize.embedding.weight",
        "first_stage_model.decoder.conv_out.bias",
        "posterior_variance",
    ],
)
def test_missing_key_is_named(small_sd, small_cfg, key):
    sd = dict(small_sd)
    del sd[key]
    with pytest.raises(CheckpointError) as err:
        validate(sd, small_cfg)
    msg = str(err.value)
    assert "missing" in msg or "no matching" in msg or "no weight" in msg or "unexpected EMA" in msg
    if key != "model.diffusion_model.out.2.weight":  # its EMA twin is reported instead
        assert key.split(".", 1)[-1].replace("diffusion_model", "") in msg.replace("diffusion_model", "")


def test_unexpected_key_is_named(small_sd, small_cfg):
    for key in ["cond_stage_model.extra.weight", "first_stage_model.encoder.extra", "something_else"]:
        sd = dict(small_sd, **{key: torch.zeros(3)})
        with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
            validate(sd, small_cfg)


def test_misshaped_key_is_named(small_sd, small_cfg):
    key = "model_ema.diffusion_modelinput_blocks00weight"
    sd = dict(small_sd, **{key: torch.zeros(5, 3, 3, 3)})
    with pytest.raises(CheckpointError, match=rf"{key}.*\[5, 3, 3, 3\].*\[32, 3, 3, 3\]"):
        validate(sd, small_cfg)


def test_other_model_is_rejected(small_sd, small_cfg):
    sd = {k: v for k, v in small_sd.items() if not k.startswith("cond_stage_model.")}
    sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 4)
    with pytest.raises(CheckpointError, match="cond_stage_model.transformer"):
        validate(sd, small_cfg)
    with pytest.raises(CheckpointError, match="not a ZoomLDM checkpoint"):
        validate({"model.diffusion_model.x": torch.zeros(1)}, small_cfg)


def test_wrong_schedule_is_rejected(small_sd, small_cfg):
    sd = dict(small_sd, betas=small_sd["betas"] * 1.1)
    with pytest.raises(CheckpointError, match="schedule"):
        validate(sd, small_cfg)


def test_ema_key_naming():
    assert (
        ema_key("model.diffusion_model.input_blocks.0.0.weight")
        == "model_ema.diffusion_modelinput_blocks00weight"
    )


def test_no_ema_weights_asks_for_live(small_sd, small_cfg):
    sd = {k: v for k, v in small_sd.items() if not k.startswith("model_ema.")}
    with pytest.raises(CheckpointError, match="--live"):
        validate(sd, small_cfg, ema=True)
    validate(sd, small_cfg, ema=False)


@pytest.mark.parametrize("layout", ["flat", "lightning", "safetensors"])
def test_layouts_load_identically(tmp_path, small_sd, small_config, vectors, layout):
    from safetensors.torch import save_file

    if layout == "flat":
        path = tmp_path / "weights.ckpt"
        torch.save(small_sd, path)
    elif layout == "lightning":
        path = tmp_path / "weights.ckpt"
        torch.save({"state_dict": small_sd}, path)
    else:
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in small_sd.items()}, str(path))
    pipe = ZoomLDMPipeline.from_official(path, config=small_config)
    with torch.no_grad():
        eps = pipe.unet(
            vectors["unet/x"], vectors["unet/t"][0], encoder_hidden_states=vectors["unet/context"]
        ).sample
    assert (eps - vectors["unet/eps_ema"][0]).abs().max() <= 5e-5 * max(
        1, vectors["unet/eps_ema"][0].abs().max()
    )


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: contains code \(builtins\.object\); refusing"):
        read_state_dict(path)


def test_save_pretrained_roundtrip(tmp_path, small_checkpoint, small_config, vectors):
    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    out = pipe.save_pretrained(tmp_path / "model")
    assert (out / "zoomldm.json").is_file() and (
        out / "unet" / "diffusion_pytorch_model.safetensors"
    ).is_file()
    again = ZoomLDMPipeline.from_pretrained(out)
    for a, b in ((pipe.unet, again.unet), (pipe.vae, again.vae), (pipe.summarizer, again.summarizer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert type(again.vae.quantize).__name__ == "OfficialVectorQuantizer"
    # saving over an existing model replaces it atomically
    pipe.save_pretrained(out)
    assert not list(tmp_path.glob(".model.*"))


def test_resolve_checkpoint_kinds(tmp_path, small_checkpoint, monkeypatch):
    assert resolve_checkpoint(small_checkpoint).kind == "official"
    with pytest.raises(ZoomLDMError, match="not found"):
        resolve_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZoomLDMError, match="neither our format"):
        resolve_checkpoint(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ZoomLDMError, match="Hugging Face hub.*local path"):
        resolve_checkpoint("brca")


def test_guess_preset_needs_config(small_checkpoint):
    with pytest.raises(ZoomLDMError, match="--config"):
        ZoomLDMPipeline.from_official(small_checkpoint)  # small architecture: not a published one

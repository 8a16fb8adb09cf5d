"""Initialisation: the official small checkpoint (fine-tuning: live UNet trains, its EMA seeds ours) and a
CompVis-LDM (cin256-v2-style) checkpoint built from it: class embedder dropped, every UNet key accounted
for, a missing or unknown UNet key named."""

from __future__ import annotations

import pytest
import torch

from zoomldm.checkpoints import read_state_dict
from zoomldm.errors import CheckpointError
from zoomldm.pipeline import ZoomLDMPipeline
from zoomldm.train.config import ModelSection
from zoomldm.train.init import convert_compvis, load_initial_weights


def _equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_official_init_trains_the_live_unet_and_seeds_the_ema(
    small_checkpoint, small_config, compat_pipeline
):
    w = load_initial_weights(
        ModelSection(config=str(small_config), init="official", checkpoint=str(small_checkpoint))
    )
    live = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config, ema=False)
    _equal_states(w.unet.state_dict(), live.unet.state_dict())
    _equal_states(w.ema_unet, compat_pipeline.unet.state_dict())  # the EMA copy of the checkpoint
    _equal_states(w.summarizer.state_dict(), live.summarizer.state_dict())
    assert w.ema_num_updates == int(read_state_dict(small_checkpoint)["model_ema.num_updates"]) == 12345
    diff = max((w.unet.state_dict()[k] - w.ema_unet[k]).abs().max().item() for k in w.ema_unet)
    assert diff > 1e-3  # live and EMA really are different tensors in this checkpoint


def _cin_style(sd: dict) -> dict:
    """The compat checkpoint rearranged like LDM cin256-v2: a class embedder instead of the Summarizer."""
    cin = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    g = torch.Generator().manual_seed(0)
    cin["cond_stage_model.embedding.weight"] = torch.randn(1001, 64, generator=g)
    cin["model.diffusion_model.label_emb.0.weight"] = torch.randn(1000, 128, generator=g)
    cin["model_ema.diffusion_modellabel_emb0weight"] = torch.randn(1000, 128, generator=g)
    return cin


def test_compvis_init_accounts_for_every_key(tmp_path, small_checkpoint, small_config, compat_pipeline):
    sd = read_state_dict(small_checkpoint)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _cin_style(sd)}, path)
    model = ModelSection(config=str(small_config), init="compvis", checkpoint=str(path))
    w = load_initial_weights(model, seed=3)
    live = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config, ema=False)
    _equal_states(w.unet.state_dict(), live.unet.state_dict())  # every UNet weight, 0 missing
    _equal_states(w.vae.state_dict(), live.vae.state_dict())  # the first stage came along
    assert not torch.equal(w.summarizer.dim_reduce.weight, live.summarizer.dim_reduce.weight)  # new, random
    assert w.ema_unet is None  # the EMA starts at the (ImageNet) live weights
    assert w.provenance["dropped"] == {
        "class embedder (UNet label_emb)": 1,
        "class embedder (cond_stage_model)": 1,
        "class embedder (EMA copy of label_emb)": 1,
        "EMA copy (model.ema is false: live UNet used)": 444,  # 442 UNet copies + decay + num_updates
        "schedule buffers (recomputed from the config)": 12,
    }
    w_ema = load_initial_weights(ModelSection(**{**model.__dict__, "ema": True}))
    _equal_states(w_ema.unet.state_dict(), compat_pipeline.unet.state_dict())


def test_compvis_unknown_or_missing_unet_key_is_named(small_checkpoint, small_config):
    from zoomldm.config import ZoomLDMConfig

    cfg = ZoomLDMConfig.resolve(small_config)
    cin = _cin_style(read_state_dict(small_checkpoint))
    extra = {**cin, "model.diffusion_model.input_blocks.1.9.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"model\.diffusion_model\.input_blocks\.1\.9\.weight"):
        convert_compvis(extra, cfg)
    stranger = {**cin, "scale_factor_typo": torch.zeros(())}
    with pytest.raises(CheckpointError, match="unexpected key 'scale_factor_typo'"):
        convert_compvis(stranger, cfg)
    gone = "model.diffusion_model.output_blocks.2.1.proj_in.weight"
    from zoomldm.checkpoints import ema_key

    missing = {k: v for k, v in cin.items() if k not in (gone, ema_key(gone))}
    from zoomldm.checkpoints import load_into
    from zoomldm.models import build_unet

    converted = convert_compvis(missing, cfg)
    with torch.device("meta"):
        unet = build_unet(cfg.unet)
    with pytest.raises(CheckpointError, match="missing key: the checkpoint has no weight for unet parameter"):
        load_into(unet, converted.unet, "unet", converted.origin)

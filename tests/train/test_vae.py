"""``zoomldm train-vae`` on real H&E crops: the loss falls and the held-out PSNR rises; a resumed run equals
an uninterrupted one bit for bit; the held-out split is deterministic and never trained on; the exported
model is what ``prepare --checkpoint`` / ``model.vae`` load; bad options are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures import run_cli
from zoomldm.config import ZoomLDMConfig
from zoomldm.train.vae import CropSource, VAETrainConfig, train_vae


def _narrow_config(width: int = 8) -> ZoomLDMConfig:
    """The tiny preset with an 8-channel VQ-f4 (the preset's costs ~0.7 CPU-s per step of 8 × 64²)."""
    cfg = ZoomLDMConfig.from_preset("tiny")
    cfg.vae = dict(cfg.vae, block_out_channels=[width] * 3, layers_per_block=1, norm_num_groups=width // 2)
    return cfg


@pytest.fixture(scope="module")
def brca_png(tmp_path_factory: pytest.TempPathFactory, brca_image: np.ndarray) -> Path:
    """A 256² crop of brca_001 (tissue) as a PNG: the training image of these tests."""
    path = tmp_path_factory.mktemp("vae_images") / "brca_256.png"
    Image.fromarray(brca_image[1024:1280, 1024:1280]).save(path)
    return path


def _config(brca_png: Path, out: Path, **kw) -> VAETrainConfig:
    settings = dict(
        images=[str(brca_png)],
        output_dir=str(out),
        crop_size=32,
        batch_size=4,
        max_steps=8,
        lr=3e-3,
        warmup_steps=1,
        checkpoint_every=100,
        log_every=2,
        eval_crops_per_level=4,
        levels=2,
    )
    settings.update(kw)
    return VAETrainConfig(**settings)


def test_loss_falls_and_held_out_psnr_is_recorded(brca_png: Path, tmp_path: Path):
    """25 steps of 4 × 32² crops at lr 3e-3: the mean of the last 5 losses is < 0.7 × the first 5 (measured
    ratio 0.53), and the held-out PSNR after training beats the untrained VQ's by > 1 dB (measured 19.0 vs
    14.2 dB)."""
    cfg = _narrow_config()
    untrained = train_vae(_config(brca_png, tmp_path / "zero", max_steps=1, lr=1e-12), cfg)
    result = train_vae(_config(brca_png, tmp_path / "run", max_steps=25), cfg)
    losses = result.losses
    assert len(losses) == 25 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    psnr = result.metrics["psnr_db"]
    assert psnr > untrained.metrics["psnr_db"] + 1.0, (psnr, untrained.metrics["psnr_db"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["held_out"]["psnr_db"] == pytest.approx(psnr)
    assert set(saved["held_out"]["psnr_db_by_level"]) == {"image0/1x-down", "image0/2x-down"}
    assert saved["step"] == 25 and saved["history"][-1]["step"] == 25

    # the exported model is our pipeline format whose VQ is the trained one
    from zoomldm.pipeline import ZoomLDMPipeline

    pipe = ZoomLDMPipeline.from_pretrained(result.model_dir)
    last = result.checkpoints[-1] / "vae" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    trained = load_file(str(last))
    # ... rescaled to unit latent std (exactly): quant_conv and the codebook × s, post_quant_conv's weight / s
    scale = saved["latent_scale"]
    assert scale == pytest.approx(1 / saved["latent_std"]) and scale != pytest.approx(1.0, rel=0.05)
    rescaled = {
        "quant_conv.weight": scale,
        "quant_conv.bias": scale,
        "quantize.embedding.weight": scale,
        "post_quant_conv.weight": 1 / scale,
    }
    for name, tensor in pipe.vae.state_dict().items():
        expected = trained[name] * rescaled.get(name, 1.0)
        assert torch.allclose(tensor, expected, rtol=1e-6, atol=0), name
    source = CropSource([np.asarray(Image.open(brca_png))], 32, 2, 0.125, 4)
    plain = ZoomLDMPipeline.from_pretrained(result.model_dir)
    plain.vae.load_state_dict(trained)
    with torch.no_grad():
        latents = pipe.encode_images(source.eval_crops)
        assert float(latents.std()) == pytest.approx(1.0, abs=1e-4)  # measured on these very crops
        same = plain.decode_latents(plain.encode_images(source.eval_crops))
        assert (pipe.decode_latents(latents) - same).abs().max() < 1e-4  # the same codes, the same images


def test_no_normalize_latents_exports_the_trained_weights(brca_png: Path, tmp_path: Path):
    """``--no-normalize-latents``: the exported VQ is the last checkpoint's, tensor for tensor."""
    from safetensors.torch import load_file

    from zoomldm.pipeline import ZoomLDMPipeline

    result = train_vae(_config(brca_png, tmp_path, max_steps=2, normalize_latents=False), _narrow_config())
    trained = load_file(str(result.checkpoints[-1] / "vae" / "diffusion_pytorch_model.safetensors"))
    for name, tensor in ZoomLDMPipeline.from_pretrained(result.model_dir).vae.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert "latent_scale" not in json.loads((tmp_path / "metrics.json").read_text())


def test_resume_continues_bit_exactly(brca_png: Path, tmp_path: Path):
    """8 steps at once == 3 steps, stop (checkpoint), then resume to 8: same losses and weights."""
    cfg = _narrow_config()
    whole = train_vae(_config(brca_png, tmp_path / "whole"), cfg)
    part = train_vae(_config(brca_png, tmp_path / "parts"), cfg, stop_after=3)
    assert part.step == 3 and part.model_dir is None and len(part.checkpoints) == 1
    rest = train_vae(_config(brca_png, tmp_path / "parts"), cfg)
    assert rest.start_step == 3 and rest.step == 8
    assert part.losses + rest.losses == whole.losses
    from safetensors.torch import load_file

    a = load_file(str(whole.checkpoints[-1] / "vae" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(rest.checkpoints[-1] / "vae" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run has nothing left to do; --resume never refuses to overwrite its checkpoints
    again = train_vae(_config(brca_png, tmp_path / "parts"), cfg)
    assert again.losses == [] and again.step == 8
    from zoomldm.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds VQ checkpoints"):
        train_vae(_config(brca_png, tmp_path / "parts", resume="never"), cfg)


def test_held_out_strip_is_deterministic_and_never_trained_on():
    """An image whose right-hand eighth is white and the rest never is: every held-out crop is white, no
    training crop (any step, flips and rotations included) holds a white pixel, and the split is the same
    on every construction."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, size=(512, 512, 3), dtype=np.uint8)
    image[:, 448:] = 255  # the held-out eighth at full size, and (2× reduced) at the next level
    source = CropSource([image], crop_size=32, levels=2, holdout_fraction=0.125, eval_crops_per_level=100)
    assert len(source.eval_crops) == 16 * 2 + 8  # the 64-wide strip (16 rows × 2), then 32-wide at 2× down
    assert bool((source.eval_crops == 1.0).all())
    for step in range(50):
        assert bool((source.batch(0, step, 8) < 1.0).all()), step
    again = CropSource([image], crop_size=32, levels=2, holdout_fraction=0.125, eval_crops_per_level=100)
    assert torch.equal(again.eval_crops, source.eval_crops)
    assert torch.equal(again.batch(0, 7, 8), source.batch(0, 7, 8))
    assert not torch.equal(source.batch(0, 7, 8), source.batch(0, 8, 8))


def test_cli_refuses_bad_input(brca_png: Path, tmp_path: Path, capsys):
    code, _, err = run_cli(["train-vae", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "missing.png: not found" in err and "Traceback" not in err
    code, _, err = run_cli(
        ["train-vae", str(brca_png), "--out", str(tmp_path / "o"), "--crop-size", "30"], capsys
    )
    assert code == 2 and "--crop-size: must be a multiple of 4" in err
    code, _, err = run_cli(
        ["train-vae", str(brca_png), "--out", str(tmp_path / "o"), "--crop-size", "512"], capsys
    )
    assert code == 2 and "smaller than 2 crops" in err
    assert not (tmp_path / "o" / "checkpoints").exists()

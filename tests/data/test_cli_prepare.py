"""``zoomldm prepare`` on the command line, with the VQ autoencoder of the official-format small checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tifffile
import torch
from typer.testing import CliRunner

from zoomldm.cli import app
from zoomldm.data.dataset import MultiScaleDataset
from zoomldm.pipeline import ZoomLDMPipeline

TINY_ENCODER = [
    "--encoder", "timm:vit_tiny_patch16_224", "--encoder-weights", "random",
    "--encoder-option", "embed_dim=32", "--encoder-option", "depth=2", "--encoder-option", "num_heads=2",
    "--encoder-option", "img_size=64",
]  # fmt: skip


def test_prepare_command(tmp_path, small_slides, small_checkpoint, small_config):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(small_slides / "s1.tif", slides / "s1.tif")
    (slides / "damaged.ndpi").write_bytes(b"\x00" * 64)
    store = tmp_path / "out.zarr"
    args = [
        "prepare", str(slides), str(store), "--levels", "10x", "--tissue-threshold", "0", "--save-jpeg",
        "--checkpoint", str(small_checkpoint), "--config", str(small_config), "--no-progress", "--device", "cpu",
        *TINY_ENCODER,
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output  # finished, but a slide failed (documented exit status 3)
    assert "s1: 10x 1" in result.output  # per-slide counts
    assert "failed: damaged (" in result.output and "damaged.ndpi" in result.output

    written = json.loads(Path(f"{store}.prepare.json").read_text())
    assert written["settings"]["levels"] == ["10x"] and written["settings"]["save_jpeg"] is True
    assert written["vae"]["source"] == str(small_checkpoint)
    assert written["encoder"]["dim"] == 32

    # the stored latent is the small checkpoint's VQ encoding of the region (the 10x sample = pyramid level 1)
    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    with tifffile.TiffFile(slides / "s1.tif") as tif:
        region = tif.series[0].levels[1].asarray()
    ds = MultiScaleDataset(store, return_image=True)
    item = ds[0]
    assert item["mag"] == 1
    direct = pipe.encode_images(torch.from_numpy(region).permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
    assert (item["latent"] - direct).abs().max() <= 2e-3 * direct.abs().max()
    # --save-jpeg stored the same region at JPEG quality 90 (mean error ≈ 4 grey levels on this fine H&E
    # texture; another region of the slide differs by ≈ 40)
    stored = item["image"].numpy().astype(float)
    assert np.abs(stored - region).mean() < 6 < np.abs(stored - np.roll(region, 64, axis=0)).mean()

    # the rerun retries only the failed slide (still failing: exit 3 again); the finished one is not redone
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "s1:" not in result.output and "failed: damaged" in result.output
    assert "10x 1 samples from 1 slides" in result.output

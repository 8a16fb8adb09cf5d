"""ZoomLDM multi-scale UNet features on a real slide (a pyramidal TIFF cut from brca_001.jpeg).

The UNet and Summarizer are the compat small model (``small_checkpoint.ckpt``: 4 decoder blocks, not the
published layout), so the block hooks are tested on a layout other than the published one. The compat
VQ autoencoder costs about a second per 256² tile on this CPU; the slide-level tests swap in a narrow random
VQ-f4 (same latent shape) and record it in the provenance; the hook test uses the compat VQ.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures import tiny_vq, write_pyramid_tiff
from zoomldm.data.extract import SlideSource
from zoomldm.errors import ZoomLDMError
from zoomldm.features.bags import read_bag
from zoomldm.features.extract import (
    FeatureSettings,
    containing_block,
    extract_features,
    fuse_features,
)
from zoomldm.features.unet_features import UNetFeatureExtractor, parse_blocks
from zoomldm.schedule import official_alphas_cumprod

MPP = 0.5
#: the slide: 2 × 5 base tiles of real H&E; the bottom-left 2 tiles are blank glass
ROWS, COLS = 2, 5
GLASS = (slice(256, 512), slice(0, 512))


def write_slide(path, image: np.ndarray) -> np.ndarray:
    """Two-level tiled TIFF (deflate: lossless, so every reader sees the same pixels); returns level 1."""
    write_pyramid_tiff(path, image, MPP, levels=2, compression="zlib", min_side=0)
    return np.asarray(Image.fromarray(image).reduce(2))


@pytest.fixture(scope="module")
def slide(brca_image, tmp_path_factory):
    image = brca_image[: ROWS * 256, : COLS * 256].copy()
    image[GLASS] = 245
    folder = tmp_path_factory.mktemp("slides")
    level1 = write_slide(folder / "brca_crop.tif", image)
    (folder / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    return folder, image, level1


@pytest.fixture(scope="module")
def compat_pipe(small_checkpoint, small_config):
    from zoomldm.pipeline import ZoomLDMPipeline

    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)


@pytest.fixture(scope="module")
def fast_pipe(small_checkpoint, small_config):
    from zoomldm.pipeline import ZoomLDMPipeline

    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    pipe.vae = tiny_vq(4)
    pipe.provenance["vae"] = "narrow random VQ-f4 (test)"
    return pipe


@pytest.fixture(scope="module")
def extracted(slide, fast_pipe, tiny_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    report = extract_features(
        slide[0], out, fast_pipe, tiny_encoder, FeatureSettings(batch_size=8), progress=False
    )
    return out, report


def _tiles(image: np.ndarray, rows_cols) -> np.ndarray:
    return np.stack([image[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] for r, c in rows_cols])


def test_noise_timestep_and_hooks_on_the_compat_model(compat_pipe, brca_image):
    unet = compat_pipe.unet
    blocks = parse_blocks("mid,up0,up1,up2,up3", len(unet.up_blocks))
    extractor = UNetFeatureExtractor(compat_pipe, blocks, timestep=150, seed=3)
    images = _tiles(brca_image, [(5, 5), (9, 2)])
    grids = [torch.randn(32, 1, 1, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    seen: dict[str, torch.Tensor] = {}
    pre = unet.conv_in.register_forward_pre_hook(lambda m, args: seen.__setitem__("x_t", args[0]))
    post = [
        block.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.mean(dim=(-2, -1))))
        for n, block in [("mid", unet.mid_block), *((f"up{i}", b) for i, b in enumerate(unet.up_blocks))]
    ]
    try:
        features = extractor(images, grids, "20x")
    finally:
        for handle in [pre, *post]:
            handle.remove()
    # x_t = √ᾱ_t z0 + √(1−ᾱ_t) ε with the official ᾱ and one seeded ε
    z0 = compat_pipe.encode_images(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    eps = torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(3))
    abar = official_alphas_cumprod(compat_pipe.config.schedule)[150]
    torch.testing.assert_close(seen["x_t"], abar.sqrt() * z0 + (1 - abar).sqrt() * eps, atol=1e-5, rtol=1e-5)
    # pooled block outputs, concatenated in order; widths follow the (non-published) block layout
    assert extractor.dims == {"mid": 32, "up0": 32, "up1": 32, "up2": 64, "up3": 32}
    assert features.shape == (2, 192)
    expected = torch.cat([seen[n] for n in blocks], dim=1).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


def test_features_are_deterministic_batch_independent_and_conditioned(fast_pipe, brca_image):
    images = _tiles(brca_image, [(1, 1), (12, 3)])
    grids = [torch.randn(32, 1, 1, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def features(seed=0, imgs=images, conds=grids, mag="20x"):
        return UNetFeatureExtractor(fast_pipe, ("mid",), 100, seed=seed)(imgs, conds, mag)

    a = features()
    np.testing.assert_array_equal(features(), a)
    single = np.concatenate([features(imgs=images[i : i + 1], conds=grids[i : i + 1]) for i in range(2)])
    np.testing.assert_allclose(single, a, rtol=1e-4, atol=1e-5)
    # the noise seed, the magnification token and the SSL grid all change the features
    for other in (features(seed=1), features(mag="10x"), features(conds=[-g for g in grids])):
        assert np.abs(other - a).max() > 1e-3


def test_slide_features_shapes_coords_and_attributes(extracted, fast_pipe):
    out, report = extracted
    assert {s.id: s.status for s in report.slides} == {"brca_crop": "written", "broken": "failed"}
    assert "broken" in report.failed[0].id and report.failed[0].error
    bag = read_bag(out / "brca_crop.h5")
    tissue = [(r, c) for r in range(ROWS) for c in range(COLS) if not (r == 1 and c < 2)]
    assert sorted(map(tuple, (bag.coords[:, ::-1] // 256).tolist())) == tissue  # glass tiles dropped
    assert bag.features.shape == (8, 2 * (32 + 32)) and bag.features.dtype == np.float32
    a = bag.attrs
    assert (a["patch_size"], a["patch_size_level0"], a["target_magnification"], a["mpp"]) == (
        256,
        256,
        20.0,
        0.5,
    )
    assert (a["magnifications"], a["blocks"], a["fusion"], a["timestep"], a["seed"]) == (
        "20x,5x",
        "mid,up1",
        "concat",
        100,
        0,
    )
    assert json.loads(a["model"])["vae"] == "narrow random VQ-f4 (test)"
    assert json.loads(a["ssl_encoder"])["dim"] == 32


def test_each_tile_is_fused_with_the_5x_region_containing_it(extracted, slide, fast_pipe, tiny_encoder):
    out, _ = extracted
    _, image, level1 = slide
    bag = read_bag(out / "brca_crop.h5")
    tiles = bag.coords[:, ::-1] // 256
    extractor = UNetFeatureExtractor(fast_pipe, ("mid", "up1"), 100, seed=0)
    # the 20x half: each tile conditioned on its own embedding
    own = tiny_encoder.embed(_tiles(image, tiles)).half().float()
    np.testing.assert_allclose(
        bag.features[:, :64],
        extractor(_tiles(image, tiles), [e[:, None, None] for e in own], "20x"),
        rtol=1e-3,
        atol=1e-4,
    )
    # the 5x half: the 1024² base-px region at (row // 4·4, col // 4·4), white past the slide's edge
    blocks = containing_block(tiles, 4)
    assert sorted({tuple(b) for b in blocks.tolist()}) == [(0, 0), (0, 4)]
    canvas = np.full((4 * 256, 8 * 256, 3), 255, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    canvas1 = np.full((2 * 256, 4 * 256, 3), 255, np.uint8)
    canvas1[: level1.shape[0], : level1.shape[1]] = level1  # the reader resizes from the 2x-reduced level
    for r0, c0 in [(0, 0), (0, 4)]:
        region = np.asarray(
            Image.fromarray(canvas1[:, c0 * 128 : c0 * 128 + 512]).resize(
                (256, 256), Image.Resampling.LANCZOS
            )
        )
        base = _tiles(canvas, [(r, c) for r in range(4) for c in range(c0, c0 + 4)])
        grid = tiny_encoder.embed(base).half().float().T.reshape(32, 4, 4)
        expected = extractor(region[None], [grid], "5x")[0]
        rows = (blocks == (r0, c0)).all(axis=1)
        np.testing.assert_allclose(
            bag.features[rows, 64:], np.tile(expected, (rows.sum(), 1)), rtol=1e-3, atol=1e-4
        )


def test_fusion_modes():
    tiles = np.array([[0, 1], [5, 6], [4, 4]])
    per_mag = {0: np.arange(6.0).reshape(3, 2), 2: np.array([[10.0, 20.0], [30.0, 40.0]])}
    blocks = {0: tiles, 2: np.array([[0, 0], [4, 4]])}
    concat = fuse_features(tiles, per_mag, blocks, {0: 1, 2: 4}, "concat")
    np.testing.assert_array_equal(concat, [[0, 1, 10, 20], [2, 3, 30, 40], [4, 5, 30, 40]])
    mean = fuse_features(tiles, per_mag, blocks, {0: 1, 2: 4}, "mean")
    np.testing.assert_array_equal(mean, [[5, 10.5], [16, 21.5], [17, 22.5]])


def test_rerun_skips_finished_slides_and_refuses_other_settings(extracted, slide, fast_pipe, tiny_encoder):
    out, _ = extracted
    before = (out / "brca_crop.h5").stat().st_mtime_ns
    report = extract_features(
        slide[0], out, fast_pipe, tiny_encoder, FeatureSettings(batch_size=8), progress=False
    )
    assert {s.id: s.status for s in report.slides}["brca_crop"] == "done"
    assert (out / "brca_crop.h5").stat().st_mtime_ns == before
    # the message names each differing setting, old → new, and what to do
    with pytest.raises(
        ZoomLDMError, match=r"other settings \(identity\.timestep: 100 → 50;.*another OUT folder"
    ):
        extract_features(slide[0], out, fast_pipe, tiny_encoder, FeatureSettings(timestep=50), progress=False)


def test_ranks_share_the_slides(slide, fast_pipe, tiny_encoder, tmp_path):
    sources = [SlideSource("a", str(slide[0] / "broken.tif")), SlideSource("b", str(slide[0] / "broken.tif"))]
    report = extract_features(
        sources, tmp_path, fast_pipe, tiny_encoder, rank=1, world_size=2, progress=False
    )
    assert {s.id: s.status for s in report.slides} == {"a": "other-rank", "b": "failed"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (FeatureSettings(magnifications=("20x", "20x")), "named twice"),
        (FeatureSettings(magnifications=("7x",)), "unknown pathology magnification"),
        (FeatureSettings(blocks=("up9",)), "up0..up3"),
        (FeatureSettings(timestep=1000), "0..999"),
        (FeatureSettings(fusion="max"), "unknown fusion"),
    ],
)
def test_bad_settings_are_user_errors(slide, fast_pipe, tiny_encoder, tmp_path, settings, message):
    with pytest.raises(ZoomLDMError, match=message):
        extract_features(slide[0], tmp_path, fast_pipe, tiny_encoder, settings, progress=False)


def test_features_command_then_bags_load_for_mil(brca_image, tmp_path, small_checkpoint, small_config):
    import typer
    from typer.testing import CliRunner

    from zoomldm.cli import features as features_cli
    from zoomldm.features.bags import FeatureBags

    write_slide(tmp_path / "slides_small.tif", brca_image[2048:2304, 1024:1536].copy())  # 1 × 2 tiles
    app = typer.Typer()
    app.command("noop")(lambda: None)
    features_cli.register(app)
    args = ["features", str(tmp_path), str(tmp_path / "out"), "--checkpoint", str(small_checkpoint)]
    args += [
        "--config",
        str(small_config),
        "--encoder",
        "timm:vit_tiny_patch16_224",
        "--encoder-weights",
        "random",
    ]
    args += [
        "--encoder-option",
        "embed_dim=32",
        "--encoder-option",
        "depth=1",
        "--encoder-option",
        "num_heads=2",
    ]
    args += ["--encoder-option", "img_size=64", "--blocks", "mid", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 slides written (2 tiles" in result.output
    bags = FeatureBags(tmp_path / "out", ["slides_small"])
    assert bags.dim == 2 * 32 and len(bags["slides_small"]) == 2
    again = CliRunner().invoke(app, args)
    assert "0 slides written" in again.output and "1 already done" in again.output

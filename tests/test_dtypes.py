"""The GPU's dtypes, tested on CPU (issue 23, item 5).

Users with a GPU run in bfloat16 first. Every method that takes a dtype runs here in bfloat16 on the
embedded trained model (its UNet and Summarizer cast; the VQ stays float32 on CPU, as ``.to()`` does),
and its output is compared with the float32 run of the same request and seed. A dtype mismatch anywhere on
the path (a float32 context into a bfloat16 UNet, a bfloat16 latent into the float32 VQ, a CDM of another
dtype) fails here with a traceback before a user meets it on a GPU.

Tolerances: the same seed gives the same initial noise in both runs, and bfloat16 keeps 8 bits of mantissa,
so the images differ by the rounding carried through the denoising steps. PSNR between the bfloat16 and the
float32 image is the measure; each floor sits 3-7 dB under the value measured here (given in each test):
patches keep about 42 dB, the large-image paths, whose Newton iterations and post-processing amplify the
rounding, 23-27 dB.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures import one_thread


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


#: CPU-seconds large-image settings (by CLI name), as in the README's offline example
FAST = dict(
    t0=1000, stride=500, inner_steps=1, post_t0=50, post_stride=50, post_window_stride=64, decode_stride=64
)


@pytest.fixture(scope="module")
def pipes():
    from zoomldm.pipeline import ZoomLDMPipeline, load_embedded

    fp32, encoder = load_embedded()
    bf16 = ZoomLDMPipeline.from_pretrained("embedded", dtype="bfloat16")
    assert bf16.unet.dtype == torch.bfloat16 and bf16.summarizer.dtype == torch.bfloat16
    assert bf16.vae.dtype == torch.float32  # half-precision convolutions stay off on CPU
    return fp32, bf16, encoder


@pytest.fixture(scope="module")
def region() -> np.ndarray:
    with resources.files("zoomldm.assets").joinpath("brca_20x_1024.jpg").open("rb") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_thread():
        yield


def test_patches_in_bfloat16_match_float32(pipes, region):
    from zoomldm.models.encoders import encode_region_grid

    fp32, bf16, encoder = pipes
    grid = encode_region_grid(encoder, region)
    kw = dict(ssl=grid, magnification="5x", num_images=2, num_inference_steps=10, seed=0, progress=False)
    a, b = fp32(**kw), bf16(**kw)
    assert b.images.shape == a.images.shape == (2, 256, 256, 3) and b.latents.dtype == torch.float32
    # measured 42.9 and 42.4 dB
    assert min(psnr(x, y) for x, y in zip(a.images, b.images, strict=True)) > 36


def test_reference_free_patches_in_bfloat16_match_float32(pipes):
    fp32, bf16, _ = pipes
    kw = dict(magnification="20x", num_images=1, num_inference_steps=10, cdm_steps=20, seed=0, progress=False)
    a, b = fp32(**kw), bf16(**kw)
    assert psnr(a.images[0], b.images[0]) > 36  # measured 41.7 dB (the CDM's tokens feed the bf16 UNet)


def test_generate_large_in_bfloat16_matches_float32(pipes, region):
    fp32, bf16, _ = pipes
    ref = region[:512, :512]
    a = fp32.generate_large(reference=ref, guide="10x", progress=False, **FAST)
    b = bf16.generate_large(reference=ref, guide="10x", progress=False, **FAST)
    assert a.image.shape == b.image.shape == (512, 512, 3)
    assert psnr(a.image, b.image) > 20  # measured 23.0 dB
    # the constraint against the guide: measured 18.16 dB (float32) and 17.38 dB (bfloat16)
    assert abs(a.metrics["output"]["psnr"] - b.metrics["output"]["psnr"]) < 1.5


def test_super_resolve_in_bfloat16_matches_float32(pipes, region):
    fp32, bf16, _ = pipes
    small = np.asarray(Image.fromarray(region[:512, :512]).reduce(2))
    a = fp32.super_resolve(small, from_magnification="10x", inversion_steps=2, progress=False, **FAST)
    b = bf16.super_resolve(small, from_magnification="10x", inversion_steps=2, progress=False, **FAST)
    assert a.image.shape == b.image.shape == (512, 512, 3)
    assert psnr(a.image, b.image) > 20  # measured 23.7 dB


def test_features_in_bfloat16_match_float32(brca_slide_1024, tmp_path):
    import zoomldm
    from zoomldm.features.bags import read_bag
    from zoomldm.features.extract import FeatureSettings

    slides = brca_slide_1024.parent
    feats = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        zoomldm.extract_features(
            slides, out, "embedded", "embedded", FeatureSettings(batch_size=8), dtype=dtype, progress=False
        )
        (h5,) = sorted(out.rglob("*.h5"))
        feats[dtype] = read_bag(h5).features
    a, b = (torch.as_tensor(np.asarray(feats[d]), dtype=torch.float32) for d in ("float32", "bfloat16"))
    assert a.shape == b.shape and a.shape[0] > 0
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cosine.min() > 0.99, cosine  # measured 1.0000 (4 decimals) for every tile


def test_explorer_block_in_bfloat16_matches_float32(pipes, region, tmp_path):
    from zoomldm.viewer.explorer import Explorer

    fp32, bf16, _ = pipes
    thumb = np.asarray(Image.fromarray(region).reduce(4))  # 256² at 5x
    settings = dict(
        t0=300, stride=100, inner_steps=1, inversion_steps=2, no_postprocess=True, decode_stride=64
    )
    blocks = []
    for pipe, cache in ((fp32, "a"), (bf16, "b")):
        explorer = Explorer(
            pipe, thumb, "5x", "10x", cache=tmp_path / cache, blend=0, window_patches=1, **settings
        )
        try:
            blocks.append(explorer.block(1, 0, 0))
        finally:
            explorer.close()
    assert blocks[0].shape == blocks[1].shape
    assert psnr(blocks[0], blocks[1]) > 20  # measured 26.8 dB

"""Super-resolution (SPEC §5): end to end on a small crop of the authors' lr.jpg, the constraint's effect,
and input validation before model work."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoomldm.errors import ZoomLDMError
from zoomldm.io import read_png_metadata
from zoomldm.sampling.inversion import InversionConfig
from zoomldm.sampling.postprocess import PostprocessConfig
from zoomldm.sampling.superres import SRConfig, load_lr_image, super_resolve


@pytest.fixture(scope="module")
def lr64(data_dir):
    return load_lr_image(data_dir / "lr.jpg", resize=64)  # one 64² patch of the compat model


def test_superres_end_to_end(compat_pipe, lr64, tmp_path):
    out = tmp_path / "sr.png"
    result = super_resolve(
        compat_pipe,
        lr64,
        "10x",
        config=SRConfig(t0=50),
        inversion=InversionConfig(steps=2),
        postprocess=PostprocessConfig(t0=50),
        seed=0,
        out=out,
        progress=False,
    )
    assert result.image.shape == (128, 128, 3) and result.image.dtype == np.uint8  # 2× (10x → 20x)
    np.testing.assert_array_equal(result.guide_image, lr64)  # the constraint is the input itself
    assert result.metrics["inverted_grid_shape"] == [32, 2, 2]
    assert 0 < result.metrics["output"]["psnr"] < 60 and result.metrics["unet_forwards"] == 4 * 2 * 11
    np.testing.assert_array_equal(np.asarray(Image.open(out)), result.image)
    meta = read_png_metadata(out)
    assert meta["method"] == "zoomldm super-resolution" and meta["sr"]["inner_steps"] == 5
    assert meta["inversion"]["steps"] == 2 and meta["input"]["magnification"] == "10x"
    assert (tmp_path / "sr_guide.png").is_file() and (tmp_path / "sr.json").is_file()


def test_superres_constraint_brings_the_output_to_the_input(trained_vq_pipe, lr64):
    # unconstrained vs constrained tiles from the same noise and inverted conditions (no post-processing),
    # two outer steps through the trained VQ-f4: at least +0.8 dB and −8% MAE against the input (measured:
    # +1.2 to +1.4 dB, −12 to −15% over seeds 0-3)
    runs = [
        super_resolve(
            trained_vq_pipe,
            lr64,
            "10x",
            config=SRConfig(t0=100, inner_steps=n),
            inversion=InversionConfig(steps=2),
            postprocess=False,
            seed=0,
            progress=False,
        ).metrics["output"]
        for n in (0, 2)
    ]
    assert runs[1]["psnr"] >= runs[0]["psnr"] + 0.8 and runs[1]["mae"] <= 0.92 * runs[0]["mae"]


def test_authors_display_copy_is_a_whole_number_of_patches(data_dir):
    full = load_lr_image(data_dir / "lr.jpg")
    assert full.shape == (1024, 1024, 3)  # at --from 5x with 256² patches: 4×4 patches → 4096² at 20x
    assert load_lr_image(data_dir / "lr.jpg", resize=256).shape == (256, 256, 3)  # the authors' own input


@pytest.mark.parametrize(
    ("image", "source", "message"),
    [
        (np.zeros((100, 100, 3), np.uint8), "10x", "whole number of 64² patches"),
        (np.zeros((64, 64, 3), np.float32), "10x", "uint8"),
        (np.zeros((64, 64, 3), np.uint8), "20x", "coarser"),
        (np.zeros((64, 64, 3), np.uint8), "2.5x", "ratio of 8"),
        (
            np.zeros((64, 64, 3), np.uint8),
            "3x",
            "is a satellite magnification, not a level of this pathology",
        ),
    ],
)
def test_bad_inputs_fail_before_model_work(no_model_work, image, source, message):
    with pytest.raises(ZoomLDMError, match=message):
        super_resolve(no_model_work, image, source, progress=False)


def test_missing_file(tmp_path):
    with pytest.raises(ZoomLDMError, match="not found"):
        load_lr_image(tmp_path / "nope.jpg")

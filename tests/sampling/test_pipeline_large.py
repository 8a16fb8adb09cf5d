"""The Python face of large images: ``ZoomLDMPipeline.generate_large`` / ``.super_resolve`` take the inputs
users hold (paths, PIL images, arrays, SSL grids), the settings by their CLI names, return a
``LargeImageResult`` whose ``settings`` is the JSON record beside the output, write nothing without
``out``, and parse each magnification once."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

from zoomldm import (
    ConfigError,
    InputError,
    JointSamplingConfig,
    LargeImageResult,
    OutputError,
    PostprocessConfig,
    SRConfig,
    ZoomLDMError,
)
from zoomldm.sampling import output as output_module
from zoomldm.scales import Scales

#: one outer step, one Newton iteration, one post-processing step: seconds on the compat model
FAST = dict(t0=50, inner_steps=1, post_t0=50, progress=False)


@pytest.fixture(scope="module")
def grid():
    return torch.randn(32, 2, 2, generator=torch.Generator().manual_seed(0))  # a 10x guide's 2×2 base tiles


@pytest.fixture(scope="module")
def region128(data_dir):
    with Image.open(data_dir / "brca_001.jpeg") as im:  # a 128² region at 20x: the compat 10x guide's view
        return np.asarray(im.convert("RGB").crop((1024, 1024, 1152, 1152)))


@pytest.fixture(scope="module")
def lr64(data_dir):
    with Image.open(data_dir / "lr.jpg") as im:
        return np.asarray(im.convert("RGB").resize((64, 64), Image.LANCZOS))


def test_generate_large_settings_are_the_json_beside_the_output(compat_pipe, grid, tmp_path):
    out = tmp_path / "large.png"
    result = compat_pipe.generate_large(grid, guide="10x", out=out, seed=3, **FAST)
    assert isinstance(result, LargeImageResult) and result.path == out
    assert result.image.shape == (128, 128, 3) and result.image.dtype == np.uint8
    record = json.loads((tmp_path / "large.json").read_text())
    assert record["settings"] == result.settings and record["metrics"] == result.metrics
    assert result.settings["joint"]["t0"] == 50 and result.settings["postprocess"]["t0"] == 50
    assert result.settings["seed"] == 3 and result.settings["guide"] == "10x"
    assert set(result.metrics["output"]) >= {"psnr", "mae"}
    np.testing.assert_array_equal(np.asarray(Image.open(out)), result.image)


def test_out_none_writes_nothing(compat_pipe, region128, tiny_encoder, tmp_path, monkeypatch):
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(), tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    result = compat_pipe.generate_large(reference=region128, encoder=tiny_encoder, guide="10x", **FAST)
    assert result.path is None and result.image.shape == (128, 128, 3)
    assert os.listdir(cwd) == [] and os.listdir(tmp) == []
    assert result.settings["reference"]["shape"] == [32, 2, 2]  # the region embedded tile by tile


def test_every_form_of_the_reference_gives_the_same_image(compat_pipe, region128, tiny_encoder, tmp_path):
    # path, PIL image and array of the same region (the guide taken from its field of view), and the grid
    path = tmp_path / "region.png"
    Image.fromarray(region128).save(path)
    forms = [path, str(path), Image.fromarray(region128), region128]
    images = [compat_pipe.generate_large(f, encoder=tiny_encoder, **FAST).image for f in forms]
    from zoomldm.models.encoders import encode_region_grid

    grid = encode_region_grid(tiny_encoder, region128, tile=64)
    np.save(tmp_path / "grid.npy", grid.numpy())
    images.append(compat_pipe.generate_large(tmp_path / "grid.npy", **FAST).image)
    for image in images[1:]:
        np.testing.assert_array_equal(image, images[0])


def test_settings_by_cli_name_on_top_of_the_dataclasses(compat_pipe, grid):
    base = JointSamplingConfig(t0=50, inner_steps=3, tile_batch=2)
    a = compat_pipe.generate_large(
        grid, guide="10x", config=base, inner_steps=1, postprocess=False, progress=False
    )
    b = compat_pipe.generate_large(
        grid, guide="10x", config=JointSamplingConfig(t0=50, inner_steps=1, tile_batch=2), no_postprocess=True,
        post_t0=50, progress=False,
    )  # fmt: skip
    assert a.settings == b.settings and a.settings["joint"]["inner_steps"] == 1
    assert a.settings["joint"]["tile_batch"] == 2 and a.settings["postprocess"] is None
    np.testing.assert_array_equal(a.image, b.image)
    c = compat_pipe.generate_large(
        grid, guide="10x", postprocess=PostprocessConfig(t0=50, window_batch=4), fd_step=0.01, **FAST
    )
    assert c.settings["joint"]["h"] == 0.01 and c.settings["postprocess"]["window_batch"] == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(post_to=50), ConfigError, "unknown setting post_to"),
        (dict(t0="late"), ConfigError, "t0='late'"),
        (dict(inner_steps=-1), ConfigError, "inner_steps must be >= 0"),
        (dict(config=PostprocessConfig()), ConfigError, "config must be a JointSamplingConfig"),
        (dict(reference=None), InputError, "need a reference region"),
        (dict(cdm="cdm/"), ConfigError, "not both"),
        (dict(reference="missing.png"), InputError, "missing.png: reference not found"),
        (dict(reference=torch.full((32, 2, 2), float("nan"))), InputError, "128 non-finite values"),
        (dict(reference=np.zeros((100, 100, 3), np.uint8)), InputError, r"needs the 128² region"),
        (dict(reference=np.zeros((128, 128), np.uint8)), InputError, r"uint8 RGB array \[H, W, 3\]"),
        (dict(reference=torch.zeros(16, 2, 2)), InputError, "16 channels; this model expects 32"),
        (dict(guide="3x"), ConfigError, "guide magnification: '3x' is a satellite magnification"),
        (dict(out="large.jpg"), ZoomLDMError, r"\.tif"),
        (dict(guidance_w=float("nan")), ConfigError, r"guidance_w \(--guidance-w\) must be >= 0 and finite"),
        (dict(fd_step=float("inf")), ConfigError, r"h \(--fd-step\) must be > 0 and finite; got inf"),
        (dict(post_guidance_w=float("nan")), ConfigError, "--post-guidance-w"),
        (dict(inversion_lr=float("nan"), cdm="cdm/", reference=None), ConfigError, "--inversion-lr"),
    ],
)
def test_bad_requests_fail_before_model_work(no_model_work, grid, kwargs, error, message):
    request = dict(reference=grid, guide="10x") | kwargs
    with pytest.raises(error, match=message):
        no_model_work.generate_large(**request, progress=False)


def test_unwritable_or_existing_outputs_are_refused_before_model_work(no_model_work, grid, tmp_path):
    (tmp_path / "plain.txt").write_text("a file")
    with pytest.raises(OutputError, match="plain.txt is a file, not a folder"):
        no_model_work.generate_large(
            grid, guide="10x", out=tmp_path / "plain.txt" / "large.png", progress=False
        )
    (tmp_path / "done.png").write_bytes(b"a finished result")
    with pytest.raises(OutputError, match="done.png: already exists"):
        no_model_work.generate_large(
            grid, guide="10x", out=tmp_path / "done.png", overwrite=False, progress=False
        )
    with pytest.raises(OutputError, match="done.png: already exists"):
        no_model_work.super_resolve(
            np.zeros((64, 64, 3), np.uint8), "10x", out=tmp_path / "done.png", overwrite=False
        )


def test_too_large_for_memory_needs_out(no_model_work, compat_pipe, grid, tmp_path, monkeypatch):
    monkeypatch.setattr(output_module, "MAX_IN_MEMORY_PIXELS", 64 * 64)  # the 128² output is now "large"
    with pytest.raises(ZoomLDMError, match="too large to return in memory; pass out="):
        no_model_work.generate_large(grid, guide="10x", progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(output_module, "MAX_IN_MEMORY_PIXELS", 64 * 64)
    result = compat_pipe.generate_large(grid, guide="10x", out=tmp_path / "large.tif", **FAST)
    assert result.image is None and result.path.is_file()


def test_super_resolve_from_a_path_a_pil_image_and_an_array(compat_pipe, lr64, data_dir, tmp_path):
    run = dict(inversion_steps=1, t0=50, no_postprocess=True, progress=False)
    from_path = compat_pipe.super_resolve(
        data_dir / "lr.jpg", "10x", resize=64, out=tmp_path / "sr.png", **run
    )
    from_pil = compat_pipe.super_resolve(Image.fromarray(lr64), "10x", **run)
    from_array = compat_pipe.super_resolve(lr64, "10x", to="20x", **run)
    assert from_path.image.shape == (128, 128, 3) and from_pil.path is None
    for other in (from_pil, from_array):
        np.testing.assert_array_equal(other.image, from_path.image)
    record = json.loads((tmp_path / "sr.json").read_text())
    assert record["settings"] == from_path.settings and from_path.settings["sr"]["inner_steps"] == 5
    assert from_path.settings["inversion"]["steps"] == 1 and isinstance(SRConfig(), JointSamplingConfig)


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((100, 100, 3), np.uint8), {}, "whole number of 64² patches"),
        (np.zeros((64, 64, 3), np.float32), {}, "uint8 RGB array"),
        ([1, 2, 3], {}, "a file path, a PIL image or a uint8"),
        (np.zeros((64, 64, 3), np.uint8), dict(from_magnification="20x"), "coarser"),
        (np.zeros((64, 64, 3), np.uint8), dict(inversion_steps=0), "inversion steps must be >= 1"),
    ],
)
def test_super_resolve_checks_before_model_work(no_model_work, image, kwargs, message):
    with pytest.raises(ZoomLDMError, match=message):
        no_model_work.super_resolve(image, **{"from_magnification": "10x", **kwargs}, progress=False)


def test_magnifications_are_parsed_once_along_super_resolution(compat_pipe, lr64, monkeypatch):
    calls = []
    parse = Scales.parse

    def counting(self, value):
        calls.append(value)
        return parse(self, value)

    monkeypatch.setattr(Scales, "parse", counting)
    compat_pipe.super_resolve(
        lr64, "10x", inversion_steps=1, t0=50, inner_steps=1, post_t0=50, progress=False
    )  # inversion, conditions, constrained sampling, post-processing
    assert calls == ["10x"]
    calls.clear()
    compat_pipe.super_resolve(
        lr64, "10x", to="20x", inversion_steps=1, t0=50, no_postprocess=True, progress=False
    )
    assert calls == ["10x", "20x"]


def test_internals_take_parsed_levels(compat_pipe):
    from zoomldm.sampling.inversion import invert_conditions

    with pytest.raises(ConfigError, match=r"Magnification here .*pipe.magnification\('5x'\)"):
        invert_conditions(compat_pipe, torch.zeros(1, 3, 64, 64), "5x", progress=False)

"""Magnification parsing and SSL grid handling (SPEC §1.1, §1.3-1.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomldm import PATHOLOGY, SATELLITE, ZoomLDMError
from zoomldm.conditioning import load_ssl_grid, prepare_grid, standardize_tokens
from zoomldm.config import ZoomLDMConfig


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("20x", 0),
        ("2.5x", 3),
        ("2_5x", 3),
        ("2.5", 3),
        ("1.25X", 4),
        ("0_15625x", 7),
        ("0.15625x", 7),
        (5, 5),
    ],
)
def test_pathology_names(text, index):
    assert PATHOLOGY.parse(text).index == index


def test_levels_geometry():
    m = PATHOLOGY.parse("1.25x")
    assert (m.downsample, m.fov_base_px, m.grid_size, m.key) == (16, 4096, 16, "1_25x")
    assert m.mpp == pytest.approx(8.0)
    assert SATELLITE.parse("1x").index == 0 and SATELLITE.parse("4x").fov_base_px == 2048


@pytest.mark.parametrize("bad", ["30x", "abc", 8, -1, "3x"])
def test_bad_magnification(bad):
    with pytest.raises(ZoomLDMError, match="20x, 10x, 5x, 2.5x|out of range"):
        PATHOLOGY.parse(bad)


def test_presets_levels():
    assert len(ZoomLDMConfig.from_preset("brca").scales) == 8
    naip = ZoomLDMConfig.from_preset("naip")
    assert naip.domain == "satellite" and naip.scales.names == ["1x", "2x", "3x", "4x"]


def test_prepare_grid_pools_then_normalises():
    grid = torch.randn(32, 16, 16) * 3 + 1
    out = prepare_grid(grid)
    pooled = grid.reshape(32, 8, 2, 8, 2).mean(dim=(2, 4))
    expected = (pooled - pooled.mean(0)) / (pooled.std(0, unbiased=True) + 1e-8)
    assert out.shape == (32, 8, 8)
    assert torch.allclose(out, expected, atol=1e-5)
    # order matters: normalising before pooling gives something else
    assert not torch.allclose(out, prepare_grid(standardize_tokens(grid), normalize=False), atol=1e-3)
    assert prepare_grid(torch.randn(32)).shape == (32, 1, 1)


@pytest.mark.parametrize("fmt", [".npy", ".pt", ".safetensors"])
def test_load_grid_formats(tmp_path, fmt):
    from safetensors.torch import save_file

    grid = torch.randn(32, 4, 4)
    path = tmp_path / f"g{fmt}"
    if fmt == ".npy":
        np.save(path, grid.numpy())
    elif fmt == ".pt":
        torch.save(grid, path)
    else:
        save_file({"ssl_feat": grid}, str(path))
    assert torch.equal(load_ssl_grid(path, channels=32), grid)


def test_load_grid_official_layouts(tmp_path):
    grid = torch.randn(32, 4, 4)
    np.save(tmp_path / "brca.npy", grid.reshape(32, 16).numpy())  # (1024, N) channels first
    np.save(tmp_path / "naip.npy", grid.reshape(32, 16).T.numpy())  # (N, 1024) as the NAIP loader
    assert torch.equal(load_ssl_grid(tmp_path / "brca.npy", channels=32), grid)
    assert torch.equal(load_ssl_grid(tmp_path / "naip.npy", channels=32), grid)
    with pytest.raises(ZoomLDMError, match="expects 1024"):
        load_ssl_grid(tmp_path / "brca.npy", channels=1024)
    with pytest.raises(ZoomLDMError, match="not found"):
        load_ssl_grid(tmp_path / "nope.npy")


# ------------------------------------------------------------------------------------------------
# Scales.parse: names, keys and indices in every domain (issue 12); property tests with hypothesis
# ------------------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zoomldm.scales import DOMAINS, scales_for  # noqa: E402

ALL_SCALES = [PATHOLOGY, SATELLITE, scales_for("pathology", 3)]


@pytest.mark.parametrize(("scales", "text", "name"), [(SATELLITE, "0", "1x"), (PATHOLOGY, "0", "20x"),
                                                      (SATELLITE, "4", "4x"), (PATHOLOGY, "20", "20x"),
                                                      (PATHOLOGY, "1", "10x"), (PATHOLOGY, " 7 ", "0.15625x")])  # fmt: skip
def test_index_strings_in_every_domain(scales, text, name):
    """``-m 0`` is the finest level of the satellite model too (it was refused); whole numbers that are no
    index stay level names (``20`` is 20x)."""
    assert scales.parse(text).name == name


@pytest.mark.parametrize(("scales", "text"), [(SATELLITE, "1"), (SATELLITE, "3"), (PATHOLOGY, "5")])
def test_index_that_is_also_a_name_is_refused(scales, text):
    """``"1"`` for satellite is index 1 (2x) and the name 1x: neither reading is picked silently."""
    with pytest.raises(ZoomLDMError, match=rf"'{text}' is ambiguous .* write {text}x or "):
        scales.parse(text)


@pytest.mark.parametrize(
    "bad", ["8", "-1", "x", "", "nan", "inf", "1e1", "²", "٣", "9" * 5000, 2.5 + 1j, None]
)
def test_unknown_values_list_the_valid_ones(bad):
    with pytest.raises(ZoomLDMError) as err:
        PATHOLOGY.parse(bad)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300
    if not isinstance(bad, complex | type(None)):
        assert "20x, 10x, 5x, 2.5x, 1.25x, 0.625x, 0.3125x, 0.15625x (or an index 0..7)" in message


@given(st.sampled_from(ALL_SCALES), st.data())
def test_every_level_round_trips(scales, data):
    level = data.draw(st.sampled_from(scales.levels))
    assert scales.parse(level) is level
    assert scales.parse(level.index) == level
    assert scales.parse(level.name) == level
    assert scales.parse(level.key) == level
    assert scales.parse(level.name.upper()) == level
    assert scales.parse(f"  {level.key.upper()} ") == level
    bare = level.name[:-1]
    if not bare.isdigit():  # "2.5" → 2.5x (whole numbers are indices first, checked below)
        assert scales.parse(bare) == level
    text = str(level.index)
    try:
        assert scales.parse(text) == level
    except ZoomLDMError as err:  # only when the index is also another level's name ("1" = 1x, index 1 = 2x)
        assert "ambiguous" in str(err) and scales._by_name(text + "x") not in (None, level)


@given(st.sampled_from(list(DOMAINS.values())), st.one_of(st.text(max_size=30), st.integers(), st.floats()))
@settings(max_examples=300)
def test_random_values_raise_only_zoomldm_errors(scales, value):
    try:
        level = scales.parse(value)
    except ZoomLDMError as err:
        assert "\n" not in str(err)
    else:
        assert level in scales.levels


@given(st.integers())
def test_integer_indices(index):
    if 0 <= index < len(PATHOLOGY):
        assert PATHOLOGY.parse(index).index == index
    else:
        with pytest.raises(ZoomLDMError, match="out of range 0..7"):
            PATHOLOGY.parse(index)

"""The embedded offline model: the card written by tools/train_embedded_model.py is the one the locator
reads; every shipped file matches the card's sha256; a damaged, missing or unlisted file is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _fixtures import load_tool, one_thread
from zoomldm.checkpoints.embedded import card_hashes, embedded_model_path, verify_embedded_model
from zoomldm.errors import CheckpointError


def _card(**over) -> dict:
    card = {
        "inputs": {"brca_001.jpeg": "0" * 64},
        "licence": "test",
        "commands": {"train-vae": "zoomldm train-vae x --out y"},
        "steps": {"vae": 1, "unet": 1, "cdm": 1},
        "wall_time_s": {"total": 1.0},
        "vae_held_out": {
            "psnr_db": 20.0,
            "held_out_crops": 2,
            "psnr_db_by_level": {"image0/1x-down": 20.0},
            "codes_used": 3,
            "codebook_size": 64,
        },
        "vae_final_loss": {"step": 1, "loss": 0.1},
        "vae_scaling": {"latent_std": 0.25, "latent_scale": 4.0},
        "unet_final_loss": {"line": "step 1: loss 0.5"},
        "cdm_final_loss": {"line": "step 1: loss 0.7"},
        "cdm_tokens": {"20x": {"patches": 4, "cdm": 1.0, "gaussian": 2.0, "real_halves": 0.5}},
        "threads": 2,
        "precision": {"float16_unet_summarizer": True},
        "colour_stats": {
            "20x": {"stored": {"mean": [1], "std": [1]}, "generated": {"mean": [1], "std": [1]}}
        },
        "machine": "test",
    }
    card.update(over)
    return card


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder with two files and the card the training script writes for them."""
    root = tmp_path / "tiny_brca"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "weights.safetensors").write_bytes(b"\x00\x01weights" * 100)
    (root / "zoomldm.json").write_text('{"format": "zoomldm"}')
    files = sorted(p for p in root.rglob("*") if p.is_file())
    (root / "MODEL_CARD.md").write_text(load_tool("train_embedded_model").model_card(_card(), root, files))
    return root


def test_card_written_by_the_script_is_read_by_the_locator(model_dir: Path):
    table = verify_embedded_model(model_dir)
    assert set(table) == {"unet/weights.safetensors", "zoomldm.json"}
    assert table == card_hashes(model_dir / "MODEL_CARD.md")


def test_damaged_or_missing_file_is_one_line_error(model_dir: Path):
    weights = model_dir / "unet" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[5] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"weights.safetensors: sha256 differs from MODEL_CARD.md"
    ) as err:
        verify_embedded_model(model_dir)
    assert "\n" not in str(err.value)
    weights.unlink()
    with pytest.raises(CheckpointError, match="listed in MODEL_CARD.md but missing"):
        verify_embedded_model(model_dir)


def test_card_without_hashes_is_refused(model_dir: Path):
    (model_dir / "MODEL_CARD.md").write_text("# a card\n\nno table\n")
    with pytest.raises(CheckpointError, match="no Files table"):
        verify_embedded_model(model_dir)
    (model_dir / "MODEL_CARD.md").unlink()
    with pytest.raises(CheckpointError, match="no MODEL_CARD.md"):
        verify_embedded_model(model_dir)


def test_shipped_model_matches_its_card():
    """Once a model is shipped, every file in its folder (except the card) is listed with the right hash."""
    path = _shipped()
    table = verify_embedded_model(path)
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"MODEL_CARD.md"}
    present = {p for p in present if "__pycache__" not in p}
    assert set(table) == present
    card = (path / "MODEL_CARD.md").read_text()
    for needle in ("brca_001.jpeg", "zoomldm train-vae", "zoomldm prepare", "zoomldm train", "PSNR"):
        assert needle in card
    # the files do not depend on where the script ran: no builder paths in the configs (diffusers'
    # _name_or_path is dropped by tools/train_embedded_model.strip_build_paths)
    for config in path.rglob("config.json"):
        assert "_name_or_path" not in json.loads(config.read_text()), config


def _shipped() -> Path:
    """The package ships its embedded model (issue 16): a missing one is a packaging failure, not a skip."""
    path = embedded_model_path(verify=False)
    assert path is not None, (
        "zoomldm/assets/tiny_brca is missing (package-data, or tools/train_embedded_model.py --install)"
    )
    return path


def test_shipped_model_generates_h_and_e_colours(data_dir: Path):
    """A 20x patch from the shipped model, conditioned on a real H&E tile embedded with its encoder, has
    H&E's colour order (green lowest: pink/purple) and structure (not a flat field); the random tiny model
    the demo used before gives grey (R ≈ G ≈ B)."""
    import numpy as np

    from zoomldm.io.images import load_image
    from zoomldm.models.encoders import encode_region_grid
    from zoomldm.pipeline import load_embedded

    _shipped()
    pipe, encoder = load_embedded()
    image = load_image(data_dir / "brca_001.jpeg")[2048:2304, 2048:2304]
    with one_thread():  # two threads on the shared 2-core machine: 255 s measured under load, not ~5 s
        grid = encode_region_grid(encoder, image).cpu()
        patch = pipe(
            ssl=grid, magnification="20x", num_images=1, num_inference_steps=10, seed=0, progress=False
        )
    rgb = patch.images[0].reshape(-1, 3).astype(np.float64)
    mean = rgb.mean(0)
    assert mean[1] < mean[0] - 15 and mean[1] < mean[2] - 15, mean  # H&E: G well below R and B
    assert rgb.std(0).min() > 8, rgb.std(0)  # structure, not a flat field


def test_demo_offline_falls_back_to_the_embedded_model(capsys, monkeypatch):
    """Without the published weights the demo uses the embedded model and says so in one line; a checkpoint
    the user names is never replaced."""
    from zoomldm.checkpoints import default as embedded  # the module of the default rule
    from zoomldm.demo import load_demo_pipeline
    from zoomldm.errors import ZoomLDMError

    path = _shipped()
    # offline: the published checkpoint is neither cached nor reachable (as on this machine)
    monkeypatch.delenv(embedded.CHECKPOINT_ENV, raising=False)
    monkeypatch.setattr(embedded, "published_available", lambda timeout=embedded.HUB_TIMEOUT_S: False)
    pipe, encoder, kind = load_demo_pipeline(None, "cpu")
    out = capsys.readouterr().out.strip().splitlines()
    assert kind == "embedded" and len(out) == 1 and "embedded offline model" in out[0], out
    assert Path(pipe.provenance["checkpoint"]) == path
    assert encoder.dim == pipe.config.ssl_channels
    # the rule picked the published model but it cannot be had here: the embedded one, one line
    monkeypatch.setattr(embedded, "published_available", lambda timeout=embedded.HUB_TIMEOUT_S: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _, _, kind = load_demo_pipeline(None, "cpu")
    out = capsys.readouterr().out.strip().splitlines()
    assert kind == "embedded" and len(out) == 1 and "could not be loaded" in out[0], out
    for named in ("brca", "models/missing"):  # named: an error, never the stand-in
        with pytest.raises(ZoomLDMError):
            load_demo_pipeline(named, "cpu")
    monkeypatch.setenv(embedded.CHECKPOINT_ENV, "models/missing")
    with pytest.raises(ZoomLDMError):
        load_demo_pipeline(None, "cpu")


def test_shipped_aerial_model_matches_its_card_and_loads_by_name():
    """``embedded-naip`` (issue 25): produced by the same script with ``--domain satellite``; every file is
    the card's, it loads by its name wherever a checkpoint is taken and embeds with its own encoder."""
    from zoomldm import ZoomLDMPipeline
    from zoomldm.checkpoints import EMBEDDED_NAIP, embedded_name
    from zoomldm.models.ssl import default_encoder

    path = embedded_model_path(verify=False, name=EMBEDDED_NAIP)
    assert path is not None, (
        "zoomldm/assets/tiny_naip is missing (tools/train_embedded_model.py --domain satellite --install)"
    )
    table = verify_embedded_model(path)
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"MODEL_CARD.md"}
    assert set(table) == {p for p in present if "__pycache__" not in p}
    card = (path / "MODEL_CARD.md").read_text()
    for needle in ("naip_001.jpg", "--domain satellite", "--config tiny-naip", "sentinel2_rgb.tif", "PSNR"):
        assert needle in card, needle
    pipe = ZoomLDMPipeline.from_pretrained(EMBEDDED_NAIP)
    assert pipe.scales.domain == "satellite" and pipe.scales.names == ["1x", "2x", "3x", "4x"]
    assert embedded_name(path) == EMBEDDED_NAIP and default_encoder(pipe) == EMBEDDED_NAIP


def test_demo_satellite_runs_offline_on_the_aerial_model(tmp_path, capsys):
    """``zoomldm demo --domain satellite`` (small steps): one line names the model; patches at all 4
    levels, the large image and the Sentinel-2 super-resolution are written, both as COGs."""
    from zoomldm.demo_satellite import run_satellite_demo
    from zoomldm.io.geotiff import validate_cog

    with one_thread():
        summary = run_satellite_demo(None, tmp_path, steps=2, per_level=1, quick=True)
    out = capsys.readouterr().out
    assert out.count("embedded-naip") == 1 and "Sentinel-2" in out
    assert set(summary["levels"]) == {"1x", "2x", "3x", "4x"}
    for key in ("large_image", "super_resolution"):
        assert validate_cog(summary[key]["path"]) == [], key
    # generate with a satellite model: the COG layout, without georeference (the image is synthetic)
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(summary["large_image"]["path"]) as dst:
            assert dst.crs is None and (dst.width, dst.height) == (512, 512)
    assert summary["super_resolution"]["metrics"]["psnr"] > 10

"""The core commands end to end (convert, sample) and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures import run_cli
from zoomldm.cli import main
from zoomldm.io.images import read_png_metadata


@pytest.fixture(scope="module")
def converted(tmp_path_factory, small_checkpoint, small_config):
    out = tmp_path_factory.mktemp("conv") / "model"
    main_args = ["convert", str(small_checkpoint), str(out), "--config", str(small_config)]
    try:
        main(main_args)
    except SystemExit as e:
        assert e.code in (0, None)
    return out


@pytest.fixture(scope="module")
def ssl_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ssl") / "grid.npy"
    np.save(path, np.random.default_rng(0).standard_normal((32, 4, 4)).astype("float32"))
    return path


def test_convert_writes_our_format(converted):
    meta = json.loads((converted / "zoomldm.json").read_text())
    assert meta["format"] == "zoomldm" and len(meta["provenance"]["converted_from_sha256"]) == 64
    assert (converted / "summarizer" / "diffusion_pytorch_model.safetensors").is_file()


def test_sample_from_ssl_file(converted, ssl_file, tmp_path, capsys):
    out = tmp_path / "samples"
    args = [
        "sample",
        "--checkpoint",
        str(converted),
        "-m",
        "5x",
        "--ssl",
        str(ssl_file),
        "--n",
        "3",
        "--steps",
        "3",
        "--seed",
        "7",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0, stdout
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["contact_sheet.png", "patch_0000.png", "patch_0001.png", "patch_0002.png"]
    patch = np.asarray(Image.open(out / "patch_0001.png"))
    assert patch.shape == (64, 64, 3) and patch.std() > 0
    meta = read_png_metadata(out / "patch_0001.png")
    assert meta["magnification"] == "5x" and meta["seed"] == 7 and meta["scheduler"] == "ddim"
    # same seed, different batch size → the same images (the noise is drawn for all N at once; only
    # batch-size-dependent float rounding of the kernels remains: at most 1 grey level here)
    out2 = tmp_path / "again"
    args2 = [a if a != "2" else "3" for a in args[:-1]] + [str(out2)]
    code, _, _ = run_cli(args2, capsys)
    assert code == 0
    again = np.asarray(Image.open(out2 / "patch_0001.png")).astype(int)
    assert np.abs(again - patch).max() <= 1 and (again == patch).mean() > 0.99


def test_sample_from_official_file_directly(small_checkpoint, small_config, ssl_file, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "sample",
            "--checkpoint",
            str(small_checkpoint),
            "--config",
            str(small_config),
            "-m",
            "20x",
            "--ssl",
            str(ssl_file),
            "--n",
            "1",
            "--steps",
            "2",
            "--scheduler",
            "plms",
            "--device",
            "cpu",
            "--optimize",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "o" / "patch_0000.png").is_file()
    # --optimize on a CPU: fused projections, no channels-last (slower there); recorded with the settings
    settings = read_png_metadata(tmp_path / "o" / "patch_0000.png")["inference_settings"]
    assert settings["fused_qkv"] > 0 and settings["channels_last"] is False and settings["compile"] is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-m", "30x"], "unknown pathology magnification '30x'; expected one of 20x"),
        (["-m", "5x", "--steps", "0"], "steps must be an integer in 1..1000"),
        (["-m", "5x", "--guidance", "-1"], "guidance must be in 0..50"),
        (["-m", "5x", "--guidance", "500"], "guidance must be in 0..50"),
    ],
)
def test_bad_sampling_arguments(converted, ssl_file, tmp_path, capsys, extra, message):
    code, _, err = run_cli(
        [
            "sample",
            "--checkpoint",
            str(converted),
            "--ssl",
            str(ssl_file),
            "--n",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            *extra,
        ],
        capsys,
    )
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_wrong_channel_count(converted, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1024, 2, 2), dtype="float32"))
    code, _, err = run_cli(
        ["sample", "--checkpoint", str(converted), "--ssl", str(bad), "-m", "10x", "--device", "cpu"], capsys
    )
    assert code == 2 and "1024 channels, the model expects 32" in err and len(err.strip().splitlines()) == 1


def test_missing_files(converted, ssl_file, tmp_path, capsys):
    code, _, err = run_cli(
        ["sample", "--checkpoint", str(tmp_path / "nope.ckpt"), "--ssl", str(ssl_file), "-m", "5x"], capsys
    )
    assert code == 2 and "checkpoint not found" in err
    code, _, err = run_cli(
        ["sample", "--checkpoint", str(converted), "--ssl", str(tmp_path / "x.npy"), "-m", "5x"], capsys
    )
    assert code == 2 and "file not found" in err and "Traceback" not in err


def test_checkpoint_of_another_model(tmp_path, capsys, ssl_file):
    path = tmp_path / "sd.ckpt"
    torch.save(
        {
            "state_dict": {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
                "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768),
            }
        },
        path,
    )
    code, _, err = run_cli(
        ["sample", "--checkpoint", str(path), "--config", "brca", "--ssl", str(ssl_file), "-m", "5x"], capsys
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "schedule buffer" in err or "unexpected key" in err or "missing key" in err


def test_reference_encoder_dimension_mismatch(converted, data_dir, tmp_path, capsys):
    ref = tmp_path / "ref.png"
    Image.open(data_dir / "brca_001.jpeg").crop((0, 0, 512, 512)).save(ref)
    code, _, err = run_cli(
        [
            "sample",
            "--checkpoint",
            str(converted),
            "--reference",
            str(ref),
            "-m",
            "10x",
            "--encoder",
            "timm:vit_tiny_patch16_224",
            "--encoder-weights",
            "random",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 2 and "gives 192-d embeddings, the model expects 32" in err


def test_reference_region_through_the_api(converted, data_dir):
    """(b) of issue 2: a real image region embedded tile by tile conditions the patches."""
    from zoomldm import ZoomLDMPipeline
    from zoomldm.models.encoders import build_encoder, encode_region_grid

    pipe = ZoomLDMPipeline.from_pretrained(converted)
    enc = build_encoder("timm:vit_tiny_patch16_224", weights="random", embed_dim=32, depth=1, num_heads=2)
    region = np.asarray(Image.open(data_dir / "brca_001.jpeg").convert("RGB"))[:512, :512]
    grid = encode_region_grid(enc, region)
    assert grid.shape == (32, 2, 2)
    out = pipe(ssl=grid, magnification="10x", num_images=2, num_inference_steps=2, seed=1, progress=False)
    other = pipe(
        ssl=grid.flip(1), magnification="10x", num_images=2, num_inference_steps=2, seed=1, progress=False
    )
    assert out.images.shape == (2, 64, 64, 3)
    assert not np.array_equal(out.images, other.images)  # the condition reaches the output


def test_unconditional_with_cdm(converted, tmp_path, capsys):
    """``--unconditional``: CDM tokens replace the Summarizer (issue 6 item 1, through the core CLI)."""
    from zoomldm.models.cdm import ConditioningDiT

    torch.manual_seed(0)
    cdm = ConditioningDiT(token_dim=32 * 2, hidden_size=32, depth=1, num_heads=2, num_magnifications=8)
    cdm.save_pretrained(tmp_path / "cdm")
    out = tmp_path / "unc"
    args = [
        "sample",
        "--checkpoint",
        str(converted),
        "--unconditional",
        "--cdm",
        str(tmp_path / "cdm"),
        "-m",
        "5x",
        "--n",
        "2",
        "--steps",
        "2",
        "--cdm-steps",
        "4",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert len(list(out.glob("patch_*.png"))) == 2
    assert "CDM" in read_png_metadata(out / "patch_0000.png")["conditions"]
    code, _, err = run_cli(
        args[:4] + ["-m", "5x", "--device", "cpu"], capsys
    )  # --unconditional without --cdm
    assert code == 2 and "--cdm" in err

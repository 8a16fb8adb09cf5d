"""``zoomldm generate`` / ``zoomldm superres`` end to end with the compat checkpoint, the reference-free
(CDM) path, and one-line errors for bad requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _fixtures import run_cli
from zoomldm.errors import ZoomLDMError
from zoomldm.models.cdm import ConditioningDiT
from zoomldm.sampling.constrained import JointSamplingConfig
from zoomldm.sampling.inversion import InversionConfig
from zoomldm.sampling.joint import generate_large_image

FAST = ["--t0", "50", "--inner-steps", "1", "--post-t0", "50", "--device", "cpu"]


@pytest.fixture
def model_args(small_checkpoint, small_config):
    return ["--checkpoint", str(small_checkpoint), "--config", str(small_config)]


def test_generate_from_a_grid_file(model_args, tmp_path, capsys):
    grid = tmp_path / "grid.npy"
    np.save(grid, np.random.default_rng(0).standard_normal((32, 2, 2)).astype("float32"))
    out = tmp_path / "large.tif"
    code, stdout, err = run_cli(
        ["generate", *model_args, "--reference", str(grid), "--guide", "10x", "--out", str(out), *FAST],
        capsys,
    )
    assert code == 0, err
    assert "PSNR" in stdout and out.is_file() and (tmp_path / "large_guide.png").is_file()
    record = json.loads((tmp_path / "large.json").read_text())
    assert record["settings"]["k"] == 2 and record["settings"]["joint"]["t0"] == 50


def test_superres_command_on_the_authors_lr_image(model_args, data_dir, tmp_path, capsys):
    out = tmp_path / "sr.png"
    code, stdout, err = run_cli(
        [
            "superres",
            str(data_dir / "lr.jpg"),
            "--from",
            "10x",
            "--resize",
            "64",
            *model_args,
            "--out",
            str(out),
            "--inversion-steps",
            "2",
            "--optimize",  # fused projections in the EMA pipeline and in the live UNet of post-processing
            "--post-live-weights",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    assert out.is_file() and "wrote" in stdout
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["inference_settings"]["fused_qkv"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--guide", "10x"], "need a reference region"),
        (["generate", "--size", "100"], "multiple of the 64-px tile"),
        (["generate", "--guide", "0.625x"], "ratio of 8"),  # too far even for two stages
        (["generate", "--guide", "10x", "--region", "1,2"], "X,Y,W,H"),
        (["superres", "LR", "--from", "20x"], "coarser"),
        (["superres", "LR", "--from", "10x", "--resize", "100"], "whole number of 64"),
        (
            ["superres", "LR", "--from", "10x", "--resize", "64", "--tile-batch", "many"],
            "number of tiles or auto",
        ),
    ],
)
def test_bad_requests_are_one_line_errors(model_args, data_dir, args, message, capsys):
    args = [str(data_dir / "lr.jpg") if a == "LR" else a for a in args]
    code, _, err = run_cli([*args, *model_args, "--device", "cpu"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_generate_checks_the_reference_image_size(model_args, data_dir, capsys):
    code, _, err = run_cli(
        ["generate", *model_args, "--reference", str(data_dir / "lr.jpg"), "--guide", "10x"], capsys
    )
    assert code == 2 and "needs the 128² region" in err


def test_reference_free_generation_with_a_cdm(trained_vq_pipe):
    # SPEC §12 extension: CDM tokens → guide patch → condition inversion → constrained tiles under it
    cdm = ConditioningDiT(token_dim=64, hidden_size=32, depth=1, num_heads=2, num_magnifications=8)
    result = generate_large_image(
        trained_vq_pipe,
        None,
        guide="10x",
        cdm=cdm,
        config=JointSamplingConfig(t0=50, inner_steps=1),
        inversion=InversionConfig(steps=2),
        guide_steps=2,
        postprocess=False,
        seed=0,
        progress=False,
    )
    assert result.image.shape == (128, 128, 3) and result.guide_image.shape == (64, 64, 3)
    assert result.settings["reference"]["kind"] == "cdm" and np.isfinite(result.metrics["output"]["psnr"])
    assert result.latent.shape == (3, 32, 32)
    with pytest.raises(ZoomLDMError, match="64-d"):  # a CDM of another model's token width
        generate_large_image(
            trained_vq_pipe,
            None,
            guide="10x",
            cdm=ConditioningDiT(token_dim=32, depth=1, hidden_size=32, num_heads=2),
        )


@pytest.mark.parametrize(("command", "inner"), [("generate", 10), ("superres", 5)])
def test_shared_options_keep_each_commands_defaults(command, inner):
    # the 32 shared options come from one table (cli/large.py); only the Newton iterations differ
    import typer

    from zoomldm.cli import app

    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    assert params["inner_steps"].default == inner
    assert params["fd_step"].default == 0.005 and params["post_t0"].default == 300
    assert params["t0"].opts == ["--t0"] and params["optimize"].secondary_opts == ["--no-optimize"]
    assert {"checkpoint", "inversion_steps", "compile", "compression", "region", "target"} <= set(params)


def test_an_existing_output_needs_overwrite(model_args, tmp_path, capsys):
    grid, out = tmp_path / "grid.npy", tmp_path / "done.png"
    np.save(grid, np.zeros((32, 2, 2), np.float32))
    out.write_bytes(b"a finished result")
    args = ["generate", *model_args, "--reference", str(grid), "--guide", "10x", "--out", str(out), *FAST]
    code, _, err = run_cli(args, capsys)
    assert (
        code == 2
        and "done.png: already exists (pass --overwrite" in err
        and out.read_bytes() == b"a finished result"
    )

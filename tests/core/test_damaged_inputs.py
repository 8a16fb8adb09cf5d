"""Damaged or wrong inputs to every public loader end in one ZoomLDMError line that names the file (issue 12).

The damaged files are made from the real fixtures in ../shared: copies of the compat checkpoint and of the
data images cut short, random bytes, text, empty files and directories with the expected suffix.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures import run_cli
from zoomldm import CheckpointError, InputError, ZoomLDMError, ZoomLDMPipeline
from zoomldm.checkpoints import read_state_dict

KINDS = ["text", "random", "empty", "directory", "truncated"]


def damaged(tmp_path: Path, kind: str, name: str, source: Path | bytes | None = None) -> Path:
    """A file called ``name`` that is not what its suffix says: a few bytes of text, random bytes, empty, a
    directory, or the first half of ``source`` (a real file or its bytes)."""
    path = tmp_path / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path.write_text("this is not a model file\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "truncated":
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        raise AssertionError(kind)
    return path


def one_line(message: str, path: Path) -> None:
    """The message is one line and names the file."""
    assert "\n" not in message.strip(), message
    assert path.name in message, message


class Evil:
    """A pickle that runs a shell command when it is loaded (``os.system`` is ``posix.system`` here)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def small_sd(small_checkpoint):
    return read_state_dict(small_checkpoint)


@pytest.fixture(scope="module")
def safetensors_checkpoint(tmp_path_factory, small_sd) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("st") / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in small_sd.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, small_checkpoint, small_config) -> Path:
    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    return pipe.save_pretrained(tmp_path_factory.mktemp("ours") / "model")


@pytest.fixture(scope="module")
def ssl_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ssl") / "grid.npy"
    np.save(path, np.random.default_rng(0).standard_normal((32, 4, 4)).astype("float32"))
    return path


# ------------------------------------------------------------------------------------------------
# checkpoints: read_state_dict, from_official, from_pretrained, the CDM loader
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_read_state_dict_damaged_ckpt(tmp_path, small_checkpoint, kind):
    path = damaged(tmp_path, kind, "weights.ckpt", small_checkpoint)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    one_line(str(err.value), path)
    expected = {"empty": "empty file", "directory": "is a directory"}.get(kind, "truncated or not a PyTorch")
    assert expected in str(err.value)
    if kind == "truncated":  # the library's own error stays chained for debugging
        assert err.value.__cause__ is not None


@pytest.mark.parametrize("kind", KINDS)
def test_read_state_dict_damaged_safetensors(tmp_path, safetensors_checkpoint, kind):
    path = damaged(tmp_path, kind, "weights.safetensors", safetensors_checkpoint)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    one_line(str(err.value), path)
    if kind in ("text", "random", "truncated"):
        assert "truncated or not a safetensors file" in str(err.value)


@pytest.mark.parametrize("protocol", ["torch.save", "pickle protocol 4", "pickle protocol 2"])
def test_pickle_with_code_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "x": Evil(marker)}
    if protocol == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(protocol[-1])))
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    message = str(err.value)
    one_line(message, path)
    assert "contains code (posix.system)" in message and "trusted machine" in message
    assert "weights_only" not in message and "add_safe_globals" not in message  # not torch's advice text
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "random", "directory"])
def test_from_official_damaged(tmp_path, small_checkpoint, small_config, kind):
    path = damaged(tmp_path, kind, "weights.ckpt", small_checkpoint)
    with pytest.raises(CheckpointError) as err:
        ZoomLDMPipeline.from_official(path, config=small_config)
    one_line(str(err.value), path)


def test_from_config_with_a_directory(tmp_path):
    from zoomldm import ConfigError

    with pytest.raises(ConfigError, match="is a directory; pass a preset"):
        ZoomLDMPipeline.from_config(tmp_path)


def _copy(converted: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted, tmp_path / "model"))


@pytest.mark.parametrize(
    ("damage", "named", "reason"),
    [
        ("garbled zoomldm.json", "zoomldm.json", "not valid JSON"),
        ("zoomldm.json holds a list", "zoomldm.json", "expected a JSON object"),
        ("zoomldm.json without config", "zoomldm.json", "not a zoomldm model description"),
        ("truncated unet weights", "diffusion_pytorch_model.safetensors", "truncated or not a safetensors"),
        ("garbled vae config", "config.json", "not valid JSON"),
        ("missing summarizer", "summarizer", "folder is missing"),
        ("missing unet weights", "unet", "no weights file"),
    ],
)
def test_from_pretrained_damaged_folder(tmp_path, converted, damage, named, reason):
    model = _copy(converted, tmp_path)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "garbled zoomldm.json":
        (model / "zoomldm.json").write_text('{"format": "zoomldm", "config": {')
    elif damage == "zoomldm.json holds a list":
        (model / "zoomldm.json").write_text("[1, 2]")
    elif damage == "zoomldm.json without config":
        (model / "zoomldm.json").write_text('{"format": "zoomldm"}')
    elif damage == "truncated unet weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbled vae config":
        (model / "vae" / "config.json").write_bytes(b"\x00\xff garbage")
    elif damage == "missing summarizer":
        shutil.rmtree(model / "summarizer")
    elif damage == "missing unet weights":
        weights.unlink()
    with pytest.raises(CheckpointError) as err:
        ZoomLDMPipeline.from_pretrained(model)
    message = str(err.value)
    assert "\n" not in message and named in message and reason in message, message


def test_cli_sample_with_damaged_model_folder(tmp_path, capsys, converted, ssl_file):
    model = _copy(converted, tmp_path)
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(["sample", "--checkpoint", str(model), "--ssl", str(ssl_file), "-m", "5x"], capsys)
    assert_cli_error(code, err, weights, "truncated or not a safetensors file")


def _official_cdm(tmp_path: Path) -> Path:
    """A DiT training checkpoint in the authors' layout ({"model", "ema", "args"}) of a tiny CDM."""
    from zoomldm.models.cdm import ConditioningDiT

    torch.manual_seed(0)
    model = ConditioningDiT(token_dim=64, hidden_size=32, depth=1, num_heads=2, num_magnifications=8)
    sd = model.state_dict()
    path = tmp_path / "cdm.pt"
    torch.save({"model": sd, "ema": sd, "args": argparse.Namespace(model="DiT-tiny")}, path)
    return path


@pytest.mark.parametrize("kind", ["truncated", "random", "text", "empty"])
def test_cdm_loader_damaged(tmp_path, kind):
    from zoomldm.models.cdm import load_cdm, load_official_cdm

    good = _official_cdm(tmp_path)
    load_official_cdm(good, num_heads=2)  # the intact file loads
    path = damaged(tmp_path, kind, "cdm.pt", good)
    with pytest.raises(CheckpointError) as err:
        load_cdm(path, num_heads=2)
    one_line(str(err.value), path)


def test_cdm_loader_refuses_code_and_damaged_folders(tmp_path):
    from zoomldm.models.cdm import ConditioningDiT, load_cdm

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"ema": {"w": torch.zeros(1)}, "x": Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"contains code \(posix\.system\)"):
        load_cdm(evil)
    assert not marker.exists()
    ours = tmp_path / "ours"
    ConditioningDiT(token_dim=64, hidden_size=32, depth=1, num_heads=2).save_pretrained(ours)
    weights = ours / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError) as err:
        load_cdm(ours)
    one_line(str(err.value), weights)


# ------------------------------------------------------------------------------------------------
# the CLI: sample --checkpoint, convert, sample --ssl / --reference, superres
# ------------------------------------------------------------------------------------------------
def assert_cli_error(code: int, err: str, path: Path, reason: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert path.name in err and reason in err, err


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "directory"])
def test_cli_sample_and_convert_with_damaged_checkpoint(
    tmp_path, capsys, small_checkpoint, small_config, ssl_file, kind
):
    path = damaged(tmp_path, kind, "weights.ckpt", small_checkpoint)
    reason = {"empty": "empty file", "directory": "is a directory"}.get(kind, "truncated or not a PyTorch")
    code, _, err = run_cli(
        [
            "sample",
            "--checkpoint",
            str(path),
            "--config",
            str(small_config),
            "--ssl",
            str(ssl_file),
            "-m",
            "5x",
        ],
        capsys,
    )
    if kind == "directory":  # a folder is looked into for our format or weights.ckpt
        assert code == 2 and "holds neither our format" in err and "Traceback" not in err
    else:
        assert_cli_error(code, err, path, reason)
    code, _, err = run_cli(
        ["convert", str(path), str(tmp_path / "out"), "--config", str(small_config)], capsys
    )
    assert_cli_error(code, err, path, reason)
    assert not (tmp_path / "out").exists()


def test_cli_sample_refuses_code_checkpoint(tmp_path, capsys, small_config, ssl_file):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"x": Evil(marker)}}, protocol=4))
    code, _, err = run_cli(
        [
            "sample",
            "--checkpoint",
            str(path),
            "--config",
            str(small_config),
            "--ssl",
            str(ssl_file),
            "-m",
            "5x",
        ],
        capsys,
    )
    assert_cli_error(code, err, path, "contains code (posix.system)")
    assert not marker.exists()


def test_cli_sample_nan_grid(tmp_path, capsys, converted):
    grid = np.random.default_rng(0).standard_normal((32, 4, 4)).astype("float32")
    grid[0, 0, :3] = np.nan
    grid[1, 2, 2] = np.inf
    grid[3, 1, 1] = -np.inf
    path = tmp_path / "grid.npy"
    np.save(path, grid)
    code, _, err = run_cli(
        ["sample", "--checkpoint", str(converted), "--ssl", str(path), "-m", "5x", "--device", "cpu"], capsys
    )
    assert_cli_error(code, err, path, "5 non-finite values (NaN/inf)")


def _truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def reference_png(tmp_path_factory, data_dir) -> Path:
    path = tmp_path_factory.mktemp("ref") / "region.png"
    Image.open(data_dir / "brca_001.jpeg").crop((0, 0, 512, 512)).save(path)
    return path


@pytest.mark.parametrize("fmt", ["png", "jpeg", "text"])
def test_cli_sample_damaged_reference(tmp_path, capsys, converted, reference_png, fmt):
    if fmt == "png":
        path = _truncated_copy(reference_png, tmp_path / "ref.png")
        reason = "truncated file"
    elif fmt == "jpeg":
        Image.open(reference_png).save(tmp_path / "full.jpg", quality=90)
        path = _truncated_copy(tmp_path / "full.jpg", tmp_path / "ref.jpg")
        reason = "truncated file"
    else:
        path = tmp_path / "ref.png"
        path.write_text("not an image")
        reason = "unknown image format"
    code, _, err = run_cli(
        [
            "sample", "--checkpoint", str(converted), "--reference", str(path), "-m", "10x",
            "--encoder", "timm:vit_tiny_patch16_224", "--encoder-weights", "random", "--device", "cpu",
        ],
        capsys,
    )  # fmt: skip
    assert_cli_error(code, err, path, reason)


@pytest.mark.parametrize("name", ["lr.jpg", "sr.jpg"])
def test_load_lr_image_truncated(tmp_path, data_dir, name):
    from zoomldm.sampling.superres import load_lr_image

    assert load_lr_image(data_dir / name).shape[2] == 3
    path = _truncated_copy(data_dir / name, tmp_path / name)
    with pytest.raises(InputError, match="truncated file") as err:
        load_lr_image(path)
    one_line(str(err.value), path)
    assert isinstance(err.value.__cause__, OSError)


def test_cli_superres_damaged_lr_image(tmp_path, capsys, data_dir):
    path = _truncated_copy(data_dir / "lr.jpg", tmp_path / "lr.jpg")
    code, _, err = run_cli(["superres", str(path), "--from", "5x"], capsys)
    assert_cli_error(code, err, path, "truncated file")
    (tmp_path / "empty.jpg").write_bytes(b"")
    code, _, err = run_cli(["superres", str(tmp_path / "empty.jpg"), "--from", "5x"], capsys)
    assert_cli_error(code, err, tmp_path / "empty.jpg", "empty file")


# ------------------------------------------------------------------------------------------------
# images (io.images.load_image)
# ------------------------------------------------------------------------------------------------
def test_load_image_reasons(tmp_path, data_dir):
    from zoomldm.io.images import load_image

    image = load_image(data_dir / "sentinel2_rgb.tif")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    cases = {
        damaged(tmp_path, "empty", "a.png"): "empty file",
        damaged(tmp_path, "directory", "b.png"): "is a directory",
        damaged(tmp_path, "random", "c.jpg"): "unknown image format",
        damaged(tmp_path, "truncated", "d.tif", data_dir / "sentinel2_rgb.tif"): "d.tif",
        tmp_path / "missing.png": "not found",
    }
    for path, reason in cases.items():
        with pytest.raises(InputError) as err:
            load_image(path)
        one_line(str(err.value), path)
        assert reason in str(err.value)


# ------------------------------------------------------------------------------------------------
# SSL grids
# ------------------------------------------------------------------------------------------------
def _save_grid(path: Path, grid: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    if path.suffix == ".npy":
        np.save(path, grid.numpy())
    elif path.suffix == ".pt":
        torch.save(grid, path)
    else:
        save_file({"ssl_feat": grid.contiguous()}, str(path))
    return path


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_grid_non_finite_values_are_counted(tmp_path, suffix):
    from zoomldm.conditioning import load_ssl_grid

    grid = torch.randn(32, 4, 4)
    grid.view(-1)[[0, 5, 17, 40, 99]] = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), 1.0, float("nan")]
    )
    path = _save_grid(tmp_path / f"grid{suffix}", grid)
    with pytest.raises(InputError, match=r"grid\S* 4 non-finite values \(NaN/inf\)") as err:
        load_ssl_grid(path, channels=32)
    one_line(str(err.value), path)


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
@pytest.mark.parametrize("kind", KINDS)
def test_grid_damaged_files(tmp_path, suffix, kind):
    from zoomldm.conditioning import load_ssl_grid

    good = _save_grid(tmp_path / f"good{suffix}", torch.randn(32, 4, 4))
    path = damaged(tmp_path, kind, f"grid{suffix}", good)
    with pytest.raises(InputError) as err:
        load_ssl_grid(path, channels=32)
    one_line(str(err.value), path)


@pytest.mark.parametrize("shape", [(), (2, 32, 4, 4), (1, 1, 32, 4, 4), (32, 0, 0)])
def test_grid_wrong_dimensionality(tmp_path, shape):
    from zoomldm.conditioning import load_ssl_grid

    path = tmp_path / "grid.npy"
    np.save(path, np.zeros(shape, dtype="float32"))
    with pytest.raises(ZoomLDMError) as err:
        load_ssl_grid(path)
    one_line(str(err.value), path)


def test_grid_of_strings_is_refused(tmp_path):
    from zoomldm.conditioning import load_ssl_grid

    path = tmp_path / "grid.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(InputError, match="numeric"):
        load_ssl_grid(path)


# ------------------------------------------------------------------------------------------------
# encoders: non-finite embeddings, damaged weights files
# ------------------------------------------------------------------------------------------------
TINY = dict(embed_dim=32, depth=1, num_heads=2, img_size=64)


def test_non_finite_embeddings_are_refused(brca_image):
    from zoomldm.models.encoders import build_encoder, encode_region_grid

    enc = build_encoder("timm:vit_tiny_patch16_224", weights="random", **TINY)
    region = np.ascontiguousarray(brca_image[:512, :512])
    assert torch.isfinite(encode_region_grid(enc, region)).all()
    with torch.no_grad():
        enc.model.norm.weight[3] = float("nan")  # one feature of every embedding
    with pytest.raises(InputError, match=r"4 non-finite values \(NaN/inf\) in 4 of 4 tile embeddings"):
        encode_region_grid(enc, region)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("kind", ["truncated", "text", "empty"])
def test_damaged_encoder_weights(tmp_path, suffix, kind):
    from safetensors.torch import save_file

    from zoomldm.models.encoders import build_encoder

    enc = build_encoder("timm:vit_tiny_patch16_224", weights="random", **TINY)
    good = tmp_path / f"good{suffix}"
    sd = {k: v.contiguous() for k, v in enc.model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(sd, str(good))
    else:
        torch.save(sd, good)
    assert build_encoder("timm:vit_tiny_patch16_224", weights=good, **TINY).dim == 32
    path = damaged(tmp_path, kind, f"weights{suffix}", good)
    with pytest.raises(InputError) as err:
        build_encoder("timm:vit_tiny_patch16_224", weights=path, **TINY)
    one_line(str(err.value), path)
    assert "does not fit" not in str(err.value)  # the file is damaged, not of another model
    with pytest.raises(InputError, match="does not fit"):  # an intact file of another architecture
        build_encoder(
            "timm:vit_tiny_patch16_224", weights=good, embed_dim=64, depth=1, num_heads=2, img_size=64
        )

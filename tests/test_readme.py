"""README.md's Python examples run: the "Try it offline" block exactly as written (the embedded model, no
substitution), the others on the small compat model.

The ```python blocks are executed in order, in one namespace, in a folder that holds the files the README
names (``brca/weights.ckpt`` is the compat checkpoint, ``region_4096.png`` a real H&E region of the size the
compat model's guide needs, ``lr.jpg`` the authors' image, ``grid.npy`` an SSL grid, ``cdm/`` a small CDM,
``slides/`` one small pyramidal TIFF of real H&E).
The only edits are the explicit table below: the model's config and device, encoder weights we do not ship,
and the sizes / step counts that make the run take seconds (each entry must still be in the README, so the
table cannot silently stop applying). A README example that breaks fails this test.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures import one_thread, write_pyramid_tiff

sys.path.insert(0, str(Path(__file__).resolve().parent / "features"))
from mil_synthetic import make_cohort, tile_pools  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FAST = "t0=50, inner_steps=1, post_t0=50"


def substitutions(small_config: Path) -> list[tuple[str, str]]:
    """(README text, what runs instead), applied in order."""
    return [
        ('config="brca"', f'config="{small_config}"'),  # the compat model's own yaml
        ('.to("cuda", "bfloat16")', '.to("cpu")'),  # no GPU on the test machines
        ("num_inference_steps=50", "num_inference_steps=2"),
        ('encoder="uni", encoder_weights="uni.bin"', "encoder=tiny_encoder"),  # UNI weights are gated
        ('guide="1.25x"', 'guide="10x"'),  # compat patches are 64²: a 10x guide covers the 128² region
        ("inner_steps=10, post_t0=300", FAST),
        ("resize=256", "resize=64"),  # one compat patch
        ("guide_steps=50, inversion_steps=200", f"guide_steps=2, inversion_steps=1, {FAST}"),
        ("inversion_steps=200", f"inversion_steps=1, {FAST}"),
        ("num_steps=200", "num_steps=2"),
        ("torch.zeros(1, 3, 256, 256)", "torch.zeros(1, 3, 64, 64)"),
        # MIL needs a cohort: a synthetic one of real-image tiles (tests/features/mil_synthetic.py)
        ('train_mil("feats/", "labels.csv"', 'train_mil("cohort/features", "cohort/labels.csv"'),
        ("folds=5, epochs=100", "folds=3, epochs=5, patience=3, lr=1e-3"),
        ('"configs/train_brca.yaml"', f'"{REPO / "configs" / "train_brca.yaml"}"'),  # the run is in a tmp dir
        (
            '"output_dir=runs/ft"]',
            f'"output_dir=runs/ft", "model.config={small_config}", "train.max_steps=2", "data.batch_size=2", '
            '"data.num_workers=0", "train.mixed_precision=\'no\'", "logging.sample_every=0"]',
        ),
    ]


#: the first line of the README blocks that run exactly as written (the embedded offline model)
AS_WRITTEN = "# runs as written, offline"


def all_python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The blocks that run on the compat model through the substitution table."""
    return [b for b in all_python_blocks(text) if not b.startswith(AS_WRITTEN)]


def offline_blocks(text: str) -> list[str]:
    """The blocks that run as written: no substitution, no file of ours, in an empty folder."""
    return [b for b in all_python_blocks(text) if b.startswith(AS_WRITTEN)]


@pytest.fixture
def readme_files(tmp_path, small_checkpoint, data_dir):
    """The README's inputs under the names it uses."""
    from zoomldm.models.cdm import ConditioningDiT

    (tmp_path / "brca").mkdir()
    (tmp_path / "brca" / "weights.ckpt").symlink_to(small_checkpoint)
    shutil.copy(data_dir / "lr.jpg", tmp_path / "lr.jpg")
    with Image.open(data_dir / "brca_001.jpeg") as im:
        brca = im.convert("RGB").crop((1024, 1024, 1536, 1536))
    brca.crop((0, 0, 128, 128)).save(tmp_path / "region_4096.png")
    (tmp_path / "slides").mkdir()  # a 512² slide at 20x: 4 + 1 samples at 20x and 10x
    write_pyramid_tiff(tmp_path / "slides" / "brca_crop.tif", np.asarray(brca), mpp=0.5, levels=2, min_side=0)
    make_cohort(tile_pools(data_dir), tmp_path / "cohort", n_patients=12, seed=0)
    grid = torch.randn(32, 4, 4, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "grid.npy", grid.numpy())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cdm = ConditioningDiT(token_dim=64, hidden_size=32, depth=1, num_heads=2, num_magnifications=8)
    cdm.save_pretrained(tmp_path / "cdm")
    return tmp_path


def test_the_substitution_table_applies(small_config):
    code = "\n".join(python_blocks(README.read_text()))
    for old, _ in substitutions(small_config):
        assert old in code, f"README.md no longer contains {old!r}: update tests/test_readme.py"


def test_readme_python_examples_run(readme_files, small_config, tiny_encoder, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    table = substitutions(small_config)
    namespace: dict = {"tiny_encoder": tiny_encoder}
    monkeypatch.chdir(readme_files)
    with one_thread():
        for i, block in enumerate(blocks, 1):
            for old, new in table:
                block = block.replace(old, new)
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)

    # what the examples say they produce
    assert namespace["out"].images.shape == (8, 64, 64, 3)
    assert (readme_files / "models" / "brca" / "zoomldm.json").is_file()
    large = namespace["large"]
    assert large.path == Path("large.tif") and (readme_files / "large.json").is_file()
    assert set(large.metrics["output"]) >= {"psnr", "mae"} and large.settings["guide"] == "10x"
    assert namespace["sr"].image.shape == (256, 256, 3) and namespace["sr"].path is None  # 64² at 5x → 20x
    assert namespace["tokens"].shape == (4, 65, 64) and namespace["patches"].shape == (4, 64, 64, 3)
    assert namespace["free"].image.shape == (128, 128, 3)
    assert namespace["z0"].shape == namespace["z"].shape == (1, 3, 16, 16)
    assert namespace["images"].shape == (1, 3, 64, 64)
    assert namespace["report"].totals["20x"] == 4 and namespace["report"].totals["10x"] == 1
    assert [s.status for s in namespace["features"].slides] == ["written"]
    assert (readme_files / "feats" / "brca_crop.h5").is_file()
    assert len(namespace["cv"].rows) == 3 and (readme_files / "mil" / "summary.csv").is_file()
    assert namespace["result"].step == 2 and namespace["tuned"].provenance["step"] == 2


def test_readme_offline_example_runs_as_written(tmp_path, monkeypatch):
    """A new user's first copy-paste: the embedded model on the bundled region, not one character changed."""
    blocks = [b for b in offline_blocks(README.read_text()) if "embedded-naip" not in b]
    assert len(blocks) == 1
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)  # nothing else there: the block needs no file of ours
    with one_thread():
        exec(compile(blocks[0], "README.md offline block", "exec"), namespace)
    assert namespace["pipe"].config.ssl_channels == 64 and namespace["grid"].shape == (64, 4, 4)
    assert namespace["patches"].shape == (2, 256, 256, 3)
    assert namespace["large"].image.shape == (512, 512, 3) and namespace["large"].settings["guide"] == "10x"
    assert namespace["sr"].image.shape == (512, 512, 3) and namespace["sr"].path is None
    rgb = namespace["patches"].reshape(-1, 3).mean(0)  # the trained model: H&E colours (green lowest)
    assert rgb[1] < rgb[0] - 15 and rgb[1] < rgb[2] - 15, rgb
    assert not list(tmp_path.iterdir())  # without out= nothing is written


def test_readme_satellite_block_runs_as_written(tmp_path, monkeypatch):
    """The README's satellite block, exactly as written, offline (the embedded aerial model): patches at 3x,
    and a real Sentinel-2 crop written as a UTM GeoTIFF and super-resolved into a georeferenced COG."""
    import rasterio

    (block,) = [b for b in offline_blocks(README.read_text()) if "embedded-naip" in b]
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    with one_thread():
        exec(compile(block, "README.md satellite block", "exec"), namespace)
    assert namespace["pipe"].scales.domain == "satellite" and namespace["patches"].shape == (2, 256, 256, 3)
    assert namespace["sr"].image.shape == (512, 512, 3) and namespace["validate_cog"]("scene_2x.tif") == []
    with rasterio.open(tmp_path / "scene_2x.tif") as dst:
        assert dst.crs.to_epsg() == 32633 and dst.res == (5.0, 5.0)

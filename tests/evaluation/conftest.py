"""Fixtures of the evaluation tests: real image crops, a small conv feature net, random-weight Inception."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures import one_thread
from zoomldm.evaluation.extractors import CallableExtractor


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine two threads ran these small convs 10-15x slower."""
    with one_thread():
        yield


def _crops(path: Path, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    with Image.open(path) as image:
        region = np.asarray(image.convert("RGB").crop(box))
    h, w = region.shape[0] // size, region.shape[1] // size
    return (
        region[: h * size, : w * size].reshape(h, size, w, size, 3).swapaxes(1, 2).reshape(-1, size, size, 3)
    )


@pytest.fixture(scope="session")
def real_crops(data_dir: Path) -> dict[str, np.ndarray]:
    """64² crops of the authors' BRCA and NAIP images (48 each), uint8 [N, 64, 64, 3]."""
    return {
        "brca": _crops(data_dir / "brca_001.jpeg", (1024, 1024, 1024 + 512, 1024 + 384), 64),
        "naip": _crops(data_dir / "naip_001.jpg", (512, 512, 512 + 512, 512 + 384), 64),
    }


def write_pngs(images: np.ndarray, folder: Path, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{prefix}_{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.fixture(scope="session")
def crop_dirs(real_crops: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``brca_a`` / ``brca_b``: two disjoint halves of the BRCA crops; ``naip``: the NAIP crops (PNG)."""
    root = tmp_path_factory.mktemp("crops")
    write_pngs(real_crops["brca"][:24], root / "brca_a")
    write_pngs(real_crops["brca"][24:], root / "brca_b")
    write_pngs(real_crops["naip"][:24], root / "naip")
    return {name: root / name for name in ("brca_a", "brca_b", "naip")}


class CountingConvNet:
    """A fixed random conv net (16-d) plus the mean colour (3-d); counts the images it has seen."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        ).eval()
        self.seen = 0

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        self.seen += len(images)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return torch.cat([self.net(x), x.mean((2, 3))], 1).double()


@pytest.fixture
def conv_extractor() -> CallableExtractor:
    counter = CountingConvNet()
    extractor = CallableExtractor(
        counter, name="test conv net 19-d", resize_mode="none (native 64x64)", library="torch"
    )
    extractor.counter = counter  # type: ignore[attr-defined]
    return extractor


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytorch-fid's FID InceptionV3 architecture with random weights, saved like its weights file.

    Built through pytorch-fid's own ``fid_inception_v3`` with its download and weight loading switched
    off, then BatchNorm statistics calibrated on one random batch so the features are O(1).
    """
    pytest.importorskip(
        "pytorch_fid", reason="pytorch-fid (the optional extra zoomldm[fid]) is not installed"
    )
    import pytorch_fid.inception as pfi
    import torchvision

    torch.manual_seed(0)
    with (
        mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(
            torchvision.models.inception.Inception3, "load_state_dict", lambda self, *a, **k: None
        ),
    ):
        inception = pfi.fid_inception_v3()
    for module in inception.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    inception.train()
    with torch.no_grad():
        inception(torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(inception.state_dict(), path)
    return path

"""Builders shared by the tests' fixtures (``tests/conftest.py`` puts this folder on ``sys.path``).

Plain functions, imported as ``from _fixtures import ...``: the pyramidal TIFF writer for slides cut from
``brca_001.jpeg``, the narrow random VQ-f4, the one-thread and accelerate-reset helpers and the in-process
CLI runner. The fixtures built from them (shared slides, the tiny encoder, the training store) are in
``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def write_pyramid_tiff(
    path: Path,
    image: np.ndarray,
    mpp: float,
    levels: int = 4,
    compression: str = "jpeg",
    min_side: int = 256,
) -> Path:
    """Tiled TIFF, full resolution first, each 2× reduced level as a further page (subfiletype 1),
    resolution in pixels per centimetre (CONVENTIONS: what OpenSlide reads back as openslide.mpp-x).

    At most ``levels`` pages; a level is reduced further only while its short side is at least
    ``2 * min_side``. ``compression="zlib"`` (deflate) is lossless, so every reader sees the same pixels.
    """
    import tifffile

    ppcm = 1e4 / mpp
    options = dict(tile=(256, 256), compression=compression, photometric="rgb", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, resolution=(ppcm, ppcm), **options)
        level = image
        for i in range(1, levels):
            if min(level.shape[:2]) < 2 * min_side:
                break
            level = np.asarray(Image.fromarray(level).reduce(2))
            tif.write(level, subfiletype=1, resolution=(ppcm / 2**i, ppcm / 2**i), **options)
    return path


def tiny_vq(width: int):
    """A narrow random VQ-f4 (diffusers VQModel: 256² → 3×64×64, ``width`` channels in every block),
    seeded, so each call gives the same weights: cheap enough to encode (and decode) on CPU."""
    from diffusers import VQModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(width,) * 3,
            layers_per_block=1,
            latent_channels=3,
            num_vq_embeddings=64,
            vq_embed_dim=3,
            norm_num_groups=width // 2,
            mid_block_add_attention=False,
            scaling_factor=1.0,
        )
    return vae.eval()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op torch thread: small models are dominated by per-op overhead, and on the shared 2-core
    machine two threads thrash (measured 5-15× slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reset_accelerate_state() -> None:
    """Each trainer builds its own Accelerator; accelerate keeps process-wide singletons, reset them."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the ``zoomldm`` CLI in-process; return (exit code, stdout, stderr)."""
    from zoomldm.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def chromium() -> str:
    """Path of Chromium for the headless browser tests; installs the Debian package in CI (as root), else
    skips the test with the reason."""
    import os
    import shutil
    import subprocess

    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if os.environ.get("CI") and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], check=True, timeout=900, capture_output=True
        )
        if found := shutil.which("chromium"):
            return found
    pytest.skip(
        "headless browser test needs Debian's `chromium` (apt-get install -y chromium); not installed here"
    )


def load_tool(name: str):
    """``tools/<name>.py`` as a module (the repository's scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""A large-image run in its own process, for tests/sampling/test_gigapixel.py: the run that is killed
mid-step, and one rank of a 2-process (gloo) run. Not a test module (no ``test_`` prefix).

    python _gigapixel_worker.py OUT [--slow SECONDS] [--coarse]

Generates the fixed small request of :data:`REQUEST` with the compat model into ``OUT``. ``--slow``
sleeps after every finished block (the run prints how many blocks it finished) (a stand-in for a slow GPU, so that the parent can kill the run between
two blocks). Rank and world come from the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), as under ``torchrun``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

# resolved, as tests/conftest.py resolves it: the checkpoint path is part of a run's resume fingerprint
COMPAT = (
    Path(os.environ.get("ZOOMLDM_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "compat"
).resolve()


def request():
    """The request both the tests and the workers run: 4 tiles (k = 2) in 1×1 blocks, 2 outer steps."""
    from zoomldm.sampling.constrained import JointSamplingConfig

    grid = torch.randn(32, 2, 2, generator=torch.Generator().manual_seed(21))
    config = JointSamplingConfig(t0=100, stride=50, inner_steps=1, tile_batch=1)
    return grid, dict(guide="10x", config=config, postprocess=False, seed=21, progress=False)


def coarse_request():
    """A request past one guide patch, for the coarse stage's tests: 1024² at 1.25x with the compat model is
    a 2 × 2 coarse canvas at 0.15625x (2 bands, 5 window rows), then the cascade 0.15625x → 0.3125x (16
    tiles) → 1.25x (the 32 tiles under a 512 × 256 viewport: 2 blocks); 2 outer steps, no post-processing,
    a decode without overlap (the decode is not what these tests are about, and the official one is 16×
    the windows)."""
    from zoomldm.sampling.constrained import JointSamplingConfig

    grid = torch.randn(32, 256, 256, generator=torch.Generator().manual_seed(5))  # 128² base tiles a patch
    from zoomldm.sampling.decode import DecodeConfig

    config = JointSamplingConfig(t0=100, stride=50, inner_steps=1, tile_batch=16)
    return grid, dict(
        target="1.25x",
        size=1024,
        region=(0, 0, 512, 256),  # the last stage's viewport: 2 of its 16 blocks
        config=config,
        postprocess=False,
        decode=DecodeConfig(window=16, stride=16),
        seed=5,
        progress=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--coarse", action="store_true", help="the coarse_request() instead of request()")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the tests (tests/sampling/conftest.py): the same rounding

    from zoomldm import ZoomLDMPipeline
    from zoomldm.sampling import canvas as canvas_module
    from zoomldm.sampling.joint import generate_large_image

    mark, marked = canvas_module.TileCanvas.mark_done, []

    coarse_marked = []

    def counted_mark(self, step: int, block: int) -> None:
        mark(self, step, block)
        is_coarse = self.folder is not None and self.folder.name == "coarse.zarr"
        (coarse_marked if is_coarse else marked).append(block)
        time.sleep(args.slow)

    canvas_module.TileCanvas.mark_done = counted_mark
    pipe = ZoomLDMPipeline.from_official(
        COMPAT / "small_checkpoint.ckpt", config=COMPAT / "small_config.yaml"
    )
    grid, kwargs = coarse_request() if args.coarse else request()
    result = generate_large_image(pipe, grid, out=args.out, **kwargs)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    report = (
        f"blocks {len(marked)} unet_forwards {result.metrics['unet_forwards']} bands {len(coarse_marked)}"
    )
    print(report, file=sys.stderr)


if __name__ == "__main__":
    main()

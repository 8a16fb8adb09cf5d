"""Counter-based Gaussian noise: every draw is keyed by (seed, stream, step, index).

Large-image sampling draws noise per tile and per step. Keying each draw by its tile's global index
(instead of pulling from one generator in loop order) makes the result independent of the tile batch
size and of which tiles are generated: a viewport request reproduces exactly the tiles of the full image,
and a run resumed from a saved step continues bit for bit. Keys are hashed with numpy's ``SeedSequence``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..errors import ZoomLDMError

#: named noise streams (never reuse a number for another purpose: saved runs depend on them)
STREAMS = {
    "tile_init": 0,
    "guide_init": 1,
    "tile_step": 2,
    "guide_step": 3,
    "post_init": 4,
    "post_step": 5,
    "inversion_init": 6,
    "inversion_step": 7,
    "guide_patch": 8,
    "cdm": 9,
}


def generator_for(seed: int, stream: str, *key: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, stream, *key)``."""
    if not isinstance(seed, int) or seed < 0:
        raise ZoomLDMError(f"seed must be a non-negative integer; got {seed!r}")
    state = np.random.SeedSequence([seed, STREAMS[stream], *(int(k) for k in key)]).generate_state(
        2, dtype=np.uint32
    )
    return torch.Generator().manual_seed((int(state[0]) << 32) | int(state[1]))


def keyed_normal(
    shape: Sequence[int],
    seed: int,
    stream: str,
    indices: Iterable[int],
    step: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[len(indices), *shape]`` standard normal float32, row ``i`` keyed by ``(seed, stream, step, index)``."""
    rows = [torch.randn(tuple(shape), generator=generator_for(seed, stream, step, int(i))) for i in indices]
    if not rows:
        return torch.empty(0, *shape, device=device)
    return torch.stack(rows).to(device)

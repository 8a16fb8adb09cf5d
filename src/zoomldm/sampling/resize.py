"""Shocher's ``Resizer`` (the ``down``/``up`` operators of joint sampling, SPEC §4.1) as weight matrices.

The authors' ``large_image_gen/resizer.py`` resizes one dimension at a time with

* the cubic convolution kernel of Keys (a = −0.5): ``k(x) = 1.5|x|³ − 2.5|x|² + 1`` for ``|x| ≤ 1``,
  ``−0.5|x|³ + 2.5|x|² − 4|x| + 2`` for ``1 < |x| ≤ 2``, 0 beyond;
* antialiasing when downscaling by ``scale < 1``: the kernel is stretched to ``scale·k(scale·x)``, so its
  support grows from 4 to ``4/scale`` input pixels;
* half-pixel-centre geometry: output pixel ``i`` (0-based) samples input position
  ``u = (i + 0.5)/scale − 0.5`` (shifted by half the size change when ``out ≠ in·scale``);
* weights of each output pixel normalised to sum to 1;
* symmetric edge reflection (``… 1 0 | 0 1 2 … n−1 | n−1 n−2 …``) for taps outside the input.

Along one axis this is a linear map, so it is a matrix ``W [out, in]``; the 2-D resize of ``x [..., H, W]``
is ``W_h · x · W_wᵀ`` — two batched matmuls instead of the official gather-multiply-sum over a field of
view. The matrices are built once per (size, scale) and cached; applying them is fast and GPU-friendly.
Why not ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``: its cubic uses a = −0.75 and
clamps at the borders instead of reflecting, so it is a different operator from the one the constraint
was designed with.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from ..errors import ZoomLDMError

KERNEL_WIDTH = 4.0  # support of the cubic kernel in input pixels (−2 … 2)


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = −0.5 (the ``cubic`` of the official Resizer)."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _reflect(index: torch.Tensor, length: int) -> torch.Tensor:
    """Symmetric (edge-repeating) reflection of integer indices into ``0 … length − 1``."""
    period = 2 * length
    j = torch.remainder(index, period)
    return torch.where(j < length, j, period - 1 - j)


@lru_cache(maxsize=64)
def _resize_matrix_cached(in_length: int, out_length: int, scale: float, antialias: bool) -> torch.Tensor:
    antialias = antialias and scale < 1
    width = KERNEL_WIDTH / scale if antialias else KERNEL_WIDTH
    out = torch.arange(out_length, dtype=torch.float64)
    # half-pixel-centre mapping of output pixel i to input position u (0-based; the official code writes
    # the same in 1-based coordinates with the shift (out − in·scale)/2 for sizes that do not divide)
    shifted = out + 0.5 - (out_length - in_length * scale) / 2
    u = shifted / scale - 0.5
    first = torch.floor(u - width / 2) - 1
    taps = int(math.ceil(width)) + 3  # covers the whole support, whatever the fractional position
    idx = first[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    dist = u[:, None] - idx
    weights = scale * cubic(scale * dist) if antialias else cubic(dist)
    sums = weights.sum(dim=1, keepdim=True)
    weights = weights / torch.where(sums == 0, torch.ones_like(sums), sums)
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    matrix.scatter_add_(1, _reflect(idx.long(), in_length), weights)
    return matrix


def resize_matrix(
    in_length: int, out_length: int | None = None, scale: float | None = None, antialias: bool = True
) -> torch.Tensor:
    """The ``[out, in]`` float64 matrix that resizes one axis of length ``in_length``.

    Give ``scale`` (output = ``ceil(in·scale)``), ``out_length`` (scale = out/in), or both (official
    semantics: the scale sets the kernel, the length the grid). ``antialias`` stretches the kernel when
    downscaling (it has no effect when upscaling).
    """
    if in_length < 1:
        raise ZoomLDMError(f"cannot resize an axis of length {in_length}")
    if scale is None and out_length is None:
        raise ZoomLDMError("give the output length or the scale factor")
    if scale is None:
        scale = out_length / in_length
    if out_length is None:
        out_length = int(math.ceil(in_length * scale - 1e-9))
    if not scale > 0 or out_length < 1:
        raise ZoomLDMError(f"resize scale must be positive; got {scale} ({in_length} → {out_length})")
    return _resize_matrix_cached(int(in_length), int(out_length), float(scale), bool(antialias)).clone()


class Resizer(nn.Module):
    """Separable resize of the last two dims of ``[..., H, W]`` tensors from ``in_size`` by ``scale``.

    ``Resizer((256, 256), 1/4)`` is the official ``down`` for k = 4 (256² → 64², antialiased) and
    ``Resizer((64, 64), 4)`` its ``up`` (64² → 256², plain cubic). The matrices are buffers, so the
    module follows ``.to(device)``; ``forward`` casts them to the input's dtype.
    """

    def __init__(self, in_size: tuple[int, int], scale: float, antialias: bool = True) -> None:
        super().__init__()
        h, w = in_size
        self.in_size = (int(h), int(w))
        self.scale = float(scale)
        mh = resize_matrix(h, scale=scale, antialias=antialias)
        mw = resize_matrix(w, scale=scale, antialias=antialias)
        self.out_size = (mh.shape[0], mw.shape[0])
        self.register_buffer("weight_h", mh.float(), persistent=False)
        self.register_buffer("weight_w", mw.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            raise ZoomLDMError(f"Resizer built for {self.in_size} inputs got {tuple(x.shape[-2:])}")
        wh = self.weight_h.to(device=x.device, dtype=x.dtype)
        ww = self.weight_w.to(device=x.device, dtype=x.dtype)
        return wh @ x @ ww.transpose(0, 1)

    def extra_repr(self) -> str:
        return f"in_size={self.in_size}, scale={self.scale:g}, out_size={self.out_size}"


def downsampler(size: int, k: int) -> Resizer:
    """``down``: a ``size``² image → its ``(size/k)``² footprint (antialiased cubic)."""
    _check_ratio(size, k)
    return Resizer((size, size), 1.0 / k)


def upsampler(size: int, k: int) -> Resizer:
    """``up``: a ``(size/k)``² footprint → ``size``² (plain cubic)."""
    _check_ratio(size, k)
    return Resizer((size // k, size // k), float(k))


def _check_ratio(size: int, k: int) -> None:
    if k < 1 or size % k:
        raise ZoomLDMError(f"the scale ratio {k} must divide the patch size {size}")

"""What the two trainers (ZoomLDM's :class:`~.trainer.Trainer`, the VQ-f4's :func:`~.vae.train_vae`) share
about the process they run in: whether an accelerator device is there, and weights in storage of their own.
"""

from __future__ import annotations

import torch


def _accelerator_available() -> bool:
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, ROCm, XPU, MPS, …
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


@torch.no_grad()
def _own_memory(module: torch.nn.Module) -> None:
    """Give every parameter and buffer its own freshly allocated, contiguous storage.

    Loaders can leave weights as views into a memory-mapped file (safetensors aligns tensors to 8 bytes
    only); CPU BLAS kernels round differently at other alignments, so a resumed run drifted from an
    uninterrupted one in the last bits (measured). Owned storage makes the numerics independent of how the
    weights were loaded, and in-place optimizer updates never touch pages of a checkpoint file.
    """
    for tensor in list(module.parameters()) + list(module.buffers()):
        tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)

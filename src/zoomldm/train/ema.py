"""The EMA of the UNet with the authors' decay, on diffusers' ``EMAModel`` (SPEC §2.5).

The official ``LitEma`` increments its counter and then uses ``min(decay, (1 + n)/(10 + n))``. diffusers'
``EMAModel.get_decay`` (without ``use_ema_warmup``) uses ``(1 + s)/(10 + s)`` with
``s = optimization_step − update_after_step − 1``; with ``update_after_step = −1`` that is ``s = n``, the
official formula exactly (and its update ``shadow −= (1 − decay)·(shadow − param)`` is LitEma's). The
Summarizer has no EMA copy in the official model, so only the UNet is averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from diffusers.training_utils import EMAModel

#: ``update_after_step`` that turns diffusers' decay into the official ``(1 + n)/(10 + n)``
OFFICIAL_UPDATE_AFTER_STEP = -1


def official_ema(
    parameters: Iterable[torch.nn.Parameter], decay: float = 0.9999, num_updates: int = 0
) -> EMAModel:
    """An ``EMAModel`` over ``parameters`` whose n-th update uses ``min(decay, (1 + n)/(10 + n))``.

    ``num_updates`` continues the counter of an EMA taken over from a checkpoint (the official
    ``model_ema.num_updates``), so the decay resumes where it was.
    """
    ema = EMAModel(
        parameters,
        decay=decay,
        update_after_step=OFFICIAL_UPDATE_AFTER_STEP,
        use_ema_warmup=False,
        foreach=True,
    )
    ema.optimization_step = int(num_updates)
    return ema


@torch.no_grad()
def load_shadow(ema: EMAModel, names: list[str], state: Mapping[str, torch.Tensor]) -> None:
    """Set the shadow parameters (in ``names`` order) from a full state dict ``name -> tensor``.

    Works for plain tensors and for FSDP2-sharded (DTensor) shadows, which take their local shard.
    """
    missing = [n for n in names if n not in state]
    if missing:
        from ..errors import CheckpointError

        raise CheckpointError(f"EMA weights lack {missing[0]!r} ({len(missing)} parameters missing)")
    for shadow, name in zip(ema.shadow_params, names, strict=True):
        full = state[name]
        if hasattr(shadow, "device_mesh"):  # DTensor (FSDP2): keep this rank's shard
            from torch.distributed.tensor import distribute_tensor

            full = distribute_tensor(full.to(shadow.device), shadow.device_mesh, shadow.placements)
        shadow.copy_(full.to(device=shadow.device, dtype=shadow.dtype))

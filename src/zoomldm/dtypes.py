"""The dtype names every command and method accepts (``--dtype``, ``dtype=``), in one table."""

from __future__ import annotations

import torch

from .errors import ConfigError

#: accepted spellings → torch dtype
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def torch_dtype(value: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``"bf16"`` / ``torch.bfloat16`` … → the torch dtype; anything else is one
    :class:`~zoomldm.errors.ConfigError` line naming the choices."""
    if isinstance(value, torch.dtype):
        return value
    try:
        return DTYPES[str(value).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {value!r}; expected one of {', '.join(DTYPES)}") from None

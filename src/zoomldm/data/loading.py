"""The models of the slide commands (``prepare``, ``features``) from names, paths or ready objects.

One rule for both commands (so the same flags mean the same thing):

* a loaded model (:class:`~zoomldm.models.bundle.ZoomLDMModel`, a pipeline included) is used as given;
* a checkpoint (our model dir, an official ``.ckpt``, a hub id, ``brca`` / ``naip``) is loaded, with
  ``config`` as its architecture when given;
* **no checkpoint but a config** (``--config tiny``): random weights of that architecture, seeded (for
  tests and demos). The SSL encoder then defaults to a random 2-block timm ViT of the width the model's
  Summarizer takes, so ``prepare --config tiny`` makes a store that ``train`` with ``configs/train_tiny.yaml``
  accepts (with the published encoder, UNI's 1024-d grids would not fit the tiny model's 64-d input);
* neither: ``$ZOOMLDM_CHECKPOINT``, else the published weights of the domain (``brca`` / ``naip``) — the
  package's default rule (:func:`zoomldm.checkpoints.default_checkpoint`) without its offline fallback to
  the embedded model: a store or features belong to the model that made them, so the network state must not
  pick it. ``checkpoint="embedded"`` names the embedded model, ``encoder="embedded"`` its own SSL encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ZoomLDMError

if TYPE_CHECKING:
    import torch

    from ..models.bundle import ZoomLDMModel
    from ..models.encoders import SSLEncoder

#: the published checkpoint of each domain: the default of ``prepare`` and ``features``
DEFAULT_CHECKPOINT = {"pathology": "brca", "satellite": "naip"}
#: the random encoder that goes with random model weights (its ``embed_dim`` is the model's SSL width)
RANDOM_ENCODER = "timm:vit_tiny_patch16_224"
RANDOM_ENCODER_OPTIONS: dict[str, Any] = {"depth": 2, "img_size": 64}

AUTOCAST = {"float32": None, "bfloat16": "bfloat16", "float16": "float16"}


def autocast_dtype(dtype: str | None) -> torch.dtype | None:
    """``float32`` / ``bfloat16`` / ``float16`` → the torch autocast dtype (None for float32)."""
    import torch

    if dtype is None:
        return None
    if dtype not in AUTOCAST:
        raise ZoomLDMError(f"--dtype: unknown dtype {dtype!r}; expected one of {', '.join(AUTOCAST)}")
    return getattr(torch, AUTOCAST[dtype]) if AUTOCAST[dtype] else None


def is_random(checkpoint: object, config: object) -> bool:
    """True when the model is random weights of ``config`` (a config and no checkpoint)."""
    return checkpoint is None and config is not None


def load_pipeline(
    checkpoint: str | Path | ZoomLDMModel | None,
    config: str | Path | None = None,
    *,
    domain: str = "pathology",
    seed: int = 0,
    ema: bool = True,
    device: str = "cpu",
    dtype: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ZoomLDMModel:
    """The model of a slide command (see the module docstring for the rule).

    Args:
        checkpoint: a loaded model or pipeline (returned as it is), a checkpoint path / hub id, or None.
        config: preset or yaml: the architecture of an official checkpoint, or (without a checkpoint) of
            random weights.
        domain: picks the published checkpoint when neither is given.
        seed: seed of random weights.
        ema: the EMA UNet (False: the live weights).
        device, dtype: where and in which precision the networks run (dtype: None keeps float32).
        log: receives a note when the weights are random.
    """
    from ..checkpoints import default_checkpoint
    from ..models.bundle import ZoomLDMModel

    if isinstance(checkpoint, ZoomLDMModel):  # the caller's object: used where it is, not moved
        return checkpoint
    if is_random(checkpoint, config):
        if log is not None:
            log(f"note: random weights of config {str(config)!r}, seed {seed} (for tests and demos only)")
        return ZoomLDMModel.from_config(str(config), seed=seed).to(device=device, dtype=dtype)
    source = str(default_checkpoint(checkpoint, published=DEFAULT_CHECKPOINT[domain], fallback=False))
    return ZoomLDMModel.from_pretrained(
        source,
        config=str(config) if config is not None else None,
        ema=ema,
        device=device,
        dtype=dtype or "float32",
    )


def encoder_for_model(encoder: str | SSLEncoder | None, pipe: Any) -> str | SSLEncoder | None:
    """``encoder``, or, when none is named and ``pipe`` is the embedded offline model, ``"embedded"`` (its
    Summarizer was trained on its own encoder's 64-d grids; :func:`zoomldm.models.ssl.default_encoder`)."""
    if encoder is not None or pipe is None:
        return encoder
    from ..models.ssl import default_encoder

    return "embedded" if default_encoder(pipe) == "embedded" else None


def load_encoder(
    encoder: str | SSLEncoder | None,
    *,
    domain: str,
    ssl_channels: int | None = None,
    random_model: bool = False,
    weights: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> SSLEncoder:
    """The SSL tile encoder: an :class:`~zoomldm.models.encoders.SSLEncoder` as given, a name, or the default.

    The default is the domain's published encoder (UNI, DINOv2), except with a random model
    (``random_model``): a random :data:`RANDOM_ENCODER` of width ``ssl_channels`` (seeded by ``seed``).

    Args:
        encoder: an encoder object, a name (``uni``, ``dinov2_vitl14_reg``, ``timm:<name>``, ``embedded``:
            the embedded model's own) or None.
        weights: a local weights file, or ``"random"``.
        options: timm keyword arguments (e.g. ``embed_dim``).
    """
    import torch

    from ..models.encoders import DOMAIN_ENCODERS, SSLEncoder, build_encoder

    if isinstance(encoder, SSLEncoder):
        return encoder.to(device)
    if encoder == "embedded":  # the embedded offline model's own encoder (zoomldm.models.embedded)
        from ..models.embedded import embedded_encoder

        return embedded_encoder(device, dtype)
    options = dict(options or {})
    if encoder is None and random_model and ssl_channels is not None:
        heads = 2 if ssl_channels % 2 == 0 else 1
        options = {**RANDOM_ENCODER_OPTIONS, "embed_dim": ssl_channels, "num_heads": heads, **options}
        if log is not None:
            log(
                f"note: SSL encoder: random {RANDOM_ENCODER} with {ssl_channels}-d embeddings (goes with random weights)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_encoder(RANDOM_ENCODER, weights="random", device=device, dtype=dtype, **options)
    if domain not in DOMAIN_ENCODERS:
        raise ZoomLDMError(f"--domain: unknown domain {domain!r}; expected pathology or satellite")
    return build_encoder(
        encoder or DOMAIN_ENCODERS[domain], weights=weights, device=device, dtype=dtype, **options
    )


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` → ``cuda:LOCAL_RANK`` under
    torchrun / accelerate (one GPU per rank)."""
    from ..devices import resolve_rank_device

    return resolve_rank_device(device)

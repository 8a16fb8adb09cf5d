"""Feature extractors for Fréchet distances: pytorch-fid's InceptionV3 and domain (SSL) encoders.

An extractor maps a batch of images, uint8 ``[N, H, W, 3]`` (numpy), to features ``[N, D]``, and says
what it is (``name``, ``library``) and how it resizes (``resize_mode``): both are written beside every
FID (CONVENTIONS "Evaluation": pytorch-fid, clean-fid and torchmetrics give different numbers on the
same images, so the library and mode must be stated).

* :class:`InceptionExtractor` — pytorch-fid's FID InceptionV3 (TF-ported weights
  ``pt_inception-2015-12-05-6726825d.pth``), pool3 2048-d features; pytorch-fid resizes every image
  bilinearly to 299² inside the network. Needs the optional ``pytorch-fid`` package
  (``pip install 'zoomldm[fid]'``) and the weights file: ``weights=PATH``, else ``$ZOOMLDM_INCEPTION_WEIGHTS``,
  else the torch hub cache where pytorch-fid itself keeps it. Nothing is ever downloaded here.
* :class:`EncoderExtractor` — any :class:`zoomldm.models.encoders.SSLEncoder` (UNI, DINOv2, timm), since
  users doubt Inception on histology; or :class:`CallableExtractor` around any function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import CheckpointError, ZoomLDMError

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "ZOOMLDM_INCEPTION_WEIGHTS"


@runtime_checkable
class FeatureExtractor(Protocol):
    """uint8 images ``[N, H, W, 3]`` → features ``[N, D]``, with a description for the records."""

    name: str
    library: str
    resize_mode: str

    def __call__(self, images: np.ndarray) -> torch.Tensor | np.ndarray: ...


def describe(extractor: FeatureExtractor) -> dict[str, str]:
    """The fields every result records about its extractor."""
    return {
        "feature_extractor": extractor.name,
        "library": extractor.library,
        "resize_mode": extractor.resize_mode,
    }


def default_inception_weights() -> Path:
    """Where pytorch-fid caches its weights: ``<torch hub dir>/checkpoints/pt_inception-…pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME


def resolve_inception_weights(weights: str | os.PathLike[str] | None = None) -> Path:
    """The Inception weights file: ``weights``, else ``$ZOOMLDM_INCEPTION_WEIGHTS``, else the hub cache."""
    candidates = [Path(weights)] if weights is not None else []
    if weights is None and os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]))
    if weights is None:
        candidates.append(default_inception_weights())
    for path in candidates:
        if path.expanduser().is_file():
            return path.expanduser()
    raise ZoomLDMError(
        f"FID Inception weights not found (looked at {', '.join(str(p) for p in candidates)}); download "
        f"pytorch-fid's {FID_WEIGHTS_NAME} and pass --inception-weights PATH (or set {WEIGHTS_ENV}, or put it "
        f"in {default_inception_weights().parent})"
    )


def _to_uint8_nhwc(images: Any) -> np.ndarray:
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ZoomLDMError(f"expected uint8 images [N, H, W, 3]; got {array.dtype} {list(array.shape)}")
    return array


class InceptionExtractor:
    """pytorch-fid's FID InceptionV3, pool3 (2048-d), on uint8 images; weights from a local file only."""

    library = "pytorch-fid"
    resize_mode = "pytorch-fid: bilinear to 299x299 inside the network (align_corners=False, no antialias)"

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 50,
    ) -> None:
        try:
            import pytorch_fid
            import pytorch_fid.inception as pfi
        except ImportError:
            raise ZoomLDMError(
                "Inception FID needs the pytorch-fid package: pip install 'zoomldm[fid]' (or pytorch-fid)"
            ) from None
        path = resolve_inception_weights(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(
                f"{path.name}: cannot be read as a weights-only checkpoint ({err})"
            ) from None
        # pytorch-fid builds its FID variant of torchvision's Inception and then fetches the weights from a
        # URL in the same function; handing that one call our local state dict keeps its exact
        # architecture code and never touches the network.
        original = pfi.load_state_dict_from_url
        pfi.load_state_dict_from_url = lambda *args, **kwargs: state
        try:
            net = pfi.InceptionV3(
                [pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True
            )
        except RuntimeError as err:  # strict load_state_dict: missing/unexpected keys or shapes
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise CheckpointError(f"{path.name} is not pytorch-fid's Inception weights: {first}") from None
        finally:
            pfi.load_state_dict_from_url = original
        self.model = net.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.weights = path
        self.name = f"InceptionV3 pool3 2048-d ({path.name})"
        self.library = f"pytorch-fid {getattr(pytorch_fid, '__version__', '?')}"

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        array = _to_uint8_nhwc(images)
        out = []
        for start in range(0, len(array), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(array[start : start + self.batch_size])).to(self.device)
            x = (
                x.permute(0, 3, 1, 2).float().div_(255.0)
            )  # pytorch-fid's input: [0, 1] (it rescales to [-1, 1])
            out.append(self.model(x)[0].flatten(1).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, 2048, dtype=torch.float64)


class EncoderExtractor:
    """A domain encoder (:class:`zoomldm.models.encoders.SSLEncoder`) as a feature extractor."""

    library = "zoomldm.data.encoders (timm)"

    def __init__(self, encoder: Any, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        transform = encoder.transform
        self.name = f"{encoder.name} {encoder.dim}-d ({transform.get('weights', '?')})"
        self.resize_mode = f"{transform.get('resize', '?')} to {transform.get('input_size')}"

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        return self.encoder.embed(_to_uint8_nhwc(images), batch_size=self.batch_size).double()


class CallableExtractor:
    """Any function uint8 ``[N, H, W, 3]`` → ``[N, D]`` with the description the records need."""

    def __init__(
        self, fn: Callable[[np.ndarray], Any], name: str, resize_mode: str, library: str = "custom"
    ) -> None:
        self.fn, self.name, self.resize_mode, self.library = fn, name, resize_mode, library

    def __call__(self, images: np.ndarray) -> Any:
        return self.fn(_to_uint8_nhwc(images))


def build_extractor(
    name: str = "inception",
    *,
    inception_weights: str | os.PathLike[str] | None = None,
    encoder_weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
) -> FeatureExtractor:
    """``"inception"`` (pytorch-fid) or an SSL encoder name of :mod:`zoomldm.models.encoders`
    (``uni``, ``dinov2_vitl14_reg``, ``timm:<name>``) with its weights."""
    if name == "inception":
        return InceptionExtractor(inception_weights, device=device, batch_size=batch_size)
    from ..models.encoders import build_encoder

    return EncoderExtractor(
        build_encoder(name, weights=encoder_weights, device=device), batch_size=batch_size
    )

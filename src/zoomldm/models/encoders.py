"""SSL tile encoders behind one registry: UNI, DINOv2 ViT-L/14 with registers, and any timm model.

One embedding per 256² base tile (SPEC §1.3). The published preprocessing is unknown, so each encoder
records the transform it applies (``SSLEncoder.transform``), and ``zoomldm prepare`` writes it into
the store. The choice here follows SPEC §12: the CLS token of a 224² input with ImageNet mean/std.

======================  =============================================  =========================================
name                    architecture (timm)                            weights
======================  =============================================  =========================================
``uni``                 ``vit_large_patch16_224``, init_values 1e-5,   a local file, else ``hf-hub:MahmoodLab/UNI``
                        dynamic_img_size (UNI's own settings)          (gated: accept its terms, ``hf auth login``)
``dinov2_vitl14_reg``   ``vit_large_patch14_reg4_dinov2``              a local file (timm or Meta's original
                        (torch hub ``dinov2_vitl14_reg``)              format), else the timm hub weights
``timm:<name>``         any timm model                                 a local file, else timm's hub weights
======================  =============================================  =========================================

``weights="random"`` (or ``pretrained=False``) builds the architecture with random weights: for tests
and benchmarks only, and recorded as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, ZoomLDMError
from ..tensorfiles import check_input_file, check_weights_file, count_nonfinite, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one registered encoder."""

    timm_name: str
    timm_kwargs: dict[str, Any]
    hub_name: str
    input_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    note: str = ""


#: registered encoders (``timm:<name>`` builds any other timm model)
ENCODERS: dict[str, EncoderSpec] = {
    # UNI's model card: timm.create_model("hf-hub:MahmoodLab/UNI", init_values=1e-5, dynamic_img_size=True),
    # eval transform Resize(224) (bilinear) + ImageNet mean/std; the output is the CLS token.
    "uni": EncoderSpec(
        "vit_large_patch16_224",
        dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True),
        hub_name="hf-hub:MahmoodLab/UNI",
        note="UNI (ViT-L/16, Chen et al. 2024)",
    ),
    # The published NAIP conditioning (SPEC §1.3) is DINOv2 ViT-L/14 with registers, the torch hub model
    # ``dinov2_vitl14_reg`` (facebookresearch/dinov2, hubconf.py): patch 14 and 4 registers are that model's
    # (timm ``vit_large_patch14_reg4_dinov2``, the same weights in timm's layout); its width, 1024, is the
    # input of the NAIP checkpoint's Summarizer (``dim_reduce`` [512, 1024] in the compat manifest, tested).
    # Input size and normalisation: the authors do not say (SPEC §12); we use DINOv2's own eval transform
    # (dinov2/data/transforms.py: ImageNet mean/std, bicubic resize) at 224², the size of its eval crop —
    # DINOv2 keeps its 518² position grid and interpolates it for 224² inputs, as the hub model does.
    "dinov2_vitl14_reg": EncoderSpec(
        "vit_large_patch14_reg4_dinov2",
        dict(num_classes=0, dynamic_img_size=True),
        hub_name="vit_large_patch14_reg4_dinov2.lvd142m",
        interpolation="bicubic",
        note="DINOv2 ViT-L/14 with 4 registers (Darcet et al. 2024)",
    ),
}
#: the encoder each domain's published model was trained with (SPEC §1.3): the default of every command
DOMAIN_ENCODERS = {"pathology": "uni", "satellite": "dinov2_vitl14_reg"}
_ALIASES = {"dinov2": "dinov2_vitl14_reg", "dinov2_vitl14_reg4": "dinov2_vitl14_reg"}


@dataclass
class SSLEncoder:
    """A frozen tile encoder with its input transform.

    Attributes:
        name: registry name (``uni``, ``dinov2_vitl14_reg``, ``timm:<name>``).
        model: the timm model (eval mode); ``model(x)`` returns ``[N, dim]`` pooled features.
        dim: embedding size.
        transform: a description of the preprocessing, written into every store made with it.
    """

    name: str
    model: torch.nn.Module
    input_size: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None

    @property
    def dim(self) -> int:
        return int(self.model.num_features)

    @property
    def transform(self) -> dict[str, Any]:
        pool = getattr(self.model, "global_pool", "")
        return {
            "input_size": list(self.input_size),
            "resize": f"{self.interpolation} (antialiased), whole tile, no crop",
            "scale": "uint8 / 255",
            "mean": list(self.mean),
            "std": list(self.std),
            "output": "CLS token after the final norm"
            if pool == "token"
            else f"timm pooled features ({pool})",
            "weights": self.weights,
        }

    def describe(self) -> dict[str, Any]:
        """Name, dim and transform: what a store records about its encoder."""
        return {"name": self.name, "dim": self.dim, "transform": self.transform}

    def to(self, device: str | torch.device) -> SSLEncoder:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def preprocess(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, H, W, 3]`` (numpy or torch) or float ``[N, 3, H, W]`` in [0, 1] → model input."""
        if isinstance(tiles, np.ndarray):
            tiles = torch.from_numpy(np.ascontiguousarray(tiles))
        if tiles.dtype == torch.uint8:
            if tiles.dim() != 4 or tiles.shape[-1] != 3:
                raise ZoomLDMError(f"expected uint8 tiles [N, H, W, 3]; got shape {tuple(tiles.shape)}")
            x = tiles.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        else:
            if tiles.dim() != 4 or tiles.shape[1] != 3:
                raise ZoomLDMError(
                    f"expected float tiles [N, 3, H, W] in [0, 1]; got shape {tuple(tiles.shape)}"
                )
            x = tiles.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(
                x, size=self.input_size, mode=self.interpolation, antialias=True, align_corners=False
            )
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def embed(self, tiles: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embeddings ``[N, dim]`` float32 (on CPU) of tiles (see :meth:`preprocess` for the input)."""
        out = []
        for start in range(0, len(tiles), batch_size):
            x = self.preprocess(tiles[start : start + batch_size])
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                feats = self.model(x)
            out.append(feats.float().cpu())
        if not out:
            return torch.zeros(0, self.dim)
        feats = torch.cat(out)
        bad = count_nonfinite(feats)
        if bad:  # NaN embeddings would condition (or be stored) silently: refuse them, counted
            rows = int((~torch.isfinite(feats)).any(dim=1).sum())
            raise InputError(
                f"encoder {self.name} ({self.weights}) gave {bad} non-finite values (NaN/inf) in {rows} of "
                f"{len(feats)} tile embeddings; check the encoder weights, or run it in float32"
            )
        return feats


def available_encoders() -> list[str]:
    return sorted(ENCODERS) + ["timm:<name>"]


def build_encoder(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **timm_kwargs: Any,
) -> SSLEncoder:
    """Build a registered encoder (``uni``, ``dinov2_vitl14_reg``) or any timm model (``timm:<name>``).

    Args:
        weights: a local weights file (``.bin``/``.pth``/``.safetensors``; loaded strictly); ``None``
            downloads from the hub (needs network, and for UNI accepted terms); ``"random"`` keeps the
            random initialisation (tests, benchmarks).
        device: where the model runs.
        dtype: autocast dtype for the forward (e.g. ``torch.bfloat16`` on GPU); ``None`` = float32.
        **timm_kwargs: passed to ``timm.create_model`` (override the registry's, e.g. ``embed_dim``);
            ``pretrained=False`` is the same as ``weights="random"``.

    Raises:
        ZoomLDMError: unknown name, missing or mismatching weights file, or hub download impossible.
    """
    import timm

    name = _ALIASES.get(name, name)
    if name.startswith("timm:"):
        timm_name = name[len("timm:") :]
        if not timm.is_model(timm_name):
            raise ZoomLDMError(f"timm has no model {timm_name!r} (see timm.list_models())")
        spec = None
        kwargs: dict[str, Any] = {"num_classes": 0}
    elif name in ENCODERS:
        spec = ENCODERS[name]
        timm_name = spec.timm_name
        kwargs = dict(spec.timm_kwargs)
    else:
        raise ZoomLDMError(f"unknown SSL encoder {name!r}; expected one of {available_encoders()}")
    if timm_kwargs.pop("pretrained", True) is False:
        weights = "random"
    kwargs.update(timm_kwargs)

    model, source = _create(timm, timm_name, spec, weights, kwargs)
    model.eval().requires_grad_(False)
    if spec is not None:
        size = (spec.input_size, spec.input_size)
        interpolation, mean, std = spec.interpolation, spec.mean, spec.std
    else:
        cfg = timm.data.resolve_model_data_config(model)
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        size = tuple(img_size) if img_size is not None else tuple(cfg["input_size"][1:])
        interpolation = cfg.get("interpolation", "bicubic")
        interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    encoder = SSLEncoder(name, model, size, interpolation, mean, std, source, dtype=dtype)
    return encoder.to(device)


def _create(
    timm: Any, timm_name: str, spec: EncoderSpec | None, weights: Any, kwargs: dict
) -> tuple[Any, str]:
    """The timm model and a string saying where its weights came from."""
    create: Callable[..., torch.nn.Module] = timm.create_model
    if weights == "random":
        return create(timm_name, pretrained=False, **kwargs), "random (not pretrained)"
    if weights is not None:
        path = check_input_file(weights, "encoder weights", InputError)
        # timm's own loader: reads .bin/.pth/.safetensors, applies the architecture's checkpoint filter
        # (e.g. Meta's original DINOv2 layout → timm) and loads strictly.
        try:
            model = create(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except Exception as err:  # a damaged file (any library's error) or weights of another model
            # a damaged / foreign / code-carrying file gets its own one-line reason (tensorfiles);
            # an intact file that timm refuses does not fit the architecture
            check_weights_file(path, InputError)
            raise InputError(f"{path} does not fit {timm_name}: {first_line(err)}") from err
        return model, f"file {path.name}"
    hub_name = spec.hub_name if spec is not None else timm_name
    try:
        return create(hub_name, pretrained=True, **kwargs), f"hub {hub_name}"
    except Exception as err:  # network, authentication (gated UNI) and cache errors come in many types
        raise ZoomLDMError(
            f"could not load the weights of {hub_name} from the hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); pass a local file with --encoder-weights"
        ) from None


def encode_region_grid(
    encoder: SSLEncoder, image: np.ndarray, tile: int = 256, batch_size: int = 64
) -> torch.Tensor:
    """SSL grid ``[dim, H/tile, W/tile]`` (row-major) of a uint8 ``[H, W, 3]`` region at base resolution.

    This is the conditioning of a region exactly as ``zoomldm prepare`` builds it (one embedding per
    base tile); ``zoomldm sample --reference`` uses it to condition on a real image.
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ZoomLDMError(f"expected a uint8 RGB image [H, W, 3]; got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if h % tile or w % tile or h == 0 or w == 0:
        raise ZoomLDMError(f"the image is {w}×{h} px; its sides must be multiples of the {tile}-px base tile")
    rows, cols = h // tile, w // tile
    tiles = (
        image.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, tile, tile, 3)
    )
    feats = encoder.embed(tiles, batch_size=batch_size)
    return feats.T.reshape(encoder.dim, rows, cols).contiguous()

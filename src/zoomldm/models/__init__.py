"""Networks: the Summarizer (ours), the UNet and VQ-f4 autoencoder (diffusers), the CDM (DiT)."""

from .autoencoder import build_vae, use_official_quantizer
from .summarizer import Summarizer
from .unet import build_unet

__all__ = ["Summarizer", "build_unet", "build_vae", "use_official_quantizer"]

"""Networks: the Summarizer (ours), the UNet and VQ-f4 autoencoder (diffusers), the CDM (DiT), the SSL
encoders (:mod:`.encoders`, :mod:`.ssl`), and the loaded model that holds them (:mod:`.bundle`).

Nothing here imports the data, the tasks or the pipeline above it (``tests/test_layers.py``)."""

from .autoencoder import build_vae, use_official_quantizer
from .summarizer import Summarizer
from .unet import build_unet

__all__ = ["Summarizer", "build_unet", "build_vae", "use_official_quantizer"]

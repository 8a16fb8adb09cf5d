"""The README's main job (``zoomldm demo`` / ``make demo``).

1. Load the published BRCA checkpoint (hub id or local path). Offline, say so in one line and build a
   small randomly initialised model of the same architecture (preset ``tiny``) with a small random
   SSL encoder, so every stage below still runs and writes its files.
2. Embed a real H&E region (the bundled 1024² crop of the authors' ``brca_001`` at 20x, MIT licence)
   tile by tile with the SSL encoder.
3. Generate patches at every magnification, each conditioned on the region it would cover (the whole
   crop for levels whose field of view is larger), and write PNGs + one contact sheet per level.
4. Generate a large image by joint multi-scale sampling (when that module is installed) and write it
   as a pyramidal TIFF.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ZoomLDMError
from .io.images import contact_sheet, save_png
from .pipeline import ZoomLDMPipeline

DEMO_IMAGE = "brca_20x_1024.jpg"


def load_demo_pipeline(checkpoint: str, device: str) -> tuple[ZoomLDMPipeline, object, bool]:
    """The trained pipeline + UNI encoder, or (offline) the random tiny model + a random encoder."""
    from .data.encoders import DOMAIN_ENCODERS, build_encoder

    try:
        pipe = ZoomLDMPipeline.from_pretrained(checkpoint, device=device)
        encoder = build_encoder(DOMAIN_ENCODERS[pipe.config.domain], device=device)
        return pipe, encoder, True
    except ZoomLDMError as err:
        print(
            f"no trained checkpoint available ({err}); running the same pipeline on a small randomly "
            "initialised model of the ZoomLDM architecture"
        )
    pipe = ZoomLDMPipeline.from_config("tiny", seed=0).to(device=device)
    encoder = build_encoder(
        "timm:vit_tiny_patch16_224",
        weights="random",
        device=device,
        embed_dim=pipe.config.ssl_channels,
        depth=2,
        num_heads=2,
    )
    return pipe, encoder, False


def run_demo(
    checkpoint: str, out: Path, steps: int = 50, seed: int = 0, device: str = "cpu", per_level: int = 2
) -> dict:
    from .data.encoders import encode_region_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe, encoder, trained = load_demo_pipeline(checkpoint, device)
    if pipe.device.type == "cuda":
        pipe.optimize()  # fused QKV + channels-last, as the sampling commands do by default on CUDA
    steps = steps or (50 if trained else 10)
    with resources.files("zoomldm.assets").joinpath(DEMO_IMAGE).open("rb") as f:
        image = np.asarray(Image.open(f).convert("RGB"))
    grid = encode_region_grid(encoder, image).cpu()  # [C, 4, 4] for the 1024² crop at 20x
    summary: dict = {"trained": trained, "levels": {}}
    sheets = []
    for mag in pipe.scales:
        g = min(mag.grid_size, grid.shape[-1])
        region = grid[:, :g, :g]
        result = pipe(
            ssl=region,
            magnification=mag,
            num_images=per_level,
            num_inference_steps=steps,
            guidance_scale=2.0,
            seed=seed + mag.index,
        )
        level_dir = out / f"patches_{mag.key}"
        level_dir.mkdir(exist_ok=True)
        for i, patch in enumerate(result.images):
            save_png(level_dir / f"{i:02d}.png", patch, dict(result.settings, index=i))
        sheets.append(contact_sheet(list(result.images), ncols=per_level))
        summary["levels"][mag.name] = {"grid": list(region.shape[-2:]), "patches": per_level}
    save_png(out / "contact_sheet.png", np.concatenate(sheets, axis=0), {"what": "one row per magnification"})
    summary["large_image"] = _large_image(pipe, grid, out, trained, seed)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}/contact_sheet.png and per-level patches ({len(pipe.scales)} magnifications)")
    return summary


def _large_image(pipe: ZoomLDMPipeline, grid: torch.Tensor, out: Path, trained: bool, seed: int) -> dict:
    """A 1024² image at 20x jointly with its 5x guide (SPEC §4), written as a pyramidal TIFF.

    Trained weights use the official hyper-parameters. The random stand-in uses a short schedule (2 outer
    steps, 1 Newton iteration, a 2-step post-processing) so the stage runs in minutes on a CPU: its
    output is noise either way, the point is that every stage runs and writes its files.
    """
    from .sampling.constrained import JointSamplingConfig
    from .sampling.joint import generate_large_image
    from .sampling.postprocess import PostprocessConfig

    if trained:
        config, post = JointSamplingConfig(), PostprocessConfig()
    else:
        config = JointSamplingConfig(t0=200, stride=100, inner_steps=1)
        post = PostprocessConfig(t0=100, stride=50)
    guide = pipe.scales.for_downsample(grid.shape[-1])  # the 1024² crop covers one 5x patch
    result = generate_large_image(
        pipe,
        grid,
        guide=guide,
        config=config,
        postprocess=post,
        seed=seed,
        out=out / "large_20x.tif",
        resume=False,
    )
    return {"path": str(result.path), "guide": guide.name, "metrics": result.metrics.get("output")}

"""The README's main job (``zoomldm demo`` / ``make demo``).

1. Load the published BRCA checkpoint (hub id or local path). Offline, say so in one line and use the
   package's embedded small model (``tiny`` architecture trained on one H&E image,
   ``zoomldm/assets/tiny_brca``), or random weights of that architecture where none is shipped.
2. Embed a real H&E region (the bundled 1024² crop of the authors' ``brca_001`` at 20x, MIT licence)
   tile by tile with the SSL encoder.
3. Generate patches at every magnification, each conditioned on the region it would cover (the whole
   crop for levels whose field of view is larger), and write PNGs + one contact sheet per level.
4. Generate a large image by joint multi-scale sampling (when that module is installed) and write it
   as a pyramidal TIFF.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ZoomLDMError
from .fsutil import atomic_path
from .io.images import contact_sheet, save_png
from .pipeline import ZoomLDMPipeline

DEMO_IMAGE = "brca_20x_1024.jpg"
#: the large-image schedule of the small offline models (by CLI name): 10 outer steps from t = 1000
#: (stride 100), 1 Newton iteration at the last 3 (t ≤ 300), the 2-step post-processing from t = 100, decode
#: windows at half overlap. Measured on the embedded model (docs/embedded_model.md): Newton iterations at
#: high t, where x̂0 is a blur, turn its tiles into blobs (structure coherence 0.29-0.31, seam contrast
#: 1.6-2.3); iterations late keep them tissue (0.355, the real region's 0.346) and still pull them toward
#: the guide. It starts at t0 = 1000 because the trained latents have unit spread. 96 s for the 1024² image
#: on 2 idle cores (was 140 s); the official schedule took > 17 min on 2 CPU cores.
CPU_LARGE_IMAGE = dict(
    t0=1000, stride=100, inner_steps=1, newton_max_t=300, post_t0=100, post_stride=50, decode_stride=32
)


def load_demo_pipeline(checkpoint: str | None, device: str) -> tuple[ZoomLDMPipeline, object, str]:
    """The demo's model, its SSL encoder and which model it is (``"published"``, ``"embedded"``, ``"random"``).

    ``checkpoint`` None: the package's one rule (:func:`zoomldm.checkpoints.default_checkpoint`):
    ``$ZOOMLDM_CHECKPOINT``, else the published checkpoint with UNI when it is cached or the hub answers,
    else the embedded offline model (``zoomldm/assets/tiny_brca``, issue 16) with one line saying so. The
    published model, when chosen by that rule but not loadable here (e.g. UNI's gated weights), also gives
    way to the embedded one, with one line. Random weights of the same architecture only where an
    installation ships no embedded model. A checkpoint the user named (the argument or
    ``$ZOOMLDM_CHECKPOINT``) is never replaced by a stand-in: its error is raised (exit 2), so a damaged or
    mistyped ``--checkpoint`` is not hidden behind a demo that "works".
    """
    from .checkpoints import CHECKPOINT_ENV, default_checkpoint, is_embedded
    from .models.encoders import DOMAIN_ENCODERS, build_encoder
    from .pipeline import load_embedded

    named = checkpoint is not None or bool(os.environ.get(CHECKPOINT_ENV))
    chosen = default_checkpoint(checkpoint, log=print)  # offline: says so in one line
    if not is_embedded(chosen):
        try:
            pipe = ZoomLDMPipeline.from_pretrained(chosen, device=device)
            encoder = build_encoder(DOMAIN_ENCODERS[pipe.config.domain], device=device)
            return pipe, encoder, "published"
        except ZoomLDMError as err:
            if named:
                raise
            reason = str(err)
        print(f"note: {chosen} could not be loaded ({reason}); using the embedded offline model")
    embedded = load_embedded(device)
    if embedded is not None:
        return embedded[0], embedded[1], "embedded"
    print(
        "no trained checkpoint available; running the same pipeline on a small randomly initialised model "
        "of the ZoomLDM architecture"
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
    return pipe, encoder, "random"


def run_demo(
    checkpoint: str | None,
    out: Path,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    per_level: int = 2,
) -> dict:
    """The main job (module docstring); ``checkpoint`` None: the default rule (:func:`load_demo_pipeline`)."""
    from .models.encoders import encode_region_grid

    if steps is not None and steps < 1:
        raise ZoomLDMError(f"--steps {steps}: must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe, encoder, kind = load_demo_pipeline(checkpoint, device)
    if pipe.device.type == "cuda":
        pipe.optimize()  # fused QKV + channels-last, as the sampling commands do by default on CUDA
    trained = kind != "random"
    steps = steps or (50 if trained else 10)
    with resources.files("zoomldm.assets").joinpath(DEMO_IMAGE).open("rb") as f:
        image = np.asarray(Image.open(f).convert("RGB"))
    grid = encode_region_grid(encoder, image).cpu()  # [C, 4, 4] for the 1024² crop at 20x
    summary: dict = {"model": kind, "trained": trained, "levels": {}}
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
    # the official large-image schedule for the published model; the short CPU one for the small models
    # (the official one took > 17 min on 2 CPU cores with the embedded model, measured)
    summary["large_image"] = large_image(pipe, grid, out, kind == "published", seed)
    with atomic_path(out / "summary.json") as tmp:  # whole or absent (issue 12: nothing is lost)
        tmp.write_text(json.dumps(summary, indent=2))
    print(
        f"wrote {out}/contact_sheet.png, per-level patches ({len(pipe.scales)} magnifications) and "
        f"{summary['large_image']['path']} (1024² at 20x with its {summary['large_image']['guide']} guide; "
        f"zoomldm view {summary['large_image']['path']})"
    )
    return summary


def large_image(pipe: ZoomLDMPipeline, grid: torch.Tensor, out: Path, official: bool, seed: int) -> dict:
    """The demo's large image: 1024² at 20x jointly with its 5x guide (SPEC §4), written as a pyramidal TIFF
    ``<out>/large_20x.tif``; ``grid`` is the SSL grid of the bundled 1024² region.

    The published model uses the official hyper-parameters. The small offline models (embedded or random)
    use :data:`CPU_LARGE_IMAGE` so the stage runs in minutes on a CPU.
    """
    fast = {} if official else dict(CPU_LARGE_IMAGE)
    guide = pipe.scales.for_downsample(grid.shape[-1])  # the 1024² crop covers one 5x patch
    result = pipe.generate_large(
        reference=grid, guide=guide, seed=seed, out=out / "large_20x.tif", resume=False, **fast
    )
    return {"path": str(result.path), "guide": guide.name, "metrics": result.metrics.get("output")}

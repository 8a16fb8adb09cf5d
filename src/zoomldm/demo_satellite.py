"""``zoomldm demo --domain satellite``: the satellite half of the main job (issue 25).

1. The model: ``--checkpoint`` when given, else the package's embedded offline aerial model
   (``embedded-naip``: the ``tiny-naip`` architecture trained on one NAIP-style image,
   ``zoomldm/assets/tiny_naip``), said in one line.
2. Embed a real aerial region (the bundled 1024² crop of the authors' ``naip_001`` at 1x, MIT licence)
   tile by tile with the model's SSL encoder.
3. Patches at all 4 levels (1x … 4x), each conditioned on the region it would cover, with a labelled
   contact sheet.
4. A large image at 1x jointly generated with its coarser guide (a 2x guide over 512², the CPU schedule of
   the small models), written as a Cloud-Optimized GeoTIFF (synthetic: no georeference).
5. Super-resolution of a real Sentinel-2 crop (Copernicus Sentinel data, 10 m/px, 256²: a scene the model
   never saw) from 4x — the model's 8 m/px level, the nearest to 10 m — to 2x (4×: 1024²).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ZoomLDMError
from .fsutil import atomic_path
from .io.images import contact_sheet, save_png

NAIP_IMAGE = "naip_1x_1024.jpg"  # naip_001.jpg[512:1536, 512:1536] (MIT, the authors' repository)
SENTINEL_IMAGE = "sentinel2_10m_256.png"  # sentinel2_rgb.tif[800:1056, 800:1056] (Copernicus Sentinel data)
#: the CPU schedule of the small models' large images (demo.CPU_LARGE_IMAGE, measured on the pathology one)
CPU_SCHEDULE = dict(t0=1000, stride=100, inner_steps=1, newton_max_t=300, post_t0=100, post_stride=50)


def _asset(name: str) -> np.ndarray:
    with resources.files("zoomldm.assets").joinpath(name).open("rb") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def load_satellite_pipeline(checkpoint: str | None, device: str):
    """(pipeline, SSL encoder, kind): the named checkpoint (its domain must be satellite) with its
    domain's encoder, else the embedded aerial model with its own encoder (one line says so)."""
    from .checkpoints import EMBEDDED_NAIP, embedded_name
    from .models.ssl import build_ssl_encoder, default_encoder
    from .pipeline import ZoomLDMPipeline, load_embedded

    if checkpoint is None or embedded_name(checkpoint) == EMBEDDED_NAIP:
        if checkpoint is None:
            print(
                "note: using the embedded offline aerial model (embedded-naip: tiny, trained on one NAIP-style "
                "image; zoomldm/assets/tiny_naip/MODEL_CARD.md)"
            )
        loaded = load_embedded(device, name=EMBEDDED_NAIP)
        if loaded is None:
            raise ZoomLDMError("this installation ships no embedded aerial model (zoomldm/assets/tiny_naip)")
        return loaded[0], loaded[1], "embedded"
    pipe = ZoomLDMPipeline.from_pretrained(checkpoint, device=device)
    if pipe.scales.domain != "satellite":
        raise ZoomLDMError(
            f"--domain satellite needs a satellite model; {checkpoint} is a {pipe.scales.domain} model"
        )
    encoder = build_ssl_encoder(default_encoder(pipe), None, device, pipe.config.ssl_channels)
    return pipe, encoder, "published"


def run_satellite_demo(
    checkpoint: str | None,
    out: Path,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    per_level: int = 2,
    quick: bool = False,
) -> dict:
    """The satellite main job (module docstring); returns its summary (also ``<out>/summary.json``).
    ``quick``: 2 outer steps without Newton iterations and 5 inversion steps for the large image and the
    super-resolution, which goes to 3x only (a smoke run: the tests)."""
    from .models.encoders import encode_region_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe, encoder, kind = load_satellite_pipeline(checkpoint, device)
    steps = steps or 50
    grid = encode_region_grid(encoder, _asset(NAIP_IMAGE)).cpu()  # [C, 4, 4] for the 1024² crop at 1x
    summary: dict = {"domain": "satellite", "model": kind, "levels": {}}
    sheets, labels = [], []
    for mag in pipe.scales:
        g = min(mag.grid_size, grid.shape[-1])
        result = pipe(
            ssl=grid[:, :g, :g],
            magnification=mag,
            num_images=per_level,
            num_inference_steps=steps,
            guidance_scale=2.0,
            seed=seed + mag.index,
            progress=False,
        )
        level_dir = out / f"patches_{mag.key}"
        level_dir.mkdir(exist_ok=True)
        for i, patch in enumerate(result.images):
            save_png(level_dir / f"{i:02d}.png", patch, dict(result.settings, index=i))
        sheets.append(contact_sheet(list(result.images), ncols=per_level))
        labels.append(f"{mag.name} ({mag.mpp:g} m/px)")
        summary["levels"][mag.name] = {"grid": [g, g], "patches": per_level}
    save_png(
        out / "contact_sheet.png",
        np.concatenate(sheets, axis=0),
        {"what": "one row per magnification, top to bottom: " + ", ".join(labels)},
    )
    fast = (
        {} if kind == "published" else dict(CPU_SCHEDULE, decode_stride=max(pipe.config.latent_size // 2, 1))
    )
    if quick:  # the stages run, the constraint does not: no Newton iteration, windows side by side
        fast.update(stride=500, inner_steps=0, no_postprocess=True, decode_stride=pipe.config.latent_size)
    guide = pipe.scales[1]  # 2x: a 512² image at 1x over the crop's top-left 2 × 2 base tiles
    large = pipe.generate_large(
        reference=grid[:, : guide.grid_size, : guide.grid_size],
        guide=guide,
        seed=seed,
        out=out / "large_1x.tif",
        resume=False,
        progress=False,
        **fast,
    )
    summary["large_image"] = {
        "path": str(large.path),
        "guide": guide.name,
        "metrics": large.metrics.get("output"),
    }
    source, target = pipe.magnification("4x"), pipe.magnification("3x" if quick else "2x")
    sr_fast = {} if kind == "published" and not quick else dict(fast, inversion_steps=5 if quick else 50)
    sr = pipe.super_resolve(
        _asset(SENTINEL_IMAGE),
        source,
        target,
        out=out / "sentinel2_2x.tif",
        resume=False,
        progress=False,
        **sr_fast,
    )
    summary["super_resolution"] = {
        "path": str(sr.path),
        "input": f"{SENTINEL_IMAGE} (Copernicus Sentinel-2, 10 m/px, not in the training data)",
        "from": source.name,
        "to": target.name,
        "metrics": sr.metrics.get("output"),
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    print(
        f"wrote {out}/contact_sheet.png (4 levels), {large.path} (512² at 1x with its 2x guide) and "
        f"{sr.path} (a real Sentinel-2 crop super-resolved 4x → 2x); zoomldm view {large.path}"
    )
    return summary

#!/usr/bin/env python
"""Train the package's embedded offline model (``src/zoomldm/assets/tiny_brca/``) with the project's commands.

    .venv/bin/python tools/train_embedded_model.py --install          # the shipped model (55 min measured on 2 idle cores)
    .venv/bin/python tools/train_embedded_model.py --vae-steps 20 --unet-steps 10 --work /tmp/trial  # a trial

Stages (each a ``zoomldm`` command run as a subprocess, its exact argv recorded in the model card):

1. ``zoomldm train-vae`` — the ``tiny`` VQ-f4 on crops of ``brca_001.jpeg`` (all 2× levels), held-out PSNR;
2. the SSL encoder — a seeded random 64-d ViT (the ``tiny`` model's SSL width; UNI needs the network and
   accepted terms), saved as ``encoder.safetensors`` so that prepare, the demo and the zoom explorer all use
   the very same one;
3. ``zoomldm prepare`` — the store, encoded with the trained VQ (``--checkpoint <vae>/model``) and that encoder;
4. ``zoomldm train --config configs/embedded_tiny.yaml`` — UNet + Summarizer, ``model.vae`` the trained VQ;
4b. ``zoomldm train-cdm`` — a small Conditioning Diffusion Model (DiT 4 × 128) on the trained Summarizer's
   tokens of the store, shipped as ``cdm/`` so reference-free sampling works offline;
5. assembly — the final checkpoint (EMA UNet, Summarizer, VQ) in our format; UNet and Summarizer weights
   rounded to float16 when a sample made with the rounded weights stays within 1/255 of the float32
   one (measured and recorded); sample sheets per magnification (top: stored patches decoded, bottom:
   generated) and their colour statistics; ``MODEL_CARD.md`` with the sha256 of the inputs and of every
   shipped file (checked by ``zoomldm.models.embedded`` and ``tests/models/test_embedded.py``), the commands,
   steps, wall times, final losses and PSNR.

``--install`` replaces ``src/zoomldm/assets/tiny_brca`` (atomically) with the result; without it the model
is left in ``<work>/tiny_brca``. Every stage runs with ``--threads`` intra-op threads (``OMP_NUM_THREADS``,
default 2, the CI machine's cores: the tiny UNet's step is compute-bound — 6.3 samples/s at batch 8 and at
batch 32 on one thread, measured) and, on a shared machine, under ``nice``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "src" / "zoomldm" / "assets" / "tiny_brca"
ENCODER = "timm:vit_tiny_patch16_224"
ENCODER_OPTIONS = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 64}
CDM_SIZE = "4,128,4"  # DiT depth, hidden width, heads: 1.3 M parameters, ≈ 0.7 s per step of 64 on one core
IMAGE_LICENCE = (
    "brca_001.jpeg: H&E image of a TCGA-BRCA slide region, distributed with the ZoomLDM authors' code "
    "(cvlab-stonybrook/ZoomLDM) under the MIT licence"
)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


THREADS = "2"  # intra-op threads of every stage (set by --threads)


def run(argv: list[str], log: Path) -> float:
    """Run one command (stdout/stderr appended to ``log``); returns its wall time; exits on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS, TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    print("$ " + " ".join(argv), flush=True)
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    took = time.perf_counter() - start
    if code != 0:
        sys.exit(f"failed ({code}) after {took:.0f} s: {' '.join(argv)}; see {log}")
    print(f"  done in {took:.0f} s", flush=True)
    return took


def make_encoder(path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    from zoomldm.models.encoders import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(ENCODER, weights="random", **ENCODER_OPTIONS)
    state = {k: v.contiguous() for k, v in encoder.model.state_dict().items()}
    save_file(state, str(path))


def load_encoder(path: Path):
    from zoomldm.models.encoders import build_encoder

    return build_encoder(ENCODER, weights=str(path), **ENCODER_OPTIONS)


def final_checkpoint(run_dir: Path) -> Path:
    from zoomldm.train.checkpointing import list_checkpoints

    found = list_checkpoints(run_dir)
    if not found:
        sys.exit(f"{run_dir}: no checkpoint")
    return found[-1][1]


def train_losses(log: Path) -> dict:
    """The last logged loss line of `zoomldm train` (total and per magnification)."""
    last = None
    for line in log.read_text().splitlines():
        if re.match(r"^step \d+: loss ", line):
            last = line
    if last is None:
        return {}
    match = re.match(r"^step (\d+): loss ([\d.]+) \((.*)\), lr", last)
    if not match:
        return {"line": last}
    levels = dict(item.rsplit(" ", 1) for item in match.group(3).split(", ") if " " in item)
    return {"step": int(match.group(1)), "loss": float(match.group(2)), "by_level": levels, "line": last}


def samples_and_stats(
    pipe, store: str, out: Path, per_level: int, steps: int, seed: int, cdm: Path | None = None
) -> dict:
    """Per magnification: ``per_level`` stored patches (decoded) above as many generated from their SSL
    grids (and, with ``cdm``, a third row generated reference-free from CDM tokens); the colour statistics
    of each row (mean and std of R, G, B in 0-255)."""
    import numpy as np
    import torch

    from zoomldm.io.images import contact_sheet, save_png
    from zoomldm.pipeline import to_uint8
    from zoomldm.train.config import check_store

    dataset = check_store(store, pipe.config)
    stats, rows = {}, []
    for level, count in enumerate(dataset.counts):
        if count == 0:
            continue
        mag = dataset.levels[level]
        start = int(dataset.offsets[level])
        picks = sorted({int(round(x)) for x in np.linspace(0, count - 1, min(per_level, count))})
        with torch.no_grad():
            stored = torch.stack([dataset[start + i]["latent"] for i in picks])
            real = to_uint8(pipe.decode_latents(stored).float().clamp(-1, 1))
        fake = []
        for k, i in enumerate(picks):
            result = pipe(
                ssl=dataset.raw_grid(start + i),
                magnification=mag,
                num_images=1,
                num_inference_steps=steps,
                guidance_scale=2.0,
                seed=seed + 100 * level + k,
                progress=False,
            )
            fake.extend(result.images)
        fake = np.stack(fake)
        free = None
        if cdm is not None:
            free = pipe(
                magnification=mag,
                num_images=len(picks),
                num_inference_steps=steps,
                guidance_scale=2.0,
                seed=seed + 100 * level,
                cdm=cdm,
                cdm_steps=50,
                progress=False,
            ).images
        shown = list(real) + list(fake) + (list(free) if free is not None else [])
        rows.append(contact_sheet(shown, ncols=len(picks), padding=2))

        def colour(a):
            flat = a.reshape(-1, 3).astype(np.float64)
            return {"mean": flat.mean(0).round(1).tolist(), "std": flat.std(0).round(1).tolist()}

        stats[mag.name] = {"stored": colour(real), "generated": colour(fake), "patches": len(picks)}
        if free is not None:
            stats[mag.name]["reference-free"] = colour(free)
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    rows_text = "stored, generated from their SSL grids" + (
        ", reference-free (CDM)" if cdm is not None else ""
    )
    save_png(out, sheet, {"rows": f"per magnification: {rows_text}", "steps": steps})
    return stats


def cdm_token_distances(pipe, cdm: Path, store: str, seed: int, steps: int = 50) -> dict:
    """Per magnification with ≥ 4 stored patches: the Fréchet distance between the Summarizer's tokens of
    the stored patches and as many CDM samples (every one of the 65 tokens a 64-d sample), beside
    the same distance for i.i.d. Gaussian tokens with the real tokens' per-element mean and std (a CDM
    that learnt nothing but the marginals) and between the two halves of the real tokens (sampling
    noise)."""
    import torch

    from zoomldm.evaluation.frechet import embedding_frechet_distance as fd
    from zoomldm.models.cdm import load_cdm
    from zoomldm.models.cdm_diffusion import sample_cdm
    from zoomldm.train.config import check_store

    dataset = check_store(store, pipe.config)
    model = load_cdm(cdm)[0].eval()
    out = {}
    for level, count in enumerate(dataset.counts):
        count, start = int(count), int(dataset.offsets[level])
        if count < 4:
            continue
        with torch.no_grad():
            grids = [dataset.raw_grid(start + i) for i in range(count)]
            real = torch.cat([pipe.condition(grids[i : i + 32], level) for i in range(0, count, 32)])
            g = torch.Generator().manual_seed(seed + level)
            fake = sample_cdm(model, level, batch_size=count, num_steps=steps, generator=g)
            gauss = real.mean(0) + real.std(0) * torch.randn(real.shape, generator=g)
        pooled = [t.reshape(-1, t.shape[-1]) for t in (real, fake, gauss)]  # every token a 64-d sample
        out[dataset.levels[level].name] = {
            "patches": count,
            "cdm": round(fd(pooled[0], pooled[1]), 3),
            "gaussian": round(fd(pooled[0], pooled[2]), 3),
            "real_halves": round(fd(pooled[0][: len(pooled[0]) // 2], pooled[0][len(pooled[0]) // 2 :]), 3),
        }
    return out


def round_to_fp16(pipe, directory: Path, store: str, seed: int) -> dict:
    """Store UNet and Summarizer in float16 when that changes a sample by ≤ 1/255 (measured here)."""
    import copy

    from zoomldm.train.config import check_store

    dataset = check_store(store, pipe.config)
    grid, mag = dataset.raw_grid(0), dataset.levels[0]
    half = copy.deepcopy(pipe)
    for module in (half.unet, half.summarizer):
        for p in module.parameters():
            p.data = p.data.half().float()
    settings = dict(
        ssl=grid, magnification=mag, num_images=1, num_inference_steps=20, seed=seed, progress=False
    )
    a = pipe(**settings).images.astype("float32")
    b = half(**settings).images.astype("float32")
    diff = float(abs(a - b).max())
    mean = float(abs(a - b).mean())
    fp16 = mean <= 1.0
    return {
        "float16_unet_summarizer": fp16,
        "sample_max_abs_diff_uint8": diff,
        "sample_mean_abs_diff_uint8": mean,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=REPO.parent / "shared" / "data" / "brca_001.jpeg")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "embedded")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-batch", type=int, default=8)
    parser.add_argument("--vae-finetune-steps", type=int, default=200, help="then at 256², batch 1")
    parser.add_argument("--unet-steps", type=int, default=2800)
    parser.add_argument("--unet-batch", type=int, default=8)
    parser.add_argument("--cdm-steps", type=int, default=800, help="0: no CDM")
    parser.add_argument("--cdm-batch", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="intra-op threads per stage (measured: the tiny UNet is compute-bound)",
    )
    parser.add_argument("--install", action="store_true", help=f"replace {ASSET.relative_to(REPO)}")
    parser.add_argument("--fresh", action="store_true", help="delete <work> first (else stages resume)")
    args = parser.parse_args()

    import torch
    from PIL import Image

    global THREADS
    THREADS = str(args.threads)
    torch.set_num_threads(args.threads)
    bin_dir = Path(sys.executable).parent
    zoomldm = str(bin_dir / "zoomldm")
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    work = args.work.resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    started = time.perf_counter()
    timings: dict[str, float] = {}
    commands: dict[str, list[str]] = {}

    # 1. the VQ-f4
    vae_dir = work / "vae"
    commands["train-vae"] = [
        zoomldm, "train-vae", str(args.image), "--out", str(vae_dir), "--config", "tiny",
        "--max-steps", str(args.vae_steps), "--batch-size", str(args.vae_batch), "--crop-size", "64",
        "--lr", "1e-3", "--checkpoint-every", "500", "--log-every", "50", "--seed", str(args.seed),
    ]  # fmt: skip
    timings["train-vae"] = run(nice + commands["train-vae"], log)
    # 1b. fine-tune at the store's patch size: the VQ-f4's mid-block attention, trained on 16² latents,
    # blurred and desaturated 256² patches (64² latents; measured 16.9 dB on a 256² crop vs 25.8 dB on
    # 64² crops) — the same run resumed with 256² crops, batch 1
    if args.vae_finetune_steps:
        commands["train-vae-256"] = [
            zoomldm, "train-vae", str(args.image), "--out", str(vae_dir), "--config", "tiny",
            "--max-steps", str(args.vae_steps + args.vae_finetune_steps), "--batch-size", "1",
            "--crop-size", "256", "--checkpoint-every", "500", "--log-every", "25", "--seed", str(args.seed),
        ]  # fmt: skip
        timings["train-vae-256"] = run(nice + commands["train-vae-256"], log)
    vae_metrics = json.loads((vae_dir / "metrics.json").read_text())
    if "train_wall_time_s" in vae_metrics:  # over all resumes (a rerun of a finished stage takes seconds)
        timings["train-vae (all runs)"] = vae_metrics["train_wall_time_s"]

    # 2. the SSL encoder
    encoder_file = work / "encoder.safetensors"
    if not encoder_file.is_file():
        make_encoder(encoder_file, args.seed)

    # 3. the store
    slides = work / "slides"
    slides.mkdir(exist_ok=True)
    link = slides / args.image.name
    if not link.exists():
        link.symlink_to(args.image.resolve())
    store = work / "store.zarr"
    commands["prepare"] = [
        zoomldm, "prepare", str(slides), str(store), "--checkpoint", str(vae_dir / "model"),
        "--encoder", ENCODER, "--encoder-weights", str(encoder_file),
        *[x for k, v in ENCODER_OPTIONS.items() for x in ("--encoder-option", f"{k}={v}")],
        "--mpp", "0.5", "--tissue-threshold", "0", "--batch-size", "16", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    timings["prepare"] = run(nice + commands["prepare"], log)

    # 4. UNet + Summarizer
    run_dir = work / "unet"
    commands["train"] = [
        zoomldm, "train", "--config", str(REPO / "configs" / "embedded_tiny.yaml"),
        "--set", f"output_dir={run_dir}", "--set", f"data.store={store}",
        "--set", f"model.vae={vae_dir / 'model'}", "--set", f"train.max_steps={args.unet_steps}",
        "--set", f"data.batch_size={args.unet_batch}", "--set", f"seed={args.seed}", "--no-progress",
    ]  # fmt: skip
    train_log = work / "train_log.txt"
    timings["train"] = run(nice + commands["train"], train_log)

    checkpoint = final_checkpoint(run_dir)

    # 4b. the CDM, on the tokens of the trained Summarizer (frozen)
    cdm_dir = None
    if args.cdm_steps:
        cdm_run = work / "cdm"
        commands["train-cdm"] = [
            zoomldm, "train-cdm", "--store", str(store), "--zoomldm", str(checkpoint), "--out", str(cdm_run),
            "--size", CDM_SIZE, "--batch-size", str(args.cdm_batch), "--max-steps", str(args.cdm_steps),
            "--lr", "3e-4", "--ema-decay", "0.995", "--checkpoint-every", str(args.cdm_steps),
            "--keep", "1", "--log-every", "50", "--num-workers", "0", "--seed", str(args.seed), "--no-progress",
        ]  # fmt: skip
        cdm_log = work / "cdm_log.txt"
        timings["train-cdm"] = run(nice + commands["train-cdm"], cdm_log)
        from zoomldm.train.cdm import list_cdm_checkpoints

        cdm_dir = list_cdm_checkpoints(cdm_run)[-1] / "cdm"

    # 5. assembly
    from zoomldm.fsutil import replace_dir
    from zoomldm.pipeline import ZoomLDMPipeline

    pipe = ZoomLDMPipeline.from_pretrained(checkpoint)
    t = time.perf_counter()
    precision = round_to_fp16(pipe, work, str(store), args.seed)
    colour = samples_and_stats(
        pipe, str(store), work / "samples.png", 4, args.sample_steps, args.seed, cdm=cdm_dir
    )
    tokens = cdm_token_distances(pipe, cdm_dir, str(store), args.seed) if cdm_dir is not None else None
    timings["samples"] = time.perf_counter() - t

    staging = work / ".tiny_brca.partial"
    shutil.rmtree(staging, ignore_errors=True)
    if precision["float16_unet_summarizer"]:
        pipe.unet.half()
        pipe.summarizer.half()
    pipe.provenance = {"weights": "zoomldm embedded tiny_brca (tools/train_embedded_model.py)"}
    pipe.save_pretrained(staging, extra={"step": args.unet_steps})
    if cdm_dir is not None:  # the CDM's EMA weights in float16 (computed in float32), no training state
        from zoomldm.models.cdm import load_cdm

        load_cdm(cdm_dir)[0].half().save_pretrained(staging / "cdm")
    shutil.copyfile(encoder_file, staging / "encoder.safetensors")
    (staging / "encoder.json").write_text(json.dumps({"name": ENCODER, "options": ENCODER_OPTIONS}, indent=2))
    with Image.open(work / "samples.png") as sheet:  # a small JPEG preview in the package (the PNG is MBs)
        sheet.convert("RGB").reduce(2).save(staging / "samples.jpg", quality=85)
    strip_build_paths(staging)
    timings["total"] = time.perf_counter() - started

    files = sorted(p for p in staging.rglob("*") if p.is_file())
    card = {
        "inputs": {args.image.name: sha256(args.image)},
        "licence": IMAGE_LICENCE,
        "commands": {k: _portable(["zoomldm", *v[1:]], work, args.image) for k, v in commands.items()},
        "steps": {
            "vae": f"{args.vae_steps} (64², batch {args.vae_batch}) + {args.vae_finetune_steps} (256², batch 1)",
            "unet": args.unet_steps,
            "cdm": args.cdm_steps,
        },
        "wall_time_s": {k: round(v, 1) for k, v in timings.items()},
        "vae_held_out": vae_metrics["held_out"],
        "vae_final_loss": vae_metrics["history"][-1] if vae_metrics.get("history") else None,
        "vae_scaling": {k: vae_metrics[k] for k in ("latent_std", "latent_scale") if k in vae_metrics},
        "unet_final_loss": train_losses(train_log),
        "cdm_final_loss": train_losses(work / "cdm_log.txt") if cdm_dir is not None else None,
        "cdm_tokens": tokens,
        "precision": precision,
        "colour_stats": colour,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    (staging / "MODEL_CARD.md").write_text(model_card(card, staging, files))
    target = ASSET if args.install else work / "tiny_brca"
    size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    replace_dir(staging, target)
    print(f"wrote {target} ({size / 1e6:.1f} MB) in {timings['total'] / 60:.1f} min")


def strip_build_paths(folder: Path) -> None:
    """Drop diffusers' ``_name_or_path`` (the folder a model was loaded from: here a checkpoint under the
    builder's --work) from every ``config.json``: it is not read back, and it made the files' hashes depend
    on where the script ran (two runs with bit-identical weights differed only there)."""
    for path in sorted(folder.rglob("config.json")):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _portable(argv: list[str], work: Path, image: Path) -> str:
    """A recorded command with the machine's paths replaced: ``$WORK`` (the --work folder), the image by
    its name in ../shared/data, the repository as ``.``."""
    text = " ".join(argv)
    text = text.replace(str(work), "$WORK").replace(str(image), f"../shared/data/{image.name}")
    return text.replace(str(REPO) + "/", "")


def _token_table(tokens: dict | None) -> list[str]:
    if not tokens:
        return []
    return [
        "## CDM: Fréchet distance of its tokens to the Summarizer's (64-d tokens as samples; lower is closer)",
        "",
        "Per level: the stored patches' tokens against as many CDM samples (50 DDIM steps), against i.i.d. "
        "Gaussian tokens with the real per-element mean and std, and between the two halves of the real "
        "tokens (the estimate's own noise).",
        "",
        "| level | patches | CDM | Gaussian | real halves |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {name} | {t['patches']} | {t['cdm']} | {t['gaussian']} | {t['real_halves']} |"
            for name, t in tokens.items()
        ],
        "",
    ]


def model_card(card: dict, root: Path, files: list[Path]) -> str:
    v = card["vae_held_out"]
    v_scale = card["vae_scaling"]
    u = card["unet_final_loss"]
    free = any("reference-free" in x for x in card["colour_stats"].values())
    lines = [
        "# tiny_brca — zoomldm's embedded offline model",
        "",
        "A ZoomLDM of the `tiny` architecture (VQ-f4, UNet, Summarizer"
        + ("" if card["cdm_tokens"] is None else ", and a CDM in `cdm/` for reference-free sampling")
        + ") trained on one H&E image with "
        "`tools/train_embedded_model.py`. It is the offline default of `zoomldm demo`: small and quickly trained, "
        "it shows every stage working on H&E-like output; it is **not** the published model and not for research "
        "use. Its SSL encoder is a seeded *random* 64-d ViT (`encoder.safetensors`), so conditioning carries "
        "colour/texture statistics, not UNI semantics.",
        "",
        "## Data",
        "",
        f"- {card['licence']}",
        *[f"- sha256 `{name}`: `{digest}`" for name, digest in card["inputs"].items()],
        "",
        "## Commands",
        "",
        f"Run by `tools/train_embedded_model.py --install` (each under `nice -n 19`, `OMP_NUM_THREADS={card['threads']}`):",
        "",
        "```",
        *card["commands"].values(),
        "```",
        "",
        "## Training",
        "",
        f"- steps: VQ-f4 {card['steps']['vae']}, UNet + Summarizer {card['steps']['unet']}, CDM "
        f"{card['steps']['cdm'] or 'none'}",
        "- wall time (s): " + ", ".join(f"{k} {v}" for k, v in card["wall_time_s"].items()),
        f"- machine: {card['machine']}",
        f"- VQ-f4 final loss: {json.dumps(card['vae_final_loss'])}",
        f"- VQ-f4 held-out reconstruction PSNR: {v['psnr_db']:.2f} dB over {v['held_out_crops']} crops "
        f"({', '.join(f'{k} {x:.2f}' for k, x in v['psnr_db_by_level'].items())}); codes used "
        f"{v['codes_used']}/{v['codebook_size']}",
        f"- VQ-f4 latents: std {v_scale.get('latent_std', float('nan')):.4f} on the held-out crops, exported "
        f"rescaled by {v_scale.get('latent_scale', float('nan')):.4f} to unit std (exact; `train-vae "
        "--normalize-latents`: the diffusion schedule assumes about unit latents)",
        f"- UNet final loss (Min-SNR-5 weighted ε-MSE): {u.get('line', 'n/a')}",
        *(
            [f"- CDM final loss: {card['cdm_final_loss'].get('line', 'n/a')}"]
            if card["cdm_final_loss"]
            else []
        ),
        f"- precision: {json.dumps(card['precision'])}",
        "",
        "## Colour statistics per magnification (RGB mean / std, 0-255; `samples.jpg`)",
        "",
        "Rows of `samples.jpg` per level: stored patches (decoded), generated from their SSL grids"
        + (", generated reference-free (CDM tokens, 50 DDIM steps)." if free else "."),
        "",
        "| level | stored mean | generated mean | stored std | generated std |"
        + (" reference-free mean | reference-free std |" if free else ""),
        "| --- | --- | --- | --- | --- |" + (" --- | --- |" if free else ""),
        *[
            f"| {name} | {s['stored']['mean']} | {s['generated']['mean']} | {s['stored']['std']} | "
            f"{s['generated']['std']} |"
            + (f" {s['reference-free']['mean']} | {s['reference-free']['std']} |" if free else "")
            for name, s in card["colour_stats"].items()
        ],
        "",
        *_token_table(card["cdm_tokens"]),
        "## Files",
        "",
        "| file | sha256 | bytes |",
        "| --- | --- | --- |",
        *[f"| `{p.relative_to(root).as_posix()}` | {sha256(p)} | {p.stat().st_size} |" for p in files],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Every command × every class of bad input that applies to it (issue 12, item 4): one table.

A cell names a command line built from the fixtures below and what must happen: the exit status (2 for bad
input, 3 for "finished, some inputs failed"), no traceback, and a message of at most two lines that names
the argument (the file name or the option). Damaged inputs are real files: empty, random bytes, the first
half of a valid file, a folder where a file is expected, a file of another kind (a PNG given as a
checkpoint, a checkpoint given as an image). Unwritable outputs are paths under an existing *file* (the
tests run as root, so permission bits would not stop a write).

Bad input must be refused before any model work: the UNet and VQ forward passes (and building a random
stand-in model) raise :class:`ModelWorkStarted` (a ``BaseException``, so nothing in the package can swallow
it) in every cell.

Existing outputs (decided per command, docs/ARCHITECTURE.md "Exit codes and outputs"): a finished result of
``sample``, ``sample-cdm``, ``generate`` and ``superres`` is refused without ``--overwrite``; ``convert``
replaces an existing converted model but refuses a folder that is not one; ``eval constraint --json``
replaces its record; ``mil train`` resumes (cells below). ``prepare``, ``features``, ``train``,
``train-cdm`` and ``eval fid`` resume too; their resume is tested in their own folders.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from _fixtures import reset_accelerate_state, run_cli


class ModelWorkStarted(BaseException):
    """Raised by the UNet / VQ when a cell that expects a refusal starts model work."""


@dataclass(frozen=True)
class Files:
    """The fixture files of the table (all under one temporary folder)."""

    root: Path
    ckpt: Path
    config: Path
    grid: Path
    image: Path
    cdm: Path
    slides: Path
    features: Path
    labels: Path
    train_yaml: Path
    stats: Path
    mil_models: Path
    store: Path

    def bad(self, kind: str, suffix: str) -> Path:
        """``<kind><suffix>`` under root: kind in empty, random, truncated, nan (made on first use)."""
        path = self.root / f"{kind}{suffix}"
        if path.exists():
            return path
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "random":
            path.write_bytes(np.random.default_rng(0).bytes(4096))
        elif kind == "truncated":
            source = {
                ".ckpt": self.ckpt,
                ".npy": self.grid,
                ".png": self.image,
                ".tif": self.slides / "slide.tif",
                ".yaml": self.config,
                ".h5": next(self.features.glob("*.h5")),
                ".safetensors": self.cdm / "diffusion_pytorch_model.safetensors",
                ".csv": self.labels,
                ".jpg": self.image,
                ".npz": self.stats,
            }[suffix]
            data = source.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif kind == "nan":
            grid = np.load(self.grid)
            grid[0, 0, 0] = np.nan
            grid[1, 1, 1] = np.inf
            np.save(path, grid)
        else:
            raise ValueError(kind)
        return path

    @property
    def folder(self) -> Path:
        path = self.root / "a_folder"
        path.mkdir(exist_ok=True)
        return path

    @property
    def under_file(self) -> Path:
        """An existing plain file: ``under_file / "out.png"`` can never be created."""
        path = self.root / "plain_file.txt"
        path.write_text("not a folder\n")
        return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_checkpoint, small_config, data_dir, train_store) -> Files:
    from zoomldm.models.cdm import ConditioningDiT

    root = tmp_path_factory.mktemp("bad_inputs")
    grid = root / "grid.npy"
    np.save(grid, np.random.default_rng(0).standard_normal((32, 2, 2)).astype("float32"))
    with Image.open(data_dir / "brca_001.jpeg") as im:
        crop = im.crop((0, 0, 64, 64)).convert("RGB")
    image = root / "patch.png"
    crop.save(image)
    cdm = root / "cdm"
    ConditioningDiT(token_dim=32, hidden_size=32, depth=1, num_heads=2, num_magnifications=8).save_pretrained(
        cdm
    )
    slides = root / "slides"
    slides.mkdir()
    import tifffile

    tifffile.imwrite(
        slides / "slide.tif", np.asarray(crop.resize((512, 512))), tile=(256, 256), photometric="rgb"
    )
    features = root / "features"
    features.mkdir()
    rng = np.random.default_rng(1)
    for i in range(10):
        with h5py.File(features / f"s{i}.h5", "w") as h5:
            h5["features"] = rng.standard_normal((5, 8)).astype("float32")
            h5["coords"] = np.arange(10, dtype=np.int64).reshape(5, 2)
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(10)))
    train_yaml = root / "train.yaml"  # the compat small model on the session's real store (tests/conftest.py)
    train_yaml.write_text(
        f"output_dir: {root / 'run'}\nmodel:\n  config: {small_config}\n  init: official\n"
        f"  checkpoint: {small_checkpoint}\ndata:\n  store: {train_store}\n  num_workers: 0\n"
        "train:\n  max_steps: 1\n  mixed_precision: 'no'\nlogging:\n  trackers: []\n  sample_every: 0\n"
    )
    from zoomldm.evaluation.frechet import FeatureStatistics
    from zoomldm.features.mil import MILConfig, cross_validate

    stats = root / "stats.npz"
    FeatureStatistics.from_features(rng.standard_normal((10, 4))).save(stats)
    mil_models = root / "mil_models"
    cross_validate(features, labels, mil_models, MILConfig(folds=2, epochs=1), heatmaps=False, progress=False)
    return Files(
        root,
        small_checkpoint,
        small_config,
        grid,
        image,
        cdm,
        slides,
        features,
        labels,
        train_yaml,
        stats,
        mil_models,
        train_store,
    )


@pytest.fixture
def no_model_work(monkeypatch):
    from diffusers import UNet2DConditionModel, VQModel

    from zoomldm.pipeline import ZoomLDMPipeline

    def forbidden(*args, **kwargs):
        raise ModelWorkStarted("model work started before the input was validated")

    monkeypatch.setattr(UNet2DConditionModel, "forward", forbidden)
    monkeypatch.setattr(VQModel, "encode", forbidden)
    monkeypatch.setattr(VQModel, "decode", forbidden)
    # building a random stand-in model (demo, prepare --config without --checkpoint) is heavy work too
    monkeypatch.setattr(ZoomLDMPipeline, "from_config", classmethod(forbidden))


# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    id: str
    argv: Callable[[Files, Path], list[str]]  # (files, a fresh output folder) → argv
    names: tuple[str, ...]  # the message names one of these (file name or option)
    code: int = 2
    setup: Callable[[Files, Path], None] | None = field(default=None)


def model(f: Files) -> list[str]:
    return ["--checkpoint", str(f.ckpt), "--config", str(f.config)]


def sample(f: Files, out: Path, *extra: str) -> list[str]:
    base = ["sample", *model(f), "-m", "5x", "--n", "1", "--steps", "2", "--device", "cpu"]
    if "--ssl" not in extra and "--reference" not in extra:
        base += ["--ssl", str(f.grid)]
    if "--out" not in extra:
        base += ["--out", str(out / "samples")]
    return [*base, *extra]


FAST = ["--t0", "50", "--inner-steps", "1", "--post-t0", "50", "--device", "cpu", "--inversion-steps", "1"]


def generate(f: Files, out: Path, *extra: str) -> list[str]:
    base = ["generate", *model(f), "--guide", "10x", *FAST]
    if "--reference" not in extra and "--cdm" not in extra:
        base += ["--reference", str(f.grid)]
    if "--out" not in extra:
        base += ["--out", str(out / "large.png")]
    return [*base, *extra]


def superres(f: Files, out: Path, lr: str | None = None, *extra: str) -> list[str]:
    base = ["superres", lr or str(f.image), "--from", "10x", *model(f), *FAST]
    if "--out" not in extra:
        base += ["--out", str(out / "sr.png")]
    return [*base, *extra]


def convert_once(f: Files, dest: Path) -> None:
    """A converted model at ``dest`` (made in-process, as a user's earlier ``zoomldm convert``)."""
    from zoomldm.pipeline import ZoomLDMPipeline

    ZoomLDMPipeline.from_official(f.ckpt, config=f.config).save_pretrained(dest)


def convert(f: Files, out: Path, ckpt: str | None = None, *extra: str) -> list[str]:
    return ["convert", ckpt or str(f.ckpt), *(extra or (str(out / "model"),)), "--config", str(f.config)]


ENCODER = [
    "--encoder", "timm:vit_tiny_patch16_224", "--encoder-weights", "random", "--encoder-option", "embed_dim=32",
    "--encoder-option", "depth=1", "--encoder-option", "num_heads=2", "--encoder-option", "img_size=64",
]  # fmt: skip


def prepare(f: Files, out: Path, slides: str | None = None, *extra: str) -> list[str]:
    store = extra[0] if extra and not extra[0].startswith("-") else str(out / "store.zarr")
    extra = extra[1:] if extra and not extra[0].startswith("-") else extra
    return [
        "prepare", slides or str(f.slides), store, "--levels", "20x", "--mpp", "0.5", "--tissue-threshold", "0",
        *model(f), "--no-progress", "--device", "cpu", *ENCODER, *extra,
    ]  # fmt: skip


def features(f: Files, out: Path, slides: str | None = None, *extra: str) -> list[str]:
    dest = extra[0] if extra and not extra[0].startswith("-") else str(out / "features")
    extra = extra[1:] if extra and not extra[0].startswith("-") else extra
    return [
        "features", slides or str(f.slides), dest, "--mpp", "0.5", "--tissue-threshold", "0", *model(f),
        "--no-progress", "--device", "cpu", *ENCODER, *extra,
    ]  # fmt: skip


def train_cdm(f: Files, out: Path, *extra: str) -> list[str]:
    base = ["train-cdm", "--store", str(f.store), "--zoomldm", str(f.ckpt)]
    base += ["--zoomldm-config", str(f.config), "--no-progress", "--max-steps", "1", "--num-workers", "0"]
    if "--out" not in extra:
        base += ["--out", str(out / "cdm_run")]
    return [*base, *extra]


def sample_cdm(f: Files, out: Path, *extra: str) -> list[str]:
    base = ["sample-cdm", "--n", "1", "--steps", "2", "--device", "cpu", "-m", "5x"]
    if "--cdm" not in extra:
        base += ["--cdm", str(f.cdm)]
    if "--out" not in extra:
        base += ["--out", str(out / "tokens.safetensors")]
    return [*base, *extra]


def train_vae(f: Files, out: Path, image: str | None = None, dest: str | None = None) -> list[str]:
    return ["train-vae", image or str(f.image), "--out", dest or str(out / "vae"), "--max-steps", "1",
            "--batch-size", "1", "--checkpoint-every", "1", "--log-every", "1"]  # fmt: skip


def fid(f: Files, out: Path, *extra: str) -> list[str]:
    base = ["eval", "fid", "--real", str(f.slides), "-m", "5x", "--out", str(out)]
    if "--generated" not in extra and "--cdm" not in extra:
        base += ["--generated", str(f.slides)]
    return [*base, *extra]


def mil_train(f: Files, out: Path, feats: str | None = None, labels: str | None = None, *extra: str):
    dest = str(f.under_file / "mil") if "UNWRITABLE" in extra else str(out / "mil")
    extra = tuple(e for e in extra if e != "UNWRITABLE")
    return ["mil", "train", feats or str(f.features), labels or str(f.labels), dest, "--folds", "2",
            "--epochs", "1", "--no-heatmaps", *extra]  # fmt: skip


def mil_eval(f: Files, out: Path, models: str | None = None, labels: str | None = None, *extra: str):
    dest = str(f.under_file / "eval") if "UNWRITABLE" in extra else str(out / "eval")
    extra = tuple(e for e in extra if e != "UNWRITABLE")
    return ["mil", "eval", models or str(f.mil_models), str(f.features), labels or str(f.labels), dest,
            "--no-heatmaps", *extra]  # fmt: skip


DAMAGED = ("empty", "random", "truncated")


def _damaged_cells(prefix: str, suffix: str, build: Callable[[Files, Path, str], list[str]]) -> list[Cell]:
    """missing / empty / random bytes / truncated / a folder, for one file argument."""
    cells = [
        Cell(
            f"{prefix}-missing",
            lambda f, o: build(f, o, str(f.root / f"missing{suffix}")),
            (f"missing{suffix}",),
        )
    ]
    for kind in DAMAGED:
        cells.append(
            Cell(
                f"{prefix}-{kind}",
                lambda f, o, kind=kind: build(f, o, str(f.bad(kind, suffix))),
                (f"{kind}{suffix}",),
            )
        )
    cells.append(Cell(f"{prefix}-folder", lambda f, o: build(f, o, str(f.folder)), ("a_folder",)))
    return cells


CELLS: list[Cell] = [
    # -- convert CHECKPOINT OUT_DIR --------------------------------------------------------------------
    *_damaged_cells("convert-checkpoint", ".ckpt", lambda f, o, p: convert(f, o, p)),
    Cell("convert-png-as-checkpoint", lambda f, o: convert(f, o, str(f.image)), ("patch.png",)),
    *_damaged_cells(
        "convert-config", ".yaml", lambda f, o, p: ["convert", str(f.ckpt), str(o / "m"), "--config", p]
    ),
    Cell(
        "convert-out-under-a-file",
        lambda f, o: convert(f, o, None, str(f.under_file / "model")),
        ("plain_file.txt",),
    ),
    Cell(
        "convert-out-is-a-foreign-folder",
        lambda f, o: convert(f, o, None, str(o / "notes")),
        ("notes", "--overwrite"),
        setup=lambda f, o: ((o / "notes").mkdir(), (o / "notes" / "thesis.txt").write_text("keep me")),
    ),
    Cell(  # documented: an existing converted model is replaced, by renames only (fsutil.replace_dir)
        "convert-out-is-a-model-replaced",
        lambda f, o: convert(f, o, None, str(o / "model")),
        ("wrote",),
        code=0,
        setup=lambda f, o: convert_once(f, o / "model"),
    ),
    # -- sample ------------------------------------------------------------------------------------------
    *_damaged_cells("sample-ssl", ".npy", lambda f, o, p: sample(f, o, "--ssl", p)),
    Cell("sample-ssl-nan", lambda f, o: sample(f, o, "--ssl", str(f.bad("nan", ".npy"))), ("nan.npy",)),
    Cell("sample-ssl-png", lambda f, o: sample(f, o, "--ssl", str(f.image)), ("patch.png",)),
    *_damaged_cells("sample-reference", ".png", lambda f, o, p: sample(f, o, "--reference", p)),
    Cell(
        "sample-reference-checkpoint",
        lambda f, o: sample(f, o, "--reference", str(f.ckpt)),
        ("small_checkpoint.ckpt",),
    ),
    *_damaged_cells("sample-checkpoint", ".ckpt", lambda f, o, p: [*sample(f, o), "--checkpoint", p]),
    Cell("sample-checkpoint-png", lambda f, o: [*sample(f, o), "--checkpoint", str(f.image)], ("patch.png",)),
    Cell("sample-magnification-99x", lambda f, o: [*sample(f, o), "-m", "99x"], ("99x",)),
    Cell("sample-steps-negative", lambda f, o: [*sample(f, o), "--steps", "-1"], ("--steps", "steps")),
    Cell(
        "sample-guidance-nan", lambda f, o: [*sample(f, o), "--guidance", "nan"], ("--guidance", "guidance")
    ),
    Cell("sample-n-zero", lambda f, o: [*sample(f, o), "--n", "0"], ("--n",)),
    Cell("sample-batch-size-zero", lambda f, o: [*sample(f, o), "--batch-size", "0"], ("--batch-size",)),
    Cell(
        "sample-out-under-a-file",
        lambda f, o: sample(f, o, "--out", str(f.under_file / "s")),
        ("plain_file.txt",),
    ),
    Cell(
        "sample-out-holds-patches",
        lambda f, o: sample(f, o, "--out", str(o)),
        ("--overwrite",),
        setup=lambda f, o: (o / "patch_0000.png").write_bytes(f.image.read_bytes()),
    ),
    # -- demo ---------------------------------------------------------------------------------------------
    Cell(
        "demo-checkpoint-random",
        lambda f, o: ["demo", "--checkpoint", str(f.bad("random", ".ckpt")), "--out", str(o)],
        ("random.ckpt",),
    ),
    Cell(
        "demo-steps-negative",
        lambda f, o: ["demo", "--steps", "-1", "--out", str(o), "--device", "cpu"],
        ("--steps", "steps"),
    ),
    Cell(
        "demo-out-under-a-file",
        lambda f, o: ["demo", "--out", str(f.under_file / "d"), "--device", "cpu"],
        ("plain_file.txt",),
    ),
    # -- prepare SLIDES STORE ----------------------------------------------------------------------------
    Cell("prepare-slides-missing", lambda f, o: prepare(f, o, str(f.root / "no_slides")), ("no_slides",)),
    Cell("prepare-slides-is-a-file", lambda f, o: prepare(f, o, str(f.image)), ("patch.png",)),
    Cell("prepare-slides-empty-folder", lambda f, o: prepare(f, o, str(f.folder)), ("a_folder",)),
    *_damaged_cells("prepare-slides-csv", ".csv", lambda f, o, p: prepare(f, o, None, "--slides", p)),
    Cell("prepare-levels-99x", lambda f, o: [*prepare(f, o), "--levels", "99x"], ("99x", "--levels")),
    Cell(
        "prepare-threshold-nan",
        lambda f, o: [*prepare(f, o), "--tissue-threshold", "nan"],
        ("--tissue-threshold", "tissue_threshold"),
    ),
    Cell(
        "prepare-threshold-2",
        lambda f, o: [*prepare(f, o), "--tissue-threshold", "2"],
        ("--tissue-threshold", "tissue_threshold"),
    ),
    Cell("prepare-mpp-negative", lambda f, o: [*prepare(f, o), "--mpp", "-1"], ("--mpp",)),
    Cell("prepare-mpp-nan", lambda f, o: [*prepare(f, o), "--mpp", "nan"], ("--mpp",)),
    Cell(
        "prepare-batch-size-zero",
        lambda f, o: [*prepare(f, o), "--batch-size", "0"],
        ("--batch-size", "batch_size"),
    ),
    Cell("prepare-workers-zero", lambda f, o: [*prepare(f, o), "--workers", "0"], ("--workers", "workers")),
    Cell(
        "prepare-encoder-option",
        lambda f, o: [*prepare(f, o), "--encoder-option", "depth"],
        ("--encoder-option",),
    ),
    Cell(
        "prepare-checkpoint-random",
        lambda f, o: [*prepare(f, o), "--checkpoint", str(f.bad("random", ".ckpt"))],
        ("random.ckpt",),
    ),
    Cell("prepare-store-is-a-file", lambda f, o: prepare(f, o, None, str(f.image)), ("patch.png",)),
    Cell(
        "prepare-store-under-a-file",
        lambda f, o: prepare(f, o, None, str(f.under_file / "s.zarr")),
        ("plain_file.txt",),
    ),
    Cell(
        "prepare-damaged-slide",
        lambda f, o: prepare(f, o, str(o / "slides")),
        ("bad.tif",),
        code=3,
        setup=lambda f, o: (
            (o / "slides").mkdir(),
            (o / "slides" / "bad.tif").write_bytes(f.bad("random", ".tif").read_bytes()),
        ),
    ),
    # -- train-vae IMAGES… --out ---------------------------------------------------------------------------
    *_damaged_cells("train-vae-images", ".png", lambda f, o, p: train_vae(f, o, p)),
    Cell(
        "train-vae-checkpoint-as-image", lambda f, o: train_vae(f, o, str(f.ckpt)), ("small_checkpoint.ckpt",)
    ),
    Cell(
        "train-vae-config-random",
        lambda f, o: [*train_vae(f, o), "--config", str(f.bad("random", ".yaml"))],
        ("random.yaml",),
    ),
    Cell(
        "train-vae-crop-size-7",
        lambda f, o: [*train_vae(f, o), "--crop-size", "7"],
        ("--crop-size", "crop_size"),
    ),
    Cell("train-vae-lr-nan", lambda f, o: [*train_vae(f, o), "--lr", "nan"], ("--lr", "lr")),
    Cell(
        "train-vae-max-steps-negative",
        lambda f, o: [*train_vae(f, o), "--max-steps", "-1"],
        ("--max-steps", "max_steps"),
    ),
    Cell(
        "train-vae-holdout-2",
        lambda f, o: [*train_vae(f, o), "--holdout-fraction", "2"],
        ("--holdout-fraction", "holdout_fraction"),
    ),
    Cell(
        "train-vae-out-under-a-file",
        lambda f, o: train_vae(f, o, None, str(f.under_file / "vae")),
        ("plain_file.txt",),
    ),
    # -- train ------------------------------------------------------------------------------------------
    *_damaged_cells("train-config", ".yaml", lambda f, o, p: ["train", "--config", p, "--no-progress"]),
    Cell(
        "train-set-no-equals",
        lambda f, o: ["train", "--config", str(f.train_yaml), "--set", "optim.lr"],
        ("optim.lr",),
    ),
    Cell(
        "train-set-lr-nan",
        lambda f, o: ["train", "--config", str(f.train_yaml), "--set", "optim.lr=nan"],
        ("optim.lr",),
    ),
    Cell(
        "train-set-steps-negative",
        lambda f, o: ["train", "--config", str(f.train_yaml), "--set", "train.max_steps=-1"],
        ("train.max_steps", "max_steps"),
    ),
    Cell(
        "train-resume-missing",
        lambda f, o: ["train", "--config", str(f.train_yaml), "--resume", str(o / "no_ckpt")],
        ("no_ckpt",),
    ),
    Cell(
        "train-output-under-a-file",
        lambda f, o: ["train", "--config", str(f.train_yaml), "--set", f"output_dir={f.under_file / 'run'}"],
        ("plain_file.txt",),
    ),
    # -- train-cdm --------------------------------------------------------------------------------------
    Cell(
        "train-cdm-store-is-a-file", lambda f, o: [*train_cdm(f, o), "--store", str(f.image)], ("patch.png",)
    ),
    Cell(
        "train-cdm-store-missing",
        lambda f, o: [*train_cdm(f, o), "--store", str(o / "nowhere.zarr")],
        ("nowhere.zarr",),
    ),
    *_damaged_cells("train-cdm-zoomldm", ".ckpt", lambda f, o, p: [*train_cdm(f, o), "--zoomldm", p]),
    Cell("train-cdm-size-7", lambda f, o: [*train_cdm(f, o), "--size", "7"], ("--size",)),
    Cell("train-cdm-lr-nan", lambda f, o: [*train_cdm(f, o), "--lr", "nan"], ("--lr", "lr")),
    Cell(
        "train-cdm-max-steps-negative",
        lambda f, o: [*train_cdm(f, o), "--max-steps", "-1"],
        ("--max-steps", "max_steps"),
    ),
    Cell(
        "train-cdm-out-under-a-file",
        lambda f, o: train_cdm(f, o, "--out", str(f.under_file / "run")),
        ("plain_file.txt",),
    ),
    # -- train-vae (issue 16) ------------------------------------------------------------------------------
    *_damaged_cells(
        "train-vae-image",
        ".png",
        lambda f, o, p: ["train-vae", p, "--out", str(o / "vae"), "--max-steps", "1"],
    ),
    Cell(
        "train-vae-lr-nan",
        lambda f, o: ["train-vae", str(f.image), "--out", str(o / "vae"), "--lr", "nan"],
        ("--lr",),
    ),
    Cell(
        "train-vae-crop-size-30",
        lambda f, o: ["train-vae", str(f.image), "--out", str(o / "vae"), "--crop-size", "30"],
        ("--crop-size",),
    ),
    Cell(
        "train-vae-out-under-a-file",
        lambda f, o: ["train-vae", str(f.image), "--out", str(f.under_file / "run")],
        ("plain_file.txt",),
    ),
    # -- sample-cdm ---------------------------------------------------------------------------------------
    *_damaged_cells("sample-cdm-cdm", ".safetensors", lambda f, o, p: sample_cdm(f, o, "--cdm", p)),
    Cell(  # a ZoomLDM checkpoint where the CDM is expected
        "sample-cdm-zoomldm-checkpoint",
        lambda f, o: sample_cdm(f, o, "--cdm", str(f.ckpt)),
        ("small_checkpoint.ckpt",),
    ),
    Cell("sample-cdm-png", lambda f, o: sample_cdm(f, o, "--cdm", str(f.image)), ("patch.png",)),
    Cell("sample-cdm-magnification-99x", lambda f, o: [*sample_cdm(f, o), "-m", "99x"], ("99x",)),
    Cell(
        "sample-cdm-steps-negative", lambda f, o: [*sample_cdm(f, o), "--steps", "-1"], ("--steps", "steps")
    ),
    Cell("sample-cdm-n-zero", lambda f, o: [*sample_cdm(f, o), "--n", "0"], ("--n",)),
    Cell(
        "sample-cdm-out-under-a-file",
        lambda f, o: sample_cdm(f, o, "--out", str(f.under_file / "t.safetensors")),
        ("plain_file.txt",),
    ),
    Cell(
        "sample-cdm-out-exists",
        lambda f, o: sample_cdm(f, o, "--out", str(o / "t.safetensors")),
        ("t.safetensors", "--overwrite"),
        setup=lambda f, o: (o / "t.safetensors").write_bytes(b"earlier tokens"),
    ),
    # -- generate -----------------------------------------------------------------------------------------
    *_damaged_cells("generate-reference", ".npy", lambda f, o, p: generate(f, o, "--reference", p)),
    Cell(
        "generate-reference-nan",
        lambda f, o: generate(f, o, "--reference", str(f.bad("nan", ".npy"))),
        ("nan.npy",),
    ),
    Cell(
        "generate-reference-checkpoint",
        lambda f, o: generate(f, o, "--reference", str(f.ckpt)),
        ("small_checkpoint.ckpt",),
    ),
    *[
        Cell(
            f"generate-reference-{k}-png",
            lambda f, o, k=k: generate(f, o, "--reference", str(f.bad(k, ".png"))),
            (f"{k}.png",),
        )
        for k in DAMAGED
    ],
    Cell(
        "generate-cdm-zoomldm-checkpoint",
        lambda f, o: generate(f, o, "--cdm", str(f.ckpt)),
        ("small_checkpoint.ckpt",),
    ),
    Cell(
        "generate-cdm-random",
        lambda f, o: generate(f, o, "--cdm", str(f.bad("random", ".safetensors"))),
        ("random.safetensors",),
    ),
    Cell(
        "generate-checkpoint-random",
        lambda f, o: [*generate(f, o), "--checkpoint", str(f.bad("random", ".ckpt"))],
        ("random.ckpt",),
    ),
    Cell("generate-guide-99x", lambda f, o: [*generate(f, o), "--guide", "99x"], ("99x",)),
    Cell("generate-size-7", lambda f, o: [*generate(f, o), "--size", "7"], ("--size", "size")),
    Cell(
        "generate-tile-batch-zero",
        lambda f, o: [*generate(f, o), "--tile-batch", "0"],
        ("--tile-batch", "tile_batch"),
    ),
    Cell(
        "generate-guidance-nan",
        lambda f, o: [*generate(f, o), "--guidance-w", "nan"],
        ("--guidance-w", "guidance_w"),
    ),
    Cell("generate-t0-negative", lambda f, o: [*generate(f, o), "--t0", "-1"], ("--t0", "t0")),
    Cell(
        "generate-out-under-a-file",
        lambda f, o: generate(f, o, "--out", str(f.under_file / "l.png")),
        ("plain_file.txt",),
    ),
    Cell("generate-out-wrong-kind", lambda f, o: generate(f, o, "--out", str(o / "l.jpg")), ("l.jpg",)),
    Cell("generate-out-is-a-folder", lambda f, o: generate(f, o, "--out", str(f.folder)), ("a_folder",)),
    Cell(
        "generate-out-exists",
        lambda f, o: generate(f, o, "--out", str(o / "done.png")),
        ("done.png", "--overwrite"),
        setup=lambda f, o: (o / "done.png").write_bytes(f.image.read_bytes()),
    ),
    # -- superres LR -------------------------------------------------------------------------------------
    *_damaged_cells("superres-lr", ".png", lambda f, o, p: superres(f, o, p)),
    Cell("superres-lr-checkpoint", lambda f, o: superres(f, o, str(f.ckpt)), ("small_checkpoint.ckpt",)),
    Cell("superres-from-99x", lambda f, o: [*superres(f, o), "--from", "99x"], ("99x",)),
    Cell("superres-resize-negative", lambda f, o: [*superres(f, o), "--resize", "-1"], ("--resize",)),
    Cell(
        "superres-inversion-steps-negative",
        lambda f, o: [*superres(f, o), "--inversion-steps", "-1"],
        ("--inversion-steps", "steps"),
    ),
    Cell(
        "superres-out-exists",
        lambda f, o: superres(f, o, None, "--out", str(o / "sr.png")),
        ("sr.png", "--overwrite"),
        setup=lambda f, o: (o / "sr.png").write_bytes(f.image.read_bytes()),
    ),
    Cell(
        "superres-out-under-a-file",
        lambda f, o: superres(f, o, None, "--out", str(f.under_file / "sr.png")),
        ("plain_file.txt",),
    ),
    # -- features SLIDES OUT -----------------------------------------------------------------------------
    Cell("features-slides-missing", lambda f, o: features(f, o, str(f.root / "no_slides")), ("no_slides",)),
    Cell("features-magnifications-99x", lambda f, o: [*features(f, o), "--magnifications", "99x"], ("99x",)),
    Cell(
        "features-timestep-5000",
        lambda f, o: [*features(f, o), "--timestep", "5000"],
        ("--timestep", "timestep"),
    ),
    Cell("features-blocks-bogus", lambda f, o: [*features(f, o), "--blocks", "up99"], ("up99", "--blocks")),
    Cell(
        "features-fusion-bogus", lambda f, o: [*features(f, o), "--fusion", "median"], ("median", "--fusion")
    ),
    Cell(
        "features-batch-size-zero",
        lambda f, o: [*features(f, o), "--batch-size", "0"],
        ("--batch-size", "batch_size"),
    ),
    Cell(
        "features-threshold-nan",
        lambda f, o: [*features(f, o), "--tissue-threshold", "nan"],
        ("--tissue-threshold", "tissue_threshold"),
    ),
    Cell(
        "features-checkpoint-png",
        lambda f, o: [*features(f, o), "--checkpoint", str(f.image)],
        ("patch.png",),
    ),
    Cell(
        "features-checkpoint-random",
        lambda f, o: [*features(f, o), "--checkpoint", str(f.bad("random", ".ckpt"))],
        ("random.ckpt",),
    ),
    Cell(
        "features-out-under-a-file",
        lambda f, o: features(f, o, None, str(f.under_file / "feats")),
        ("plain_file.txt",),
    ),
    Cell(
        "features-damaged-slide",
        lambda f, o: features(f, o, str(o / "slides")),
        ("bad.tif",),
        code=3,
        setup=lambda f, o: (
            (o / "slides").mkdir(),
            (o / "slides" / "bad.tif").write_bytes(f.bad("random", ".tif").read_bytes()),
        ),
    ),
    # -- view OUTPUT ----------------------------------------------------------------------------------------
    *_damaged_cells("view", ".tif", lambda f, o, p: ["view", p, "--no-browser", "--port", "0"]),
    Cell(
        "view-checkpoint",
        lambda f, o: ["view", str(f.ckpt), "--no-browser", "--port", "0"],
        ("small_checkpoint.ckpt",),
    ),
    Cell(
        "view-port-out-of-range",
        lambda f, o: ["view", str(f.image), "--no-browser", "--port", "70000"],
        ("--port",),
    ),
    Cell("view-zoom-nan", lambda f, o: ["view", str(f.image), "--no-browser", "--zoom", "nan"], ("--zoom",)),
    # -- view IMAGE --generate (the zoom explorer) ----------------------------------------------------------
    Cell(
        "view-generate-without-from",
        lambda f, o: ["view", str(f.image), "--no-browser", "--port", "0", "--generate"],
        ("--from",),
    ),
    Cell(
        "view-from-without-generate",
        lambda f, o: ["view", str(f.image), "--no-browser", "--port", "0", "--from", "5x"],
        ("only with --generate",),
    ),
    Cell(
        "view-generate-unknown-level",
        lambda f, o: (
            ["view", str(f.image), "--no-browser", "--port", "0", "--generate", "--from", "7x"]
            + [*model(f), "--device", "cpu", "--cache", str(o / "cache")]
        ),
        ("--from",),
    ),
    Cell(
        "view-generate-to-not-finer",
        lambda f, o: (
            ["view", str(f.image), "--no-browser", "--port", "0", "--generate", "--from", "5x"]
            + ["--to", "2.5x", *model(f), "--device", "cpu", "--cache", str(o / "cache")]
        ),
        ("--to",),
    ),
    Cell(
        "view-generate-missing-image",
        lambda f, o: (
            ["view", str(o / "missing.png"), "--no-browser", "--port", "0", "--generate"]
            + ["--from", "5x", "--device", "cpu"]
        ),
        ("missing.png",),
    ),
    # -- eval fid -----------------------------------------------------------------------------------------
    Cell(
        "eval-fid-real-missing",
        lambda f, o: [
            "eval",
            "fid",
            "--real",
            str(o / "no_real"),
            "--generated",
            str(f.folder),
            "-m",
            "5x",
            "--out",
            str(o),
        ],
        ("no_real",),
    ),
    *_damaged_cells(
        "eval-fid-real-npz",
        ".npz",
        lambda f, o, p: [
            "eval",
            "fid",
            "--real",
            p,
            "--generated",
            str(f.slides),
            "-m",
            "5x",
            "--out",
            str(o),
        ],
    ),
    Cell("eval-fid-generated-is-a-file", lambda f, o: fid(f, o, "--generated", str(f.image)), ("patch.png",)),
    Cell(
        "eval-fid-guidance-nan",
        lambda f, o: fid(f, o, "--cdm", str(f.cdm), *model(f), "--guidance", "nan"),
        ("--guidance",),
    ),
    Cell(
        "eval-fid-generated-missing",
        lambda f, o: [
            "eval",
            "fid",
            "--real",
            str(f.slides),
            "--generated",
            str(o / "no_gen"),
            "-m",
            "5x",
            "--out",
            str(o),
        ],
        ("no_gen",),
    ),
    Cell(
        "eval-fid-magnification-99x",
        lambda f, o: [
            "eval",
            "fid",
            "--real",
            str(f.slides),
            "--generated",
            str(f.slides),
            "-m",
            "99x",
            "--out",
            str(o),
        ],
        ("99x",),
    ),
    Cell(
        "eval-fid-num-samples-zero",
        lambda f, o: [
            "eval",
            "fid",
            "--real",
            str(f.slides),
            "--cdm",
            str(f.cdm),
            *model(f)[:2],
            "--num-samples",
            "0",
            "-m",
            "5x",
            "--out",
            str(o),
        ],
        ("--num-samples",),
    ),
    Cell(
        "eval-fid-batch-size-zero",
        lambda f, o: [
            "eval",
            "fid",
            "--real",
            str(f.slides),
            "--generated",
            str(f.slides),
            "--batch-size",
            "0",
            "-m",
            "5x",
            "--out",
            str(o),
        ],
        ("--batch-size",),
    ),
    Cell(
        "eval-fid-extractor-bogus",
        lambda f, o: [
            "eval",
            "fid",
            "--real",
            str(f.slides),
            "--generated",
            str(f.slides),
            "--extractor",
            "bogus",
            "-m",
            "5x",
            "--out",
            str(o),
        ],
        ("bogus", "--extractor"),
    ),
    Cell(
        "eval-fid-out-under-a-file",
        lambda f, o: [
            "eval",
            "fid",
            "--real",
            str(f.slides),
            "--generated",
            str(f.slides),
            "-m",
            "5x",
            "--out",
            str(f.under_file / "fid"),
        ],
        ("plain_file.txt",),
    ),
    # -- eval constraint IMAGE GUIDE ------------------------------------------------------------------------
    *_damaged_cells("eval-constraint-image", ".png", lambda f, o, p: ["eval", "constraint", p, str(f.image)]),
    *_damaged_cells("eval-constraint-guide", ".jpg", lambda f, o, p: ["eval", "constraint", str(f.image), p]),
    Cell(
        "eval-constraint-checkpoint",
        lambda f, o: ["eval", "constraint", str(f.ckpt), str(f.image)],
        ("small_checkpoint.ckpt",),
    ),
    Cell(
        "eval-constraint-factor-zero",
        lambda f, o: ["eval", "constraint", str(f.image), str(f.image), "--factor", "0"],
        ("--factor",),
    ),
    Cell(
        "eval-constraint-factor-mismatch",
        lambda f, o: ["eval", "constraint", str(f.image), str(f.image), "--factor", "3"],
        ("--factor",),
    ),
    Cell(
        "eval-constraint-filter-bogus",
        lambda f, o: ["eval", "constraint", str(f.image), str(f.image), "--filter", "median"],
        ("--filter",),
    ),
    Cell(
        "eval-constraint-json-under-a-file",
        lambda f, o: [
            "eval",
            "constraint",
            str(f.image),
            str(f.image),
            "--json",
            str(f.under_file / "m.json"),
        ],
        ("plain_file.txt",),
    ),
    Cell(  # documented: the record of the same two images is replaced
        "eval-constraint-json-exists-replaced",
        lambda f, o: ["eval", "constraint", str(f.image), str(f.image), "--json", str(o / "m.json")],
        ("PSNR",),
        code=0,
        setup=lambda f, o: (o / "m.json").write_text("{}"),
    ),
    Cell(
        "eval-constraint-json-is-a-folder",
        lambda f, o: ["eval", "constraint", str(f.image), str(f.image), "--json", str(f.folder)],
        ("a_folder",),
    ),
    # -- eval embedding-fd A B ------------------------------------------------------------------------------
    *_damaged_cells("eval-embedding-fd", ".npy", lambda f, o, p: ["eval", "embedding-fd", p, str(f.grid)]),
    Cell(
        "eval-embedding-fd-nan",
        lambda f, o: ["eval", "embedding-fd", str(f.bad("nan", ".npy")), str(f.grid)],
        ("nan.npy",),
    ),
    Cell(
        "eval-embedding-fd-png",
        lambda f, o: ["eval", "embedding-fd", str(f.image), str(f.grid)],
        ("patch.png",),
    ),
    Cell(
        "eval-embedding-fd-checkpoint-as-pt",
        lambda f, o: ["eval", "embedding-fd", str(f.grid), str(f.ckpt.parent / "small_checkpoint.ckpt")],
        ("small_checkpoint.ckpt",),
    ),
    # -- mil train FEATURES LABELS OUT ---------------------------------------------------------------------
    Cell("mil-train-features-missing", lambda f, o: mil_train(f, o, str(o / "no_feats")), ("no_feats",)),
    Cell("mil-train-features-is-a-file", lambda f, o: mil_train(f, o, str(f.labels)), ("labels.csv",)),
    *_damaged_cells("mil-train-labels", ".csv", lambda f, o, p: mil_train(f, o, None, p)),
    Cell(
        "mil-train-damaged-h5",
        lambda f, o: mil_train(f, o, str(o / "feats")),
        ("s0.h5",),
        setup=lambda f, o: (
            (o / "feats").mkdir(),
            *[(o / "feats" / p.name).write_bytes(p.read_bytes()) for p in f.features.glob("*.h5")],
            (o / "feats" / "s0.h5").write_bytes(f.bad("truncated", ".h5").read_bytes()),
        ),
    ),
    Cell(
        "mil-train-folds-one", lambda f, o: mil_train(f, o, None, None, "--folds", "1"), ("--folds", "folds")
    ),
    Cell("mil-train-lr-nan", lambda f, o: mil_train(f, o, None, None, "--lr", "nan"), ("--lr", "lr")),
    Cell(
        "mil-train-epochs-negative",
        lambda f, o: mil_train(f, o, None, None, "--epochs", "-1"),
        ("--epochs", "epochs"),
    ),
    Cell(  # documented: an existing OUT resumes (finished folds are kept)
        "mil-train-out-exists-resumes",
        lambda f, o: mil_train(f, o),
        ("resumed finished folds",),
        code=0,
        setup=lambda f, o: shutil.copytree(f.mil_models, o / "mil"),
    ),
    Cell(
        "mil-train-out-under-a-file",
        lambda f, o: mil_train(f, o, None, None, "UNWRITABLE"),
        ("plain_file.txt",),
    ),
    # -- mil eval MODELS FEATURES LABELS OUT -------------------------------------------------------------
    Cell("mil-eval-models-missing", lambda f, o: mil_eval(f, o, str(o / "no_models")), ("no_models",)),
    Cell("mil-eval-models-is-a-file", lambda f, o: mil_eval(f, o, str(f.labels)), ("labels.csv",)),
    Cell("mil-eval-models-empty-folder", lambda f, o: mil_eval(f, o, str(f.folder)), ("a_folder",)),
    *_damaged_cells("mil-eval-labels", ".csv", lambda f, o, p: mil_eval(f, o, None, p)),
    Cell(
        "mil-eval-out-under-a-file",
        lambda f, o: mil_eval(f, o, None, None, "UNWRITABLE"),
        ("plain_file.txt",),
    ),
]


def _message(err: str) -> str:
    """The error text: from the ``error:`` line on, or typer's usage box (its text lines, frames removed)."""
    if "error:" in err:
        return err[err.index("error:") :].strip()
    lines = [re.sub(r"[│╭╮╰╯─]+", " ", line).strip() for line in err.splitlines()]
    return "\n".join(line for line in lines if line and not line.startswith(("Usage:", "Try ")))


@pytest.fixture
def fresh_accelerate():
    """``train`` / ``train-cdm`` build an Accelerator; accelerate keeps process-wide singletons."""
    yield
    reset_accelerate_state()


@pytest.mark.parametrize("cell", CELLS, ids=[cell.id for cell in CELLS])
def test_bad_input(
    cell: Cell, files: Files, tmp_path: Path, capsys, no_model_work, monkeypatch, fresh_accelerate
) -> None:
    monkeypatch.chdir(tmp_path)  # commands with default output folders write nothing into the repository
    # no network: a hub id fails at once instead of after retries (huggingface_hub reads the variable on import)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    out.mkdir()
    if cell.setup is not None:
        cell.setup(files, out)
    argv = cell.argv(files, out)
    code, stdout, err = run_cli(argv, capsys)
    text = stdout + err
    assert "Traceback" not in text, text
    assert code == cell.code, f"exit {code}, expected {cell.code}: {text}"
    message = _message(err) if cell.code == 2 else text
    if cell.code == 2:
        assert len(message.splitlines()) <= 2, message
    assert any(name in message for name in cell.names), f"message names none of {cell.names}: {message}"


def _command_paths() -> set[tuple[str, ...]]:
    """Every command of ``zoomldm`` (``eval fid``, ``mil train`` … for the groups)."""
    import typer

    from zoomldm.cli import app

    paths: set[tuple[str, ...]] = set()

    def walk(command, prefix: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            for name, sub in command.commands.items():
                walk(sub, (*prefix, name))
        else:
            paths.add(prefix)

    walk(typer.main.get_command(app), ())
    return paths


def test_the_table_covers_every_command(files: Files, tmp_path: Path) -> None:
    covered = {
        tuple(argv[:2]) if argv[0] in ("eval", "mil") else (argv[0],)
        for argv in (cell.argv(files, tmp_path) for cell in CELLS)
    }
    missing = _command_paths() - covered
    assert not missing, f"commands without bad-input cells: {sorted(missing)}"
    assert len(_command_paths()) >= 16

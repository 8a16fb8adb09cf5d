"""A model folder may ship its own Conditioning Diffusion Model (``<model>/cdm/``, as the embedded model
does): reference-free sampling then needs no ``--cdm`` — ``pipe(magnification=…)``, ``generate_large()``
without a reference, and ``zoomldm sample --unconditional`` use it; a model without one says so in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _fixtures import run_cli
from zoomldm import ZoomLDMPipeline
from zoomldm.errors import InputError
from zoomldm.io.images import read_png_metadata
from zoomldm.models.cdm import ConditioningDiT
from zoomldm.models.cdm_diffusion import sample_cdm


@pytest.fixture(scope="module")
def with_cdm(tmp_path_factory, small_checkpoint, small_config) -> Path:
    """The compat model in our format, with a small random CDM of its token width in ``cdm/``."""
    root = tmp_path_factory.mktemp("bundled")
    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    pipe.save_pretrained(root / "model")
    torch.manual_seed(0)
    cdm = ConditioningDiT(token_dim=pipe.config.context_dim, hidden_size=32, depth=1, num_heads=2)
    cdm.save_pretrained(root / "model" / "cdm")
    pipe.save_pretrained(root / "plain")  # the same model without a CDM
    return root


def test_the_models_own_cdm_conditions_reference_free_patches(with_cdm: Path):
    torch.set_num_threads(1)
    pipe = ZoomLDMPipeline.from_pretrained(with_cdm / "model")
    assert pipe.cdm_dir == with_cdm / "model" / "cdm"
    kw = dict(magnification="5x", num_images=2, num_inference_steps=2, seed=3, progress=False)
    out = pipe(cdm_steps=4, **kw)
    # the same as tokens sampled by hand from that CDM with the same seed, then given as context
    cdm = ConditioningDiT.from_pretrained(with_cdm / "model" / "cdm").eval()
    level = pipe.magnification("5x").index
    tokens = sample_cdm(cdm, level, batch_size=2, num_steps=4, generator=torch.Generator().manual_seed(3))
    by_hand = pipe(context=tokens, **kw)
    assert np.array_equal(out.images, by_hand.images)
    assert out.settings["conditions"].startswith("CDM ") and out.settings["cdm_steps"] == 4
    other = pipe(cdm_steps=4, **dict(kw, seed=4))
    assert not np.array_equal(out.images, other.images)  # the seed reaches the CDM's tokens


def test_a_model_without_a_cdm_says_what_to_give(with_cdm: Path):
    pipe = ZoomLDMPipeline.from_pretrained(with_cdm / "plain")
    assert pipe.cdm_dir is None
    with pytest.raises(InputError, match="ships no CDM") as err:
        pipe(magnification="5x", num_inference_steps=2, progress=False)
    assert "ssl=" in str(err.value) and "cdm=" in str(err.value)
    with pytest.raises(InputError, match="ships none"):
        pipe.generate_large(guide="10x", progress=False)


def test_generate_large_uses_the_models_own_cdm(with_cdm: Path):
    torch.set_num_threads(1)
    pipe = ZoomLDMPipeline.from_pretrained(with_cdm / "model")
    short = dict(
        guide="10x", inversion_steps=1, stride=500, inner_steps=1, no_postprocess=True, progress=False
    )
    own = pipe.generate_large(**short)
    named = pipe.generate_large(cdm=with_cdm / "model" / "cdm", **short)
    assert own.settings["reference"]["kind"] == "cdm"
    assert np.array_equal(own.image, named.image)


def test_sample_unconditional_without_cdm_uses_the_models_own(with_cdm: Path, tmp_path: Path, capsys):
    args = ["sample", "-m", "5x", "--unconditional", "--n", "2", "--steps", "2", "--cdm-steps", "4"]
    args += ["--device", "cpu"]
    out = tmp_path / "unc"
    code, _, err = run_cli([*args, "--checkpoint", str(with_cdm / "model"), "--out", str(out)], capsys)
    assert code == 0, err
    assert len(list(out.glob("patch_*.png"))) == 2
    assert "cdm" in read_png_metadata(out / "patch_0000.png")["conditions"]
    plain = [*args, "--checkpoint", str(with_cdm / "plain"), "--out", str(tmp_path / "no")]
    code, _, err = run_cli(plain, capsys)
    assert code == 2 and "--cdm" in err and "ships none" in err and len(err.strip().splitlines()) == 1


def test_save_pretrained_does_not_copy_the_cdm(with_cdm: Path, tmp_path: Path):
    """The CDM belongs to the Summarizer it was trained on: a re-saved (possibly retrained) model drops it."""
    pipe = ZoomLDMPipeline.from_pretrained(with_cdm / "model")
    pipe.save_pretrained(tmp_path / "copy")
    assert not (tmp_path / "copy" / "cdm").exists()
    shutil.rmtree(tmp_path / "copy")


def test_a_cdm_of_another_model_is_refused_in_one_line(with_cdm: Path):
    """The check of generate_large's reference-free guide (``models.cdm.check_cdm_fits``) guards patches too."""
    from zoomldm.errors import ConfigError

    pipe = ZoomLDMPipeline.from_pretrained(with_cdm / "plain")
    other = ConditioningDiT(token_dim=pipe.config.context_dim + 8, hidden_size=32, depth=1, num_heads=2)
    with pytest.raises(ConfigError, match=r"-d tokens; this model's context is") as err:
        pipe(magnification="5x", num_inference_steps=2, cdm=other, cdm_steps=2, progress=False)
    assert "\n" not in str(err.value)

"""``zoomldm train-cdm``: a tiny DiT on the compat Summarizer's tokens of a real prepared store.

The store is the session's ``train_store`` (tests/conftest.py, shared with tests/train): made by
``prepare_dataset`` from a 1024² crop of brca_001.jpeg (16 samples at 20x, 4 at 10x, 1 at 5x) with a
random 32-d ViT encoder (the compat Summarizer's input width); the Summarizer is the compat small
checkpoint's (64-d tokens, 8 levels). Training runs use a DiT of depth 2, hidden 64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _fixtures import one_thread, reset_accelerate_state
from zoomldm.errors import ConfigError, ZoomLDMError
from zoomldm.models.cdm import ConditioningDiT, load_cdm
from zoomldm.train.cdm import CDMTrainConfig, CDMTrainer, list_cdm_checkpoints

TINY = {"depth": 2, "hidden_size": 64, "num_heads": 4}


@pytest.fixture(autouse=True)
def _one_thread_fresh_accelerate():
    """One intra-op thread (two thrash on the shared 2-core machine); reset accelerate's singletons."""
    with one_thread():
        yield
    reset_accelerate_state()


def _config(store: Path, out: Path, checkpoint: Path, compat: Path, **kw) -> CDMTrainConfig:
    base = dict(
        store=str(store), zoomldm=str(checkpoint), zoomldm_config=str(compat), output_dir=str(out),
        model="DiT-S", model_overrides=TINY, batch_size=8, lr=1e-3, ema_decay=0.9, max_steps=6,
        checkpoint_every=3, log_every=1, num_workers=0, seed=3,
    )  # fmt: skip
    return CDMTrainConfig(**{**base, **kw})


def test_train_cdm_checkpoints_and_exact_resume(
    train_store, small_checkpoint, small_config, tmp_path
) -> None:
    lines: list[str] = []
    straight = CDMTrainer(
        _config(train_store, tmp_path / "a", small_checkpoint, small_config), log=lines.append, progress=False
    ).fit()
    assert straight.step == 6 and len(straight.losses) == 6 and all(np.isfinite(straight.losses))
    assert [p.name for p in list_cdm_checkpoints(tmp_path / "a")] == ["step-00000003", "step-00000006"]
    assert any("DiT-S" in line and "20x 16" in line for line in lines)

    # the checkpoint's cdm/ is the EMA model in our format, sized to the Summarizer (64-d tokens, 8 levels)
    final = tmp_path / "a" / "checkpoints" / "step-00000006"
    ema, info = load_cdm(final)
    assert info["source"] == "ours" and ema.config.token_dim == 64 and ema.config.num_magnifications == 8
    assert ema.config.depth == 2 and ema.config.hidden_size == 64
    live = load_file(str(final / "training_state" / "model.safetensors"))
    assert not torch.equal(live["x_embedder.weight"], ema.x_embedder.weight)  # EMA ≠ live weights

    # interrupted after 3 steps (max_steps 3), then the same command with max_steps 6: bit-identical
    CDMTrainer(
        _config(train_store, tmp_path / "b", small_checkpoint, small_config, max_steps=3), progress=False
    ).fit()
    resumed = CDMTrainer(
        _config(train_store, tmp_path / "b", small_checkpoint, small_config), progress=False
    ).fit()
    assert resumed.start_step == 3 and resumed.step == 6
    np.testing.assert_array_equal(np.array(resumed.losses), np.array(straight.losses[3:]))
    other = tmp_path / "b" / "checkpoints" / "step-00000006"
    for name in ("cdm/diffusion_pytorch_model.safetensors", "training_state/model.safetensors"):
        a, b = load_file(str(final / name)), load_file(str(other / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # and nothing is left to do at max_steps
    again = CDMTrainer(
        _config(train_store, tmp_path / "b", small_checkpoint, small_config), progress=False
    ).fit()
    assert again.step == 6 and again.losses == []


def test_cdm_ema_follows_the_authors_update(train_store, small_checkpoint, small_config, tmp_path) -> None:
    # one step from the initialisation: ema = d·init + (1 − d)·live (no warm-up, as update_ema)
    trainer = CDMTrainer(
        _config(train_store, tmp_path, small_checkpoint, small_config, max_steps=1, checkpoint_every=1),
        progress=False,
    )
    trainer._setup()
    init = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer._loop()
    trainer.accelerator.end_training()
    live = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    for key in ("x_embedder.weight", "blocks.1.attn.qkv.weight", "final_layer.linear.weight"):
        expected = 0.9 * init[key] + 0.1 * live[key]
        torch.testing.assert_close(trainer.ema.state_dict()[key], expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(trainer.ema.pos_embed, init["pos_embed"])  # the fixed positions never move


def test_train_cdm_cli_and_config_errors(
    train_store, small_checkpoint, small_config, data_dir, tmp_path, capsys
) -> None:
    from zoomldm.cli import main

    argv = [
        "train-cdm", "--store", str(train_store), "--zoomldm", str(small_checkpoint), "--zoomldm-config", str(small_config),
        "--out", str(tmp_path / "run"), "--size", "2,64,4", "--batch-size", "4", "--max-steps", "2",
        "--checkpoint-every", "2", "--num-workers", "0", "--no-progress",
    ]  # fmt: skip
    try:
        main(argv)
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    assert "done: step 2" in capsys.readouterr().out
    assert isinstance(
        load_cdm(tmp_path / "run" / "checkpoints" / "step-00000002" / "cdm")[0], ConditioningDiT
    )

    # sample tokens with the trained CDM and feed them straight to the UNet (no Summarizer)
    tokens_file = tmp_path / "tokens.safetensors"
    try:
        main(["sample-cdm", "--cdm", str(tmp_path / "run" / "checkpoints" / "step-00000002"), "-m", "10x",
              "--n", "2", "--steps", "4", "--device", "cpu", "--out", str(tokens_file)])  # fmt: skip
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    tokens = load_file(str(tokens_file))["tokens"]
    assert tokens.shape == (2, 65, 64) and torch.isfinite(tokens).all()
    from zoomldm.pipeline import ZoomLDMPipeline

    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    patches = pipe(context=tokens, magnification="10x", num_images=2, num_inference_steps=2, progress=False)
    assert patches.images.shape[0] == 2 and patches.images.dtype == np.uint8

    # the authors' CDM-FID protocol from the command line: generate (resumably, PNG) then compare
    real = tmp_path / "real"
    real.mkdir()
    with Image.open(data_dir / "brca_001.jpeg") as image:
        for i in range(4):
            image.crop((256 * i, 0, 256 * i + 256, 256)).convert("RGB").save(real / f"{i}.png")
    fid_argv = [
        "eval", "fid", "--real", str(real), "--cdm", str(tmp_path / "run" / "checkpoints" / "step-00000002"),
        "--checkpoint", str(small_checkpoint), "--config", str(small_config), "-m", "10x", "--num-samples", "4",
        "--sample-batch-size", "2", "--steps", "2", "--cdm-steps", "3", "--extractor", "timm:test_vit",
        "--encoder-weights", "random", "--device", "cpu", "--out", str(tmp_path / "fid"), "--seed", "5",
    ]  # fmt: skip
    for attempt in range(2):
        try:
            main(fid_argv)
        except SystemExit as exit_:
            assert exit_.code in (0, None)
        samples = sorted((tmp_path / "fid" / "10x").glob("*.png"))
        assert len(samples) == 4
        if attempt == 0:
            first = np.asarray(Image.open(samples[3]))
            samples[3].unlink()  # a crash before the last sample: the rerun makes exactly that image again
    np.testing.assert_array_equal(np.asarray(Image.open(samples[3])), first)
    assert "FID 10x:" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_:
        main([("2x64" if a == "2,64,4" else a) for a in argv])
    assert exit_.value.code == 2 and "--size must be DEPTH,HIDDEN,HEADS" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--model"):
        _config(train_store, tmp_path, small_checkpoint, small_config, model="DiT-Q").validate()
    with pytest.raises(ConfigError, match="not divisible"):
        _config(train_store, tmp_path, small_checkpoint, small_config, batch_size=6).validate(world_size=4)
    with pytest.raises(ZoomLDMError, match="not a complete CDM checkpoint"):
        CDMTrainer(
            _config(train_store, tmp_path / "x", small_checkpoint, small_config, resume=str(tmp_path)),
            progress=False,
        ).fit()

"""Bad configs fail early with one clear line: unknown keys, wrong types, a missing store, a model whose
magnification levels or SSL width disagree with the store. The shipped configs are valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zoomldm.errors import ConfigError, ZoomLDMError
from zoomldm.train.config import TrainConfig
from zoomldm.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def _minimal(store="x.zarr", **extra):
    return {"data": {"store": store}, "model": {"config": "tiny"}, **extra}


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(_minimal(optim={"lrr": 1e-4}))
    msg = str(err.value)
    assert "unknown key 'optim.lrr'" in msg and "valid keys of optim: lr, scale_lr, betas" in msg
    with pytest.raises(ConfigError, match="unknown key 'trian'; valid keys: output_dir, seed, model"):
        TrainConfig.from_dict({**_minimal(), "trian": {}})


def test_wrong_types_and_values_are_named():
    with pytest.raises(ConfigError, match="data.batch_size: expected an integer, got 'big'"):
        TrainConfig.from_dict(_minimal(data={"store": "x", "batch_size": "big"}))
    with pytest.raises(ConfigError, match="train.mixed_precision: 'fp8' is not one of no, fp16, bf16"):
        TrainConfig.from_dict(_minimal(train={"mixed_precision": "fp8"}))
    with pytest.raises(ConfigError, match="model.checkpoint: model.init: official needs a checkpoint"):
        TrainConfig.from_dict(_minimal(model={"init": "official"}))
    with pytest.raises(ConfigError, match="data.store: give the store"):
        TrainConfig.from_dict({"model": {"config": "tiny"}})


def test_yaml_numbers_overrides_and_levels_keep_their_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_minimal(optim={"lr": "1e-4"})))  # PyYAML reads 1e-4 as a string
    cfg = TrainConfig.from_yaml(
        path, ["data.levels=[0, '2.5x']", "train.max_steps=7", "optim.betas=[0.9,0.99]"]
    )
    assert cfg.optim.lr == 1e-4 and cfg.train.max_steps == 7 and cfg.optim.betas == [0.9, 0.99]
    assert cfg.data.levels == [0, "2.5x"]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        TrainConfig.from_yaml(path, ["optim.lr"])


def test_shipped_configs_are_valid():
    brca = TrainConfig.from_yaml(REPO / "configs" / "train_brca.yaml")
    # the authors' settings (SPEC §2.4-2.5)
    assert (brca.optim.lr, brca.optim.weight_decay, brca.optim.warmup_steps) == (2e-5, 0.01, 1000)
    assert brca.optim.betas == [0.9, 0.999] and brca.optim.eps == 1e-8 and brca.optim.warmup_start == 1e-6
    assert brca.train.p_uncond == 0.1 and brca.ema.decay == 0.9999 and brca.seed == 23
    assert brca.model.config == "brca"
    tiny = TrainConfig.from_yaml(REPO / "configs" / "train_tiny.yaml")
    assert tiny.model.config == "tiny"


def test_missing_store_fails_before_loading_weights(make_config, tmp_path):
    cfg = make_config(overrides=[f"data.store={tmp_path / 'nowhere.zarr'}"])
    with pytest.raises(ConfigError, match="data.store: dataset store not found: .*nowhere.zarr"):
        Trainer(cfg).fit()


def test_magnification_count_that_disagrees_with_the_store(make_config, small_config, tmp_path):
    official = yaml.safe_load(Path(small_config).read_text())
    official["model"]["params"]["cond_stage_config"]["params"]["mag_levels"] = 4  # a NAIP-style model
    four = tmp_path / "four_levels.yaml"
    four.write_text(yaml.safe_dump(official))
    cfg = make_config(overrides=[f"model.config={four}", "model.init=scratch", "model.checkpoint=null"])
    with pytest.raises(ConfigError) as err:
        Trainer(cfg).fit()
    msg = str(err.value)
    assert msg.startswith("magnification levels disagree") and "20x, 10x, 5x" in msg
    assert "mag_levels 4" in msg and "use a model config with mag_levels 8" in msg


def test_ssl_width_that_disagrees_with_the_store(make_config):
    cfg = make_config(
        overrides=["model.config=tiny", "model.init=scratch", "model.checkpoint=null"]
    )  # tiny takes 64-d grids
    with pytest.raises(ConfigError, match="the store's embeddings are 32-d .* takes 64"):
        Trainer(cfg).fit()


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from zoomldm.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_minimal(optim={"lrr": 1})))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad.yaml: unknown key 'optim.lrr'") and "\n" not in err
    assert issubclass(ConfigError, ZoomLDMError)


def test_starting_over_into_a_run_with_checkpoints_is_refused(make_config, tmp_path):
    old = tmp_path / "run" / "checkpoints" / "step-00000500"
    (old / "training_state").mkdir(parents=True)
    (old / "zoomldm.json").write_text("{}")
    (old / "training_state" / "progress.json").write_text('{"step": 500}')
    cfg = make_config(tmp_path / "run", ["checkpoint.resume=never"])
    with pytest.raises(ConfigError, match="already holds checkpoints up to step 500: resume them"):
        Trainer(cfg).fit()

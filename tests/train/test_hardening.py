"""Training hardening: config messages that name their origin (``--set KEY``, YAML line and column), the
shipped configs' claims (defaults, the launch line), a checkpoint without ``model.init`` refused rather
than silently trained from scratch, throughput without the sample grid's time, and outputs that honour
the umask (checkpoint folders, safetensors files, MIL fold models)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import stat
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from zoomldm.errors import ConfigError
from zoomldm.train.config import TrainConfig
from zoomldm.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


# -- messages --------------------------------------------------------------------------------------------
def test_unknown_set_key_is_blamed_on_set_not_on_the_file(tmp_path):
    path = _write(tmp_path, "model: {config: tiny}\ndata: {store: x.zarr}\n")
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_yaml(path, ["optim.lrr=1e-4"])
    msg = str(err.value)
    assert msg.startswith("--set optim.lrr: unknown key 'optim.lrr'") and "valid keys of optim: lr" in msg
    assert "run.yaml" not in msg
    with pytest.raises(ConfigError, match=r"^--set trian.steps: unknown key 'trian'; valid keys: output_dir"):
        TrainConfig.from_yaml(path, ["trian.steps=3"])
    # a wrong value given with --set is blamed on --set too; the file's own mistakes on the file
    with pytest.raises(ConfigError, match=r"^--set optim.lr: expected a number, got 'fast'"):
        TrainConfig.from_yaml(path, ["optim.lr=fast"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {config: tiny}\ndata: {store: x.zarr, batch_size: big}\n")
    with pytest.raises(ConfigError, match=r"^bad.yaml: data.batch_size: expected an integer"):
        TrainConfig.from_yaml(bad, ["optim.lr=1e-4"])
    # free-form mappings accept any sub-key
    cfg = TrainConfig.from_yaml(path, ["data.storage_options.anon=true"])
    assert cfg.data.storage_options == {"anon": True}


def test_malformed_yaml_reports_line_and_column(tmp_path):
    path = _write(tmp_path, "model:\n  config: tiny\ndata:\n  store: [x.zarr\n  batch_size: 4\n")
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_yaml(path)
    assert re.match(r"run.yaml line \d+, column \d+: ", str(err.value)), str(err.value)
    path = _write(tmp_path, "model:\n  config: tiny\n bad: 1\n")
    with pytest.raises(ConfigError, match=r"^run.yaml line 3, column 2: "):
        TrainConfig.from_yaml(path)


# -- the shipped configs ----------------------------------------------------------------------------------
def _leaves(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _default(key: str):
    node = TrainConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node


def _key_lines(text: str) -> dict[str, str]:
    """Dotted key → its line (sections by indentation; the YAML of the configs is block style)."""
    lines, stack = {}, []
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z_]\w*):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack = stack[:depth] + [match.group(2)]
        lines[".".join(stack)] = line
    return lines


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_configs_show_the_defaults_they_claim(name):
    text = (REPO / "configs" / name).read_text()
    data = yaml.safe_load(text)
    TrainConfig.from_dict(data, source=name)  # valid
    lines = _key_lines(text)
    claims_every_key = "every key is listed" in text.lower()
    for key, value in _leaves(data):
        default = _default(key)
        if value == default:
            continue
        # a value that is not the default says so, with the real default, on its line
        comment = lines[key].split("#", 1)[1] if "#" in lines[key] else ""
        shown = re.search(r"default: ([^;\s]+)", comment)
        if claims_every_key:
            assert shown is not None, (
                f"{name}: {key} is {value!r}, not the default {default!r}, and does not say so"
            )
            assert yaml.safe_load(shown.group(1)) == default, f"{name}: {key}: the default is {default!r}"
    if claims_every_key:  # and every key is there
        for key, _ in _leaves(TrainConfig().to_dict()):
            assert any(k == key or key.startswith(k + ".") for k in lines), f"{name}: {key} is not listed"


def test_launch_lines_name_a_runnable_module():
    for path in (REPO / "configs").glob("*.yaml"):
        for module in re.findall(r"\s-m\s+([\w.]+)", path.read_text()):
            spec = importlib.util.find_spec(module)
            assert spec is not None, f"{path.name}: no module {module}"
            if spec.submodule_search_locations is not None:  # a package runs its __main__
                assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{path.name}: -m {module}"


def test_a_checkpoint_without_init_is_refused_not_trained_from_scratch(tmp_path):
    data = yaml.safe_load((REPO / "configs" / "train_brca.yaml").read_text())
    del data["model"]["init"]  # a copy that drops the key: the default would be scratch
    with pytest.raises(ConfigError, match="model.init: is scratch .* model.checkpoint is set"):
        TrainConfig.from_dict(data, source="copy.yaml")
    data["model"]["checkpoint"] = None
    assert TrainConfig.from_dict(data).model.init == "scratch"  # scratch without a checkpoint is fine


# -- throughput ------------------------------------------------------------------------------------------
def test_throughput_leaves_out_the_sample_grid(make_config, tmp_path, monkeypatch):
    from zoomldm.train import monitor

    clock = {"offset": 0.0}
    real = monitor.time.perf_counter
    monkeypatch.setattr(monitor.time, "perf_counter", lambda: real() + clock["offset"])

    def slow_grid(self):  # a sample grid that takes 1000 s of (simulated) wall time
        clock["offset"] += 1000.0

    monkeypatch.setattr(Trainer, "_log_samples", slow_grid)
    cfg = make_config(tmp_path / "run", ["train.max_steps=3", "logging.every=1", "logging.sample_every=1"])
    lines: list[str] = []
    Trainer(cfg, progress=False, log=lines.append).fit()
    rates = [float(m) for m in re.findall(r"([\d.]+) samples/s", "\n".join(lines))]
    assert len(rates) == 3, lines
    # steps 2 and 3 follow a grid; with its 1000 s counted they would show ~0.001 samples/s
    assert min(rates) > 0.05, lines


# -- permissions -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize(("mask", "directory", "file"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_replace_dir_and_mil_models_honour_the_umask(tmp_path, mask, directory, file):
    from safetensors.torch import save_file

    from zoomldm.features.abmil import ABMILConfig, GatedABMIL, save_abmil
    from zoomldm.fsutil import replace_dir

    with _umask(mask):
        staging = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700
        (staging / "unet").mkdir()
        save_file({"w": torch.zeros(2)}, str(staging / "unet" / "model.safetensors"))  # 0600
        (staging / "zoomldm.json").write_text("{}")
        target = replace_dir(staging, tmp_path / "model")
        assert _modes(target) == {("d", directory), ("f", file)}
        replace_dir(Path(tempfile.mkdtemp(dir=tmp_path)), target)  # replacing an existing one
        assert _modes(target) == {("d", directory)}
        model = save_abmil(GatedABMIL(ABMILConfig(8, 2)), tmp_path / "fold_0.safetensors", ["a", "b"])
        assert stat.S_IMODE(model.stat().st_mode) == file


def test_training_checkpoints_are_readable_under_umask_022(make_config, tmp_path):
    with _umask(0o022):
        result = Trainer(make_config(tmp_path / "run", ["train.max_steps=1"]), progress=False).fit()
    checkpoint = result.checkpoints[-1]
    modes = _modes(checkpoint)
    assert {m for kind, m in modes if kind == "d"} == {0o755}
    assert {m for kind, m in modes if kind == "f"} == {0o644}
    assert any(p.suffix == ".safetensors" for p in checkpoint.rglob("*"))


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_snr_gamma_must_be_a_positive_number(tmp_path, value):
    path = _write(tmp_path, "model: {config: tiny}\ndata: {store: x.zarr}\n")
    with pytest.raises(ConfigError, match=r"train.snr_gamma"):
        TrainConfig.from_yaml(path, [f"train.snr_gamma={value}"]).validate()
    assert TrainConfig.from_yaml(path, ["train.snr_gamma=5"]).train.snr_gamma == 5

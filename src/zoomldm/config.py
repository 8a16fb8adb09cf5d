"""Model configuration: presets and the authors' yaml format.

A :class:`ZoomLDMConfig` holds everything needed to build the three networks and the noise schedule:
a diffusers ``UNet2DConditionModel`` config, a diffusers ``VQModel`` config, the Summarizer config and
the schedule constants. Presets are written in the authors' yaml layout (``configs/zoomldm_brca.yaml``,
SPEC §2) and go through the same converter as a user's yaml, so a preset and the published yaml can
never disagree. The UNet and VQ configs come from diffusers' own converters
(``create_unet_diffusers_config_from_ldm`` / ``create_vae_diffusers_config_from_ldm``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .scales import Scales, scales_for


def _official_yaml(mag_levels: int, *, small: bool = False, input_channels: int = 1024) -> dict[str, Any]:
    """The authors' model yaml (``configs/zoomldm_{brca,naip}.yaml``) as a dict; ``small`` = the test size."""
    unet = dict(
        image_size=64,
        in_channels=3,
        out_channels=3,
        model_channels=192,
        attention_resolutions=[8, 4, 2],
        num_res_blocks=2,
        channel_mult=[1, 2, 3, 5],
        num_heads=1,
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=512,
        use_checkpoint=True,
        use_fp16=True,
    )
    ddconfig = dict(
        double_z=False,
        z_channels=3,
        resolution=256,
        in_channels=3,
        out_ch=3,
        ch=128,
        ch_mult=[1, 2, 4],
        num_res_blocks=2,
        attn_resolutions=[],
        dropout=0.0,
    )
    cond = dict(
        input_channels=input_channels,
        hidden_channels=512,
        output_channels=512,
        vit_mlp_dim=2048,
        num_layers=12,
        num_heads=8,
        p_uncond=0.1,
        mag_levels=mag_levels,
    )
    n_embed = 8192
    if small:  # same block structure, small widths (like ../shared/compat/small_config.yaml)
        unet.update(
            model_channels=32, channel_mult=[1, 2, 1, 1], num_res_blocks=1, context_dim=64, use_fp16=False
        )
        ddconfig.update(ch=32, ch_mult=[1, 2, 1])
        cond.update(hidden_channels=64, output_channels=64, vit_mlp_dim=128, num_layers=2, num_heads=4)
        n_embed = 64
    return {
        "model": {
            "base_learning_rate": 2.0e-05,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.0195,
                "timesteps": 1000,
                "image_size": unet["image_size"],
                "channels": 3,
                "cond_stage_trainable": True,
                "conditioning_key": "crossattn",
                "use_ema": True,
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": unet,
                },
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.VQModelInterface",
                    "params": {"embed_dim": 3, "n_embed": n_embed, "ddconfig": ddconfig},
                },
                "cond_stage_config": {
                    "target": "ldm.modules.encoders.modules.EmbeddingViT2_5",
                    "params": cond,
                },
            },
        }
    }


#: preset name -> (domain, official-format yaml dict). ``tiny`` is a randomly initialisable model of
#: the published architecture at test size (used by the offline demo and the tests).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "brca": ("pathology", _official_yaml(8)),
    "naip": ("satellite", _official_yaml(4)),
    "tiny": ("pathology", _official_yaml(8, small=True, input_channels=64)),
    "tiny-naip": ("satellite", _official_yaml(4, small=True, input_channels=64)),
}


@dataclass
class ZoomLDMConfig:
    """Everything needed to build a ZoomLDM model (serialisable to JSON)."""

    domain: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    summarizer: dict[str, Any]
    schedule: dict[str, Any] = field(
        default_factory=lambda: {"beta_start": 0.0015, "beta_end": 0.0195, "num_train_timesteps": 1000}
    )
    latent_size: int = 64
    p_uncond: float = 0.1
    preset: str | None = None

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str) -> ZoomLDMConfig:
        try:
            domain, official = PRESETS[name]
        except KeyError:
            raise ConfigError(
                f"unknown preset {name!r}; expected one of {', '.join(PRESETS)} or a yaml file"
            ) from None
        cfg = cls.from_official_yaml(copy.deepcopy(official), domain=domain)
        cfg.preset = name
        return cfg

    @classmethod
    def resolve(cls, value: str | Path | dict | ZoomLDMConfig) -> ZoomLDMConfig:
        """A preset name, an official yaml path/dict, or our JSON config file."""
        if isinstance(value, ZoomLDMConfig):
            return value
        if isinstance(value, dict):
            return cls.from_official_yaml(value)
        text = str(value)
        if text in PRESETS:
            return cls.from_preset(text)
        path = Path(text)
        if not path.exists():
            raise ConfigError(
                f"config {text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file"
            )
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        return cls.from_official_yaml(path)

    @classmethod
    def from_official_yaml(
        cls, source: str | Path | dict[str, Any], domain: str | None = None
    ) -> ZoomLDMConfig:
        """Convert the authors' yaml (``model.params.{unet,first_stage,cond_stage}_config``)."""
        from diffusers.loaders.single_file_utils import (
            create_unet_diffusers_config_from_ldm,
            create_vae_diffusers_config_from_ldm,
        )

        where = "" if isinstance(source, dict) else f"{source}: "  # error messages name the file
        official = source
        if not isinstance(source, dict):
            try:
                official = yaml.safe_load(Path(source).read_text())
            except (UnicodeDecodeError, yaml.YAMLError) as err:
                raise ConfigError(
                    f"{where}not a YAML file ({type(err).__name__}); pass the authors' yaml of this "
                    "checkpoint or a preset (brca, naip)"
                ) from None
        try:
            params = official["model"]["params"]
            unet_p = params["unet_config"]["params"]
            fs_p = params["first_stage_config"]["params"]
            cs_p = params["cond_stage_config"]["params"]
        except (KeyError, TypeError) as err:
            raise ConfigError(
                f"{where}not a ZoomLDM yaml: missing model.params.{{unet,first_stage,cond_stage}}_config ({err})"
            ) from None
        target = params["cond_stage_config"].get("target", "")
        if target and not target.endswith("EmbeddingViT2_5"):
            raise ConfigError(
                f"cond_stage_config target {target!r} is not the ZoomLDM summarizer (EmbeddingViT2_5)"
            )
        dd = fs_p["ddconfig"]
        # diffusers' config helpers read yaml-like dicts; the image size is the VQ's pixel resolution
        image_size = int(unet_p.get("image_size", params.get("image_size", 64))) * 2 ** (
            len(dd["ch_mult"]) - 1
        )
        # image_size is left to diffusers (deprecated argument); the sizes are set explicitly below
        unet = create_unet_diffusers_config_from_ldm(official, {})
        unet["sample_size"] = int(unet_p.get("image_size", 64))
        vae = create_vae_diffusers_config_from_ldm(official, {}, scaling_factor=1.0)
        vae.update(
            sample_size=image_size,
            num_vq_embeddings=int(fs_p["n_embed"]),
            vq_embed_dim=int(fs_p["embed_dim"]),
            norm_num_groups=32,
            scaling_factor=1.0,  # ZoomLDM latents are unscaled (SPEC §10.3)
        )
        hidden = int(cs_p.get("hidden_channels", 512))
        if int(cs_p.get("output_channels", 512)) != hidden:
            raise ConfigError(
                "summarizer output_channels must equal hidden_channels (the official final LayerNorm)"
            )
        summarizer = dict(
            input_channels=int(cs_p.get("input_channels", 1024)),
            hidden_channels=hidden,
            mlp_dim=int(cs_p.get("vit_mlp_dim", 2048)),
            num_layers=int(cs_p.get("num_layers", 12)),
            num_heads=int(cs_p.get("num_heads", 8)),
            mag_levels=int(cs_p.get("mag_levels", 8)),
            seq_length=int(cs_p.get("seq_length", 64)),
        )
        if unet["cross_attention_dim"] != hidden:
            raise ConfigError(f"UNet context_dim {unet['cross_attention_dim']} != summarizer width {hidden}")
        schedule = {
            "beta_start": float(params.get("linear_start", 0.0015)),
            "beta_end": float(params.get("linear_end", 0.0195)),
            "num_train_timesteps": int(params.get("timesteps", 1000)),
        }
        if domain is None:
            domain = "satellite" if summarizer["mag_levels"] == 4 else "pathology"
        return cls(
            domain=domain,
            unet=_jsonable(unet),
            vae=_jsonable(vae),
            summarizer=summarizer,
            schedule=schedule,
            latent_size=int(unet_p.get("image_size", 64)),
            p_uncond=float(cs_p.get("p_uncond", 0.1)),
        )

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZoomLDMConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def scales(self) -> Scales:
        return scales_for(self.domain, self.summarizer["mag_levels"])

    @property
    def image_size(self) -> int:
        return self.latent_size * self.vae_factor

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def context_dim(self) -> int:
        return int(self.summarizer["hidden_channels"])

    @property
    def ssl_channels(self) -> int:
        return int(self.summarizer["input_channels"])


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=list))

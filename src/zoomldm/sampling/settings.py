"""Settings of large-image sampling by the names of the command-line options.

``ZoomLDMPipeline.generate_large`` / ``.super_resolve`` and ``zoomldm generate`` / ``zoomldm superres`` take
the same settings: keyword arguments named as the CLI options (``t0``, ``inner_steps``, ``post_t0``, …, see
:data:`OPTIONS`), applied on top of the settings dataclasses (:class:`~.newton.JointSamplingConfig` /
:class:`~.superres.SRConfig`, :class:`~.postprocess.PostprocessConfig`, :class:`~.decode.DecodeConfig`,
:class:`~.inversion.InversionConfig`) given or defaulted. One table maps each name to its field, so the two
faces cannot drift apart.

**Schedules** (:data:`SCHEDULES`): ``schedule="official"`` (the default: the authors' 20 outer steps of
stride 50 and 10 Newton iterations; 5 for super-resolution) or ``schedule="fast"``, a preset of half the outer
steps (stride 100) and 5 Newton iterations (joint sampling: half the official 10; super-resolution keeps its
5) chosen from a sweep of the constraint error against UNet + VQ cost
(``benchmarks/sweep_schedule.py``, docs/large_images.md "Schedules"): a cost/constraint trade-off, not a
quality claim. A preset is a set of options by CLI name applied *before* the caller's own options, so
``schedule="fast", inner_steps=4`` keeps the fast stride with 4 iterations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ZoomLDMError
from .decode import DecodeConfig
from .inversion import InversionConfig
from .joint import default_decode_config
from .newton import JointSamplingConfig
from .postprocess import PostprocessConfig

#: option name (as the CLI's ``--option-name``) → (settings group, dataclass field)
OPTIONS: dict[str, tuple[str, str]] = {
    "t0": ("sampling", "t0"),
    "stride": ("sampling", "stride"),
    "guidance_w": ("sampling", "guidance_w"),
    "fd_step": ("sampling", "h"),
    "newton_lr": ("sampling", "lr"),
    "inner_steps": ("sampling", "inner_steps"),
    "tile_batch": ("sampling", "tile_batch"),
    "colab_update": ("sampling", "variance_preserving_update"),  # negated: True = the Colab update
    "newton_max_t": ("sampling", "newton_max_t"),
    "post_t0": ("postprocess", "t0"),
    "post_stride": ("postprocess", "stride"),
    "post_guidance_w": ("postprocess", "guidance_w"),
    "post_window": ("postprocess", "window"),
    "post_window_stride": ("postprocess", "window_stride"),
    "post_interp": ("postprocess", "interp"),
    "window_batch": ("postprocess", "window_batch"),
    "post_live_weights": ("postprocess", "use_live_weights"),
    "decode_batch": ("decode", "batch_size"),
    "decode_stride": ("decode", "stride"),
    "inversion_steps": ("inversion", "steps"),
    "inversion_lr": ("inversion", "lr"),
    "sim_weight": ("inversion", "sim_weight"),
}
#: options that are not a field: ``no_postprocess=True`` is ``postprocess=False``
FLAGS = ("no_postprocess",)
#: options whose None means "the model's default" rather than a value (``decode_stride`` None: a quarter
#: of the decode window, the official 16 latent px for 64² tiles)
NONE_IS_DEFAULT = ("decode_stride",)

#: schedule presets: options by CLI name (applied before the caller's options). ``fast``: see the module
#: docstring and docs/large_images.md "Schedules" for the sweep it was chosen from.
SCHEDULES: dict[str, dict[str, Any]] = {
    "official": {},
    "fast": {"stride": 100, "inner_steps": 5},
}


def schedule_options(schedule: str = "official", superres: bool = False) -> dict[str, Any]:
    """The options of a schedule preset (:data:`SCHEDULES`); ``superres`` is accepted for symmetry (both
    commands take the same preset). Unknown names are a :class:`ConfigError` listing the presets."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; the schedules are {', '.join(SCHEDULES)}")
    return dict(SCHEDULES[schedule])


@dataclass(frozen=True)
class LargeImageSettings:
    """The four settings objects of a large-image run (``postprocess`` None = no seam removal)."""

    sampling: JointSamplingConfig
    postprocess: PostprocessConfig | None
    decode: DecodeConfig
    inversion: InversionConfig


def _check_type(value: Any, cls: type, name: str) -> Any:
    if value is not None and not isinstance(value, cls):
        raise ConfigError(f"{name} must be a {cls.__name__}; got {type(value).__name__}")
    return value


def large_image_settings(
    pipe,
    *,
    sampling_cls: type[JointSamplingConfig] = JointSamplingConfig,
    config: JointSamplingConfig | None = None,
    postprocess: PostprocessConfig | bool | None = True,
    decode: DecodeConfig | None = None,
    inversion: InversionConfig | None = None,
    schedule: str = "official",
    **options: Any,
) -> LargeImageSettings:
    """Build the settings: the given dataclasses (defaults: the official values; ``sampling_cls`` is
    :class:`JointSamplingConfig` or ``SRConfig``), then the ``schedule`` preset's options
    (:data:`SCHEDULES`), then ``options`` by CLI name on top of them.

    Raises:
        ConfigError: an unknown option name, a value the dataclass rejects, or an object of the wrong type.
    """
    options = {**schedule_options(schedule), **options}
    unknown = sorted(set(options) - set(OPTIONS) - set(FLAGS))
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(unknown)}; the settings are {', '.join([*OPTIONS, *FLAGS])} "
            "(named as the command-line options), schedule= (official, fast) or the "
            "config=/postprocess=/decode=/inversion= objects"
        )
    groups: dict[str, Any] = {
        "sampling": _check_type(config, JointSamplingConfig, "config") or sampling_cls(),
        "decode": _check_type(decode, DecodeConfig, "decode") or default_decode_config(pipe),
        "inversion": _check_type(inversion, InversionConfig, "inversion") or InversionConfig(),
    }
    if postprocess is True:
        groups["postprocess"] = PostprocessConfig()
    elif postprocess is False or postprocess is None:
        groups["postprocess"] = None
    else:
        groups["postprocess"] = _check_type(postprocess, PostprocessConfig, "postprocess")
    if options.pop("no_postprocess", False):
        groups["postprocess"] = None
    changes: dict[str, dict[str, Any]] = {}
    for name, value in options.items():
        group, field = OPTIONS[name]
        if group == "postprocess" and groups["postprocess"] is None:
            continue  # settings of a skipped step (the CLI passes every option)
        if value is None and name in NONE_IS_DEFAULT:
            continue
        if name == "colab_update":
            value = not value
        changes.setdefault(group, {})[field] = value
    for group, fields in changes.items():
        try:
            groups[group] = dataclasses.replace(groups[group], **fields)
        except ZoomLDMError as err:
            raise ConfigError(str(err)) from None
        except (TypeError, ValueError) as err:  # e.g. t0="a": the dataclass' comparisons fail
            given = ", ".join(f"{k}={v!r}" for k, v in fields.items())
            raise ConfigError(f"invalid setting ({given}): {err}") from None
    return LargeImageSettings(**groups)

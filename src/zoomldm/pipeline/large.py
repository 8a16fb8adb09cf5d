"""Large images (SPEC §4) and super-resolution (SPEC §5) as pipeline methods: ``generate_large``,
``super_resolve`` and ``plan_large``, the Python face of ``zoomldm generate`` / ``zoomldm superres``.

Each validates the whole request first (settings by CLI name, levels, inputs, the output path), then
calls the sampling package (:mod:`zoomldm.sampling.joint`, :mod:`zoomldm.sampling.superres`,
:mod:`zoomldm.sampling.plan`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, InputError
from ..fsutil import check_output
from ..scales import Magnification
from .cdm import load_cdm_model

if TYPE_CHECKING:
    from ..sampling.decode import DecodeConfig
    from ..sampling.inversion import InversionConfig
    from ..sampling.joint import LargeImageResult
    from ..sampling.newton import JointSamplingConfig
    from ..sampling.postprocess import PostprocessConfig
    from ..sampling.superres import SRConfig


class LargeImageMethods:
    """The large-image methods of :class:`~zoomldm.pipeline.ZoomLDMPipeline` (a mixin over
    :class:`~zoomldm.models.bundle.ZoomLDMModel`: it uses the loaded networks, config and device)."""

    # ------------------------------------------------------------------------------------------
    # large images (SPEC §4) and super-resolution (SPEC §5)
    # ------------------------------------------------------------------------------------------
    def generate_large(
        self,
        reference: str | Path | Any | None = None,
        *,
        guide: str | int | Magnification | None = None,
        target: str | int | Magnification | None = None,
        size: int | None = None,
        region: tuple[int, int, int, int] | None = None,
        out: str | Path | None = None,
        cdm: str | Path | Any | None = None,
        encoder: str | Any | None = None,
        encoder_weights: str | Path | None = None,
        config: JointSamplingConfig | None = None,
        postprocess: PostprocessConfig | bool | None = True,
        decode: DecodeConfig | None = None,
        inversion: InversionConfig | None = None,
        guide_steps: int = 50,
        seed: int = 0,
        compression: str = "jpeg",
        resume: bool = True,
        overwrite: bool = True,
        live_unet=None,
        keep_in_memory: bool | None = None,
        progress: bool = True,
        **options: Any,
    ) -> LargeImageResult:
        """Generate a large image (e.g. 4096² at 20x under a 1.25x guide) by joint multi-scale sampling.

        Args:
            reference: the real region that conditions the image, at base resolution under the guide
                (4096² at 20x for a 1.25x guide): an image (path, PIL image, uint8 ``[H, W, 3]`` array),
                embedded tile by tile with ``encoder``, or its unpooled SSL grid (``[C, n, n]`` tensor or
                float array, or a ``.npy``/``.pt``/``.safetensors`` file). None: reference-free, with ``cdm``.
            guide: guide magnification (``"1.25x"``: k = 16 → 4096² at 20x). Default: the one ``size``
                needs, else the one whose field of view the reference covers.
            target: magnification of the output (default the base level, 20x / 1x).
            size: side of the output in pixels; ratios above 16 cascade two scale pairs.
            region: ``(x, y, w, h)`` in output pixels (multiples of 256): generate only that viewport.
            out: ``.png`` / ``.tif`` / ``.ome.tif`` to write (with ``<stem>_guide.png`` and ``<stem>.json``
                beside it, holding ``metrics`` and ``settings``). None: nothing is written; the image is
                returned in memory (up to :data:`zoomldm.sampling.output.MAX_IN_MEMORY_PIXELS`, 8192²;
                larger images need ``out``).
            cdm: the Conditioning Diffusion Model for reference-free generation: a folder / official file
                or a :class:`~zoomldm.models.cdm.ConditioningDiT`.
            guide_steps: PLMS steps of the CDM-conditioned guide patch (reference-free only).
            encoder, encoder_weights: SSL encoder of an image reference: a name (``uni``, ``dinov2``,
                ``timm:<name>``, ``embedded``) with a local weights file, or an encoder object. None: the
                model's own (``embedded`` for the embedded offline model, else ``uni``).
            config, postprocess, decode, inversion: the settings dataclasses (official defaults;
                ``postprocess=False`` skips seam removal).
            seed: seed of every noise draw. compression: TIFF tiles (``jpeg``, ``zlib``, ``none``).
            resume: continue an interrupted run from its state beside ``out`` (the last finished canvas
                block of the joint stage, the last finished post-processing step).
            overwrite: replace an existing ``out`` (False: refuse it with an ``OutputError``, the CLI's
                default without ``--overwrite``).
            live_unet: the live UNet, needed only with ``post_live_weights=True``.
            keep_in_memory: also return an image that is written to ``out`` (default: when it fits).
            **options: settings by their command-line names, applied on top of the dataclasses: ``t0``,
                ``stride``, ``guidance_w``, ``fd_step``, ``newton_lr``, ``inner_steps``, ``tile_batch``,
                ``colab_update``, ``newton_max_t``, ``no_postprocess``, ``post_t0``, ``post_stride``, ``post_guidance_w``,
                ``post_window``, ``post_window_stride``, ``post_interp``, ``window_batch``,
                ``post_live_weights``, ``decode_batch``, ``decode_stride``, ``inversion_steps``, ``inversion_lr``,
                ``sim_weight`` (:data:`zoomldm.sampling.settings.OPTIONS`).

        Returns:
            :class:`~zoomldm.sampling.joint.LargeImageResult`: ``image`` (uint8 ``[H, W, 3]`` or None),
            ``path``, ``guide_image``, ``latent`` (None above 8192² pixels), ``metrics`` (constraint PSNR / MAE vs the guide) and
            ``settings`` (the record written to ``<stem>.json``).
        """
        from ..sampling.joint import coarse_request, generate_large_image, plan_stages
        from ..sampling.levels import parse_level
        from ..sampling.reference import embed_reference, read_reference, reference_side
        from ..sampling.settings import large_image_settings

        # 1. validate the whole request (settings, levels, inputs, output path) before any model work
        if reference is not None and cdm is not None:
            raise ConfigError("give reference= (a real region) or cdm= (reference-free), not both")
        if reference is None and cdm is None:
            cdm = self.cdm_dir  # the model's own CDM (e.g. the embedded model's), if it ships one
        if reference is None and cdm is None:
            raise InputError(
                "large images need a reference region (reference=/--reference: an image or its SSL grid); "
                "reference-free generation needs a CDM checkpoint (cdm=/--cdm; this model ships none)"
            )
        settings = large_image_settings(
            self, config=config, postprocess=postprocess, decode=decode, inversion=inversion, **options
        )
        ref = None if reference is None else read_reference(reference, self.config.ssl_channels)
        tmag = parse_level(self, target, "target magnification") if target is not None else self.scales[0]
        gmag = parse_level(self, guide, "guide magnification") if guide is not None else None
        if gmag is None and size is None and ref is not None:
            side = reference_side(ref, self.config.image_size)
            gmag = next((m for m in self.scales if m.grid_size == side and m.index > tmag.index), None)
            if gmag is None:
                raise ConfigError(
                    f"the reference ({_shape_text(ref)}) is not the field of view of a guide of this model; "
                    "give guide= (e.g. 1.25x) or size="
                )
        stages = plan_stages(self, gmag, tmag, size, region)
        plan = stages[-1]
        _check_out(out, plan.height, plan.width, compression, overwrite)
        cdm_model = load_cdm_model(cdm, self.device) if cdm is not None else None

        # 2. the reference's SSL grid (an image is embedded tile by tile), then sample
        grid = ref
        if isinstance(ref, np.ndarray):
            what = Path(reference).name if isinstance(reference, str | Path) else "the reference image"
            coarse = coarse_request(self, tmag, size, region) if gmag is None else None
            grid = embed_reference(
                self,
                ref,
                stages[0].guide,
                encoder,
                encoder_weights,
                what,
                patches=(coarse.rows, coarse.cols) if coarse is not None else (1, 1),
            )
        result = generate_large_image(
            self,
            grid,
            guide=gmag,  # None: chosen there from size, or a coarse canvas past one guide patch (.coarse)
            target=plan.target,
            size=size,
            region=region,
            config=settings.sampling,
            postprocess=settings.postprocess or False,
            decode=settings.decode,
            seed=seed,
            out=out,
            cdm=cdm_model,
            inversion=settings.inversion,
            guide_steps=guide_steps,
            live_unet=live_unet,
            keep_in_memory=keep_in_memory,
            compression=compression,
            resume=resume,
            progress=progress,
        )
        if self.scales.domain == "satellite":  # the remote-sensing layout; synthetic, so no georeference
            _to_cog(result, None, None, compression)
        return result

    def super_resolve(
        self,
        image: str | Path | Any,
        from_magnification: str | int | Magnification = "5x",
        to: str | int | Magnification | None = None,
        *,
        out: str | Path | None = None,
        resize: int | None = None,
        region: tuple[int, int, int, int] | None = None,
        config: SRConfig | None = None,
        postprocess: PostprocessConfig | bool | None = True,
        decode: DecodeConfig | None = None,
        inversion: InversionConfig | None = None,
        seed: int = 0,
        compression: str = "jpeg",
        resume: bool = True,
        overwrite: bool = True,
        live_unet=None,
        inversion_unet=None,
        keep_in_memory: bool | None = None,
        progress: bool = True,
        **options: Any,
    ) -> LargeImageResult:
        """Super-resolve a low-magnification image (e.g. 5x → 20x, 4×) by condition inversion and
        constrained sampling under the input (SPEC §5).

        Args:
            image: path, PIL image or uint8 ``[H, W, 3]`` array at ``from_magnification``, a whole number
                of 256² patches (``resize=256`` turns the authors' 1024² display copy ``lr.jpg`` back into
                their 256² input).
            from_magnification: magnification of the input. to: of the output (default the base level).
            out, region, seed, compression, resume, overwrite, live_unet, keep_in_memory, progress,
                **options: as
                :meth:`generate_large` (the Newton iterations default to the SR notebook's 5).
            config: :class:`~zoomldm.sampling.superres.SRConfig`; postprocess, decode, inversion: as
                :meth:`generate_large`. inversion_unet: UNet of the inversion (default this pipeline's).

        Returns:
            :class:`~zoomldm.sampling.joint.LargeImageResult` whose ``guide_image`` is the input and whose
            metrics compare the downsampled output with it.
        """
        from ..sampling.reference import read_image
        from ..sampling.settings import large_image_settings
        from ..sampling.superres import SRConfig, super_resolve

        settings = large_image_settings(
            self,
            sampling_cls=SRConfig,
            config=config,
            postprocess=postprocess,
            decode=decode,
            inversion=inversion,
            **options,
        )
        if out is not None:  # the written-ness of the path; its kind and size are checked by super_resolve
            check_output(out, "out", overwrite=overwrite)
        geo = _geo_input(image, resize)  # a GeoTIFF: its georeference goes to the output (a COG)
        if geo is not None:
            from ..io.geotiff import read_rgb

            lr = read_rgb(image)[0]
            _note_resolution(self, geo, from_magnification, Path(image).name)
        else:
            lr = read_image(image, resize, what="image")
        tile = self.config.image_size
        if lr.shape[0] % tile or lr.shape[1] % tile:
            name = Path(image).name if isinstance(image, str | Path) else "the image"
            raise InputError(
                f"{name} is {lr.shape[1]}×{lr.shape[0]}; the input must be a whole number of {tile}² patches "
                f"at {from_magnification} (resize it, e.g. resize={tile} / --resize {tile} for one patch)"
            )
        result = super_resolve(
            self,
            lr,
            from_magnification,
            to_magnification=to,
            config=settings.sampling,
            inversion=settings.inversion,
            postprocess=settings.postprocess or False,
            decode=settings.decode,
            seed=seed,
            out=out,
            region=region,
            inversion_unet=inversion_unet,
            live_unet=live_unet,
            keep_in_memory=keep_in_memory,
            compression=compression,
            resume=resume,
            progress=progress,
        )
        if geo is not None or self.scales.domain == "satellite":
            _to_cog(result, geo, region, compression)
        return result

    def plan_large(self, command: str = "generate", **request: Any):
        """The plan of a :meth:`generate_large` (``command="generate"``) or :meth:`super_resolve`
        (``"superres"``, with ``input_shape=(H, W)`` and ``from_magnification``) request without doing it:
        stages, tiles, blocks, UNet rows, VQ passes, disk, peak host and GPU memory and time on this
        pipeline's device (:func:`zoomldm.sampling.plan.plan_large`; ``zoomldm generate --dry-run``).
        Settings go by CLI name as for the two methods, plus ``schedule`` and ``out``."""
        from ..sampling.plan import plan_large

        return plan_large(self, command=command, **request)


def _geo_input(image: Any, resize: int | None):
    """The :class:`~zoomldm.io.geotiff.GeoInfo` of a georeferenced input file (None for other inputs)."""
    if not isinstance(image, str | Path):
        return None
    from ..io.geotiff import has_georeference, read_geo_info

    if not has_georeference(image):
        return None
    if resize is not None:
        raise ConfigError(
            f"{Path(image).name} is georeferenced: --resize would break its geotransform; crop or resample "
            "it with GDAL (gdalwarp -tr) instead"
        )
    return read_geo_info(image, need_resolution=False)  # the output's georeference needs no m/px


def _note_resolution(pipe, geo, magnification, name: str) -> None:
    """One line when a georeferenced input's ground resolution is not the level's (by more than 25 %)."""
    import sys

    from ..sampling.levels import parse_level

    level = parse_level(pipe, magnification, "input magnification")
    if geo.resolution_m is None or pipe.scales.domain != "satellite":
        return
    ratio = geo.resolution_m / level.mpp
    if not 0.8 <= ratio <= 1.25:
        print(
            f"note: {name} is {geo.resolution_m:.3g} m/px; this model's {level} is {level.mpp:.3g} m/px: "
            f"super-resolved as {level} (the output's geotransform keeps the input's true scale)",
            file=sys.stderr,
        )


def _to_cog(result, geo, region, compression: str) -> None:
    """Rewrite a large-image TIFF output as a Cloud-Optimized GeoTIFF: with the input's CRS and its
    geotransform scaled by the factor (and moved to the region's origin) when ``geo`` is given."""
    path = result.path
    if path is None or path.suffix.lower() not in (".tif", ".tiff"):
        if geo is not None and path is not None:
            import sys

            print(
                f"note: {path.name} is not a .tif: the input's georeference is not written", file=sys.stderr
            )
        return
    from ..io.geotiff import scaled_transform, write_cog

    crs = transform = None
    if geo is not None:
        factor = int(result.settings.get("k", 1))
        x, y = (region[0], region[1]) if region is not None else (0, 0)
        crs, transform = geo.crs, scaled_transform(geo.transform, factor, (x, y))
    import json

    import tifffile

    staged = path.with_name(f".{path.name}.src.tif")
    path.replace(staged)
    try:
        from ..io.tiff_provenance import XMP_TAG

        with tifffile.TiffFile(staged) as tif:  # our provenance record (an XMP packet), kept in the COG
            xmp = tif.pages.first.tags.valueof(XMP_TAG)
        xmp = xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp
        write_cog(path, staged, crs=crs, transform=transform, compression=compression, xmp=xmp)
    except BaseException:
        staged.replace(path)
        raise
    staged.unlink()
    layout = {"layout": "cloud-optimized GeoTIFF"}
    if geo is not None:
        layout.update(crs_epsg=geo.epsg, crs_wkt=crs, transform=list(transform))
    result.settings["georeference"] = layout
    sidecar = path.with_name(f"{path.name.split('.')[0]}.json")
    if sidecar.is_file():  # the record beside the output says so too
        record = json.loads(sidecar.read_text())
        record.setdefault("settings", {})["georeference"] = layout
        tmp = sidecar.with_name(f".{sidecar.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(sidecar)


def _shape_text(ref) -> str:
    if isinstance(ref, np.ndarray):
        return f"a {ref.shape[1]}×{ref.shape[0]} image"
    return f"a {'×'.join(str(v) for v in ref.shape[1:])} SSL grid"


def _check_out(out, height: int, width: int, compression: str, overwrite: bool) -> None:
    """The output path before any model work: kind and size (``check_output_path``) and that it can be
    written (a folder, not under a file; an existing file only with ``overwrite``)."""
    from ..sampling.output import check_output_path

    check_output_path(out, height, width, compression)
    if out is not None:
        check_output(out, "out", overwrite=overwrite)

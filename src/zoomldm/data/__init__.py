"""Data preparation and loading: slides and large images → a multi-scale zarr store → training batches.

Modules, in data-flow order (nothing is imported here, so ``import zoomldm.data`` stays light):

- :mod:`.readers`  — :func:`~.readers.open_image`: OpenSlide / tiffslide / tifffile / Pillow backends
- :mod:`.tissue`   — tissue (pathology) and valid-data (satellite) masks at thumbnail resolution
- :mod:`.tiling`   — the base-tile grid and the regions of every magnification (SPEC §1)
- :mod:`.encoders` — :func:`~.encoders.build_encoder` (UNI, DINOv2, any timm model), ``encode_region_grid``
- :mod:`.extract`  — one slide → one part: read, embed base tiles once, VQ-encode each level's 256² image
- :mod:`.store`    — the zarr v3 layout, per-slide parts and the ordered crash-safe commit
- :mod:`.slides`   — the input list: folder scan or CSV (``path``, ``id``, ``mpp``), slide ids
- :mod:`.workers`  — slides processed in-process or by worker processes, progress bars
- :mod:`.prepare`  — :func:`~.prepare.prepare_dataset` (``zoomldm prepare``): ranks, resume, ordered commit
- :mod:`.dataset`  — ``MultiScaleDataset``, ``MagnificationBalancedSampler``, ``collate_multiscale``
"""

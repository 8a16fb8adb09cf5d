"""Data preparation and loading: slides and large images → a multi-scale zarr store → training batches.

Modules, in data-flow order (nothing is imported here, so ``import zoomldm.data`` stays light):

- :mod:`.readers`  — :func:`~.readers.open_image`: the backend by file (:mod:`.reader_base`, :mod:`.reader_backends`:
  OpenSlide / tiffslide / tifffile / Pillow; :mod:`.resolution`: µm/px from the file)
- :mod:`.tissue`   — tissue (pathology) and valid-data (satellite) masks at thumbnail resolution
- :mod:`.tiling`   — the base-tile grid and the regions of every magnification (SPEC §1)
- the SSL encoders (UNI, DINOv2, any timm model) live with the models: :mod:`zoomldm.models.encoders`
  (``data.encoders`` is their old path, until 0.2)
- :mod:`.extract`  — one slide → one part: read, embed base tiles once, VQ-encode each level's 256² image
- :mod:`.store`    — the zarr v3 layout, per-slide parts and the ordered crash-safe commit
- :mod:`.slides`   — the input list: folder scan or CSV (``path``, ``id``, ``mpp``), slide ids
- :mod:`.workers`  — slides processed in-process or by worker processes, progress bars
- :mod:`.prepare`  — :func:`~.prepare.prepare_dataset` (``zoomldm prepare``): resume, ordered commit
  (:mod:`.prepare_settings`, :mod:`.ranks`, :mod:`.store_identity`: the settings, the ranks, what a store was made with)
- :mod:`.loading`  — the model and encoder of a slide command from names, paths or objects
- :mod:`.dataset`  — ``MultiScaleDataset``, ``MagnificationBalancedSampler``, ``collate_multiscale``
"""

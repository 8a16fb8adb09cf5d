"""Sampling: guidance, the denoising loop, joint multi-scale generation, super-resolution, tiled decoding.

Modules, in the order a large image is made: :mod:`.levels`, :mod:`.settings` and :mod:`.reference`
(the request by CLI name, its inputs), :mod:`.stages` (the cascade of scale pairs), :mod:`.plan` (the
``--dry-run`` plan and the up-front refusal), :mod:`.guide_sources` and :mod:`.coarse` (the first guide),
:mod:`.conditions`, :mod:`.newton`, :mod:`.constrained` with :mod:`.footprints` and :mod:`.blocks` (the
tile × step engine over the :mod:`.canvas`, sharded by :mod:`.distributed`), :mod:`.postprocess` with
:mod:`.post_windows` and :mod:`.post_bands` (SPEC §4.5), :mod:`.inversion` and :mod:`.superres` (SPEC §5),
:mod:`.decode`, :mod:`.output` and :mod:`.results` (files and metrics), :mod:`.joint` (the orchestrator).
The patch loop is :mod:`.denoise` with :mod:`.guidance`.
"""

"""Slide-level learning on tile features: feature bags (h5), gated ABMIL, k-fold MIL, ZoomLDM UNet features.

Submodules: :mod:`.bags` (TRIDENT/CLAM feature files, labels), :mod:`.abmil` (the model), :mod:`.splits`
(patient-grouped stratified folds), :mod:`.mil` (training, cross-validation, evaluation), :mod:`.heatmap`
(attention images) and :mod:`.extract` (multi-scale ZoomLDM UNet features).
"""

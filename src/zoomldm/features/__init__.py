"""Slide-level learning on tile features: feature bags (h5), gated ABMIL, k-fold MIL, ZoomLDM UNet features.

Submodules: :mod:`.bags` (TRIDENT/CLAM feature files, labels), :mod:`.abmil` (the model), :mod:`.splits`
(patient-grouped stratified folds), :mod:`.mil` (cross-validation; with :mod:`.mil_training`, :mod:`.mil_metrics`,
:mod:`.mil_io`, :mod:`.mil_evaluation`), :mod:`.heatmap` (attention images), :mod:`.unet_features` and
:mod:`.extract` (multi-scale ZoomLDM UNet features; with :mod:`.feature_settings`, :mod:`.slide_features`,
:mod:`.extract_workers`).
"""

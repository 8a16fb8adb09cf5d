"""Bundled demo data: a 1024² H&E crop at 20x (from the ZoomLDM authors' brca_001 asset, MIT licence)."""

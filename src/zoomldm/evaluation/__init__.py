"""Evaluation: FID per magnification (Inception or domain encoders), Fréchet distances of embeddings,
and constraint / consistency metrics of large images."""

"""Sampling: guidance, the denoising loop, joint multi-scale generation, super-resolution, tiled decoding."""

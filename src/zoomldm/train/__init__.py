"""Training: ZoomLDM (UNet + Summarizer) on a prepared multi-scale store, and the CDM.

Modules (nothing is imported here, so ``import zoomldm.train`` stays light):

- :mod:`.config`        — ``TrainConfig``: the YAML schema (:mod:`.config_sections`), validation, overrides
  (:mod:`.config_parsing`)
- :mod:`.init`          — initial weights: scratch, official ZoomLDM, our format, CompVis ImageNet LDM
- :mod:`.objective`     — the ε-prediction objective (noise schedule, Summarizer + UNet forward)
- :mod:`.optim`         — AdamW and the official ``LambdaLinearScheduler`` warm-up
- :mod:`.ema`           — the official EMA decay on diffusers' ``EMAModel``
- :mod:`.data`          — the data loader over the store (seeded per rank and worker)
- :mod:`.checkpointing` — atomic checkpoints in our format + ``training_state/`` for exact resume
- :mod:`.monitor`       — loss per magnification, throughput, sample grids
- :mod:`.trainer`       — :class:`~.trainer.Trainer` (accelerate): one GPU to many nodes (set-up in
  :mod:`.trainer_setup`, logging in :mod:`.trainer_reporting`, :mod:`.runtime`)
- :mod:`.vae`           — the VQ-f4 autoencoder trainer (:mod:`.vae_crops`, :mod:`.vae_metrics`)
- :mod:`.cdm`           — the conditioning diffusion model (DiT over Summarizer tokens) trainer
"""

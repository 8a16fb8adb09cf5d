"""The data of ``zoomldm train-vae`` (:mod:`.vae`): :class:`CropSource`, deterministic training crops and a
fixed held-out set from a 2× pyramid of each training image (held-out strip at the right of every level).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError


# -- data ---------------------------------------------------------------------------------------------
class CropSource:
    """Deterministic training crops and a fixed held-out set from a pyramid of each image.

    Args:
        images: ``uint8 [H, W, 3]`` arrays (the finest magnification).
        crop_size: side of a crop in pixels.
        levels: pyramid levels per image (None: as many 2× levels as leave a side ≥ 2 crops).
        holdout_fraction: width fraction of the right-hand strip of each level kept for evaluation.
        eval_crops_per_level: most held-out crops per image and level.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        crop_size: int,
        levels: int | None = None,
        holdout_fraction: float = 0.125,
        eval_crops_per_level: int = 16,
    ) -> None:
        from PIL import Image

        self.crop = crop_size
        self.levels: list[tuple[int, int, np.ndarray, int]] = []  # (image, downsample, pixels, train width)
        for index, image in enumerate(images):
            level, downsample = np.ascontiguousarray(image), 1
            while True:
                h, w = level.shape[:2]
                hold = max(crop_size, int(round(w * holdout_fraction / crop_size)) * crop_size)
                if h < crop_size or w - hold < crop_size:
                    break
                self.levels.append((index, downsample, level, w - hold))
                if levels is not None and sum(1 for lv in self.levels if lv[0] == index) >= levels:
                    break
                if min(h, w) < 4 * crop_size:  # the next 2× level would be under 2 crops a side
                    break
                # box-filtered 2× reduction (what `zoomldm prepare` resamples pyramid levels with)
                level, downsample = np.asarray(Image.fromarray(level).reduce(2)), downsample * 2
        if not self.levels:
            raise InputError(
                f"the training images are smaller than 2 crops of {crop_size}² a side; give larger images "
                "or a smaller --crop-size"
            )
        self.eval_crops, self.eval_labels = self._held_out(eval_crops_per_level)

    def _held_out(self, limit: int) -> tuple[torch.Tensor, list[str]]:
        crops, labels = [], []
        c = self.crop
        for index, downsample, pixels, train_w in self.levels:
            h, w = pixels.shape[:2]
            found = 0
            for y in range(0, h - c + 1, c):
                for x in range(train_w, w - c + 1, c):
                    if found < limit:
                        crops.append(pixels[y : y + c, x : x + c])
                        labels.append(f"image{index}/{downsample}x-down")
                        found += 1
        return _to_model(np.stack(crops)), labels

    def batch(self, seed: int, step: int, batch_size: int) -> torch.Tensor:
        """The training batch of ``step`` (``[-1, 1]`` float ``[B, 3, crop, crop]``), a function of
        ``(seed, step)`` only."""
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
        c = self.crop
        out = []
        for _ in range(batch_size):
            _, _, pixels, train_w = self.levels[int(torch.randint(len(self.levels), (1,), generator=g))]
            y = int(torch.randint(pixels.shape[0] - c + 1, (1,), generator=g))
            x = int(torch.randint(train_w - c + 1, (1,), generator=g))
            crop = pixels[y : y + c, x : x + c]
            turn = int(torch.randint(8, (1,), generator=g))
            crop = np.rot90(crop, turn % 4)
            if turn >= 4:
                crop = crop[:, ::-1]
            out.append(np.ascontiguousarray(crop))
        return _to_model(np.stack(out))


def _to_model(pixels: np.ndarray) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` → ``[-1, 1]`` float ``[B, 3, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1.0

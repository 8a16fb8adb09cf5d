"""Training one gated ABMIL fold and predicting a bag: :class:`MILConfig` (the settings of MIL training),
:func:`train_fold` (one bag per step, early stopping on the validation loss) and :func:`predict`
(see :mod:`.mil` for the setting)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import Progress

from ..errors import ZoomLDMError
from .abmil import ABMILConfig, GatedABMIL
from .bags import LabelTable, SlideBag
from .splits import Split


@dataclass(frozen=True)
class MILConfig:
    """Settings of MIL training (defaults: CONVENTIONS.md "MIL")."""

    folds: int = 5
    epochs: int = 100
    patience: int = 10
    min_epochs: int = 0
    lr: float = 1e-4
    weight_decay: float = 1e-5
    dropout: float = 0.25
    embed_dim: int = 512
    attn_dim: int = 256
    max_tiles: int | None = None
    val_fraction: float = 0.2
    balance_classes: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1 or self.patience < 1 or self.min_epochs < 0:
            raise ZoomLDMError("--epochs and --patience must be at least 1 and --min-epochs at least 0")
        for option, value, ok in (
            ("--lr", self.lr, self.lr > 0),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0),
            ("--dropout", self.dropout, 0 <= self.dropout < 1),
            ("--val-fraction", self.val_fraction, 0 < self.val_fraction < 0.5),
        ):
            if not (math.isfinite(value) and ok):  # NaN fails every comparison: say so, not torch
                wanted = {"--lr": "> 0", "--weight-decay": ">= 0", "--dropout": "in [0, 1)"}.get(
                    option, "in (0, 0.5)"
                )
                raise ZoomLDMError(f"{option}: expected a finite number {wanted}, got {value}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ZoomLDMError(f"--max-tiles must be at least 1, got {self.max_tiles}")


# --------------------------------------------------------------------------------------- train / predict


def _bag_tensor(bag: SlideBag, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(bag.features).to(device)


@torch.no_grad()
def predict(
    model: GatedABMIL, bag: SlideBag, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(C,)`` and attention ``(N,)`` of one bag, using all its tiles."""
    model.eval()
    logits, attention = model(_bag_tensor(bag, torch.device(device)))
    return torch.softmax(logits, dim=-1).cpu().numpy(), attention.cpu().numpy()


@dataclass
class FoldHistory:
    """Per-epoch losses of one fold and where early stopping kept the weights."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1


def train_fold(
    bags: Mapping[str, SlideBag],
    labels: LabelTable,
    split: Split,
    config: MILConfig,
    fold: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> tuple[GatedABMIL, FoldHistory]:
    """Train one ABMIL on ``split.train``, early-stopping on the loss over ``split.val``.

    Deterministic for a given ``config.seed`` and ``fold`` (own RNG streams; the global torch RNG is
    restored afterwards). Returns the model with the weights of the best validation epoch.
    """
    config.validate()
    device = torch.device(device)
    target = dict(zip(labels.slide_ids, labels.targets.tolist(), strict=True))
    n_classes, dim = len(labels.classes), next(iter(bags.values())).dim
    train_ids, val_ids = list(split.train), list(split.val)
    weight = None
    if config.balance_classes:  # inverse class frequency in the training slides
        counts = np.bincount([target[s] for s in train_ids], minlength=n_classes).astype(np.float64)
        weight = torch.tensor(
            len(train_ids) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32, device=device
        )
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    rng = np.random.default_rng([config.seed, fold])
    history = FoldHistory()
    task = progress.add_task(f"fold {fold}", total=config.epochs) if progress is not None else None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed * 1000 + fold)
        architecture = ABMILConfig(dim, n_classes, config.embed_dim, config.attn_dim, config.dropout)
        model = GatedABMIL(architecture).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        best_loss, best_state, stale = math.inf, None, 0
        for epoch in range(config.epochs):
            # 1. one pass over the training slides, one bag per step, optionally subsampled
            model.train()
            total = 0.0
            for slide in rng.permutation(train_ids):
                x = _bag_tensor(bags[slide], device)
                if config.max_tiles is not None and x.shape[0] > config.max_tiles:
                    keep = np.sort(rng.choice(x.shape[0], config.max_tiles, replace=False))
                    x = x[torch.from_numpy(keep).to(device)]
                logits, _ = model(x)
                loss = loss_fn(logits[None], torch.tensor([target[slide]], device=device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            history.train_loss.append(total / len(train_ids))
            if progress is not None:
                progress.update(task, advance=1, description=f"fold {fold} loss {history.train_loss[-1]:.3f}")
            # 2. validation loss over all tiles; keep the best weights (no validation slides: the last)
            if not val_ids:
                continue
            model.eval()
            with torch.no_grad():
                losses = [
                    torch.nn.functional.cross_entropy(
                        model(_bag_tensor(bags[s], device))[0][None], torch.tensor([target[s]], device=device)
                    ).item()
                    for s in val_ids
                ]
            val_loss = float(np.mean(losses))
            history.val_loss.append(val_loss)
            if val_loss < best_loss - 1e-6:
                best_loss, stale, history.best_epoch = val_loss, 0, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            # 3. early stopping
            if stale >= config.patience and epoch + 1 >= config.min_epochs:
                break
    if progress is not None:
        progress.remove_task(task)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history

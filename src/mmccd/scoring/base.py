"""The interface every method shares: networks to train, each with its loss, and `score(batch)`.

A method owns its networks (`self.nets`, a ModuleDict). The shared training loop
(mmccd.training) trains each network on healthy slices with the method's loss for it, keeps an
EMA copy, and the method scores with the EMA weights. Scoring returns a dict with at least
`anomaly_map` (B, 1, H, W), zero outside the brain; methods may add intermediate images
(`translation`, `reconstruction`) that the report shows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from mmccd.config import ExperimentConfig
from mmccd.data.batch import SliceBatch
from mmccd.training import LossFn


class AnomalyMethod(ABC):
    """Base class. Subclasses set `name` and build `self.nets` in __init__."""

    name: str = ""
    #: the method only reads the source contrast at inference (all of ours); the target is for training
    needs_target_for_training: bool = True

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.nets = nn.ModuleDict()

    # ------------------------------------------------------------------ training
    def losses(self) -> dict[str, LossFn]:
        """One loss per network in `self.nets` (same keys). Empty for methods without training."""
        return {}

    # ------------------------------------------------------------------ scoring
    @abstractmethod
    def score(self, batch: SliceBatch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Return {"anomaly_map": (B, 1, H, W) float, zero outside batch.brain_mask, ...}."""

    # ------------------------------------------------------------------ plumbing
    @property
    def device(self) -> torch.device:
        for p in self.nets.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> AnomalyMethod:
        self.nets.to(device)
        return self

    def eval(self) -> AnomalyMethod:
        self.nets.eval()
        return self


def masked_error(a: Tensor, b: Tensor, brain_mask: Tensor) -> Tensor:
    """Squared error (a - b)^2, zero outside the brain. All (B, 1, H, W)."""
    return (a - b).pow(2) * brain_mask.to(a.dtype)

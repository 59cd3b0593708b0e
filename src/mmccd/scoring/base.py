"""The interface every method shares: networks to train, each with its loss, and `score(batch, settings)`.

A method owns its networks (`self.nets`, a ModuleDict). The shared training loop (mmccd.training)
trains each network on healthy slices with the method's loss for it, keeps an EMA copy, and the
method scores with the EMA weights. How it scores is an argument, `settings` (a ScoreConfig resolved
once by the caller, `mmccd.scoring.resolve_scoring`); the result is a `ScoreOutput`.

`score` runs the method's `score_with` inside one inference context, the same for every method:
inference mode, channels-last weights and autocast (`runtime.autocast_dtype`) as the settings ask, and
torch.compile'd networks (cached per network; nothing is swapped into the method).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from mmccd.config import BRIGHT_CONTRASTS, ExperimentConfig, ScoreConfig
from mmccd.data.batch import SliceBatch
from mmccd.models import LossFn
from mmccd.runtime import autocast, autocast_dtype

Nets = Mapping[str, nn.Module]  # the networks to score with: self.nets, or their compiled forms


@dataclass
class ScoreOutput:
    """anomaly_map (B, 1, H, W) float, zero outside the brain; the intermediate images a report shows."""

    anomaly_map: Tensor
    translation: Tensor | None = None  # the source translated to the target contrast (cyclic methods)
    reconstruction: Tensor | None = None  # what the map compares the source with


class AnomalyMethod(ABC):
    """Base class. Subclasses set `name` and build `self.nets` in __init__, and implement `score_with`."""

    name: ClassVar[str] = ""
    #: the preset whose `score` section `--scoring auto` uses for this method; None: the run's own
    default_scoring: ClassVar[str | None] = None
    #: network key -> the method whose network of that key is the same network (same role, loss and config),
    #: so a benchmark trains it once (MMCCD's backward UNet is Cyclic UNet's target -> source UNet)
    shared_networks: ClassVar[Mapping[str, str]] = {}
    #: network key -> the key of the same network in this method's run on the reversed pair (target:source),
    #: when that network is trained exactly alike there (Cyclic UNet's two translators swap roles), so a
    #: benchmark of both pairs trains them once; `mirrors_when` says for which training settings that holds
    mirrored_networks: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def mirrors_when(cls, cfg: ExperimentConfig) -> bool:
        """True when `mirrored_networks` are trained exactly alike on the reversed pair under `cfg`."""
        return bool(cls.mirrored_networks)

    def __init__(self, cfg: ExperimentConfig):
        self.cfg: ExperimentConfig = cfg  # the run's config: networks, sizes; how to score is an argument
        self.nets = nn.ModuleDict()
        self._compiled: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ training
    def losses(self) -> dict[str, LossFn]:
        """One loss per network in `self.nets` (same keys). Empty for methods without training."""
        return {}

    # ------------------------------------------------------------------ scoring
    def score(self, batch: SliceBatch, settings: ScoreConfig, generator: torch.Generator | None = None) -> ScoreOutput:
        """Score a batch with `settings`; randomness from `generator` (None: seeded from settings.seed)."""
        with self.inference(settings) as nets:
            return self.score_with(nets, batch, settings, generator)

    @abstractmethod
    def score_with(self, nets: Nets, batch: SliceBatch, settings: ScoreConfig,
                   generator: torch.Generator | None) -> ScoreOutput:
        """The method's scoring with these networks: ScoreOutput.anomaly_map (B, 1, H, W), zero outside
        batch.brain_mask. Called inside `inference` (inference mode, autocast)."""

    @contextmanager
    def inference(self, settings: ScoreConfig) -> Iterator[Nets]:
        """Inference mode, autocast and channels-last as `settings` ask; yields the networks to score with."""
        device = self.device
        dtype = autocast_dtype(settings.amp, device, "score.amp")
        if settings.channels_last:
            self.nets.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        try:
            with torch.inference_mode(), autocast(dtype, device):
                yield self._compiled_nets() if settings.compile else self.nets
        finally:
            if settings.channels_last:  # leave the weights as found: other settings time fairly after this
                self.nets.to(memory_format=torch.contiguous_format)  # type: ignore[call-arg]

    def _compiled_nets(self) -> Nets:
        for key, net in self.nets.items():
            if key not in self._compiled:
                self._compiled[key] = torch.compile(net)  # compiled once per network, reused
        return self._compiled

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


def residual(a: Tensor, b: Tensor, side: str = "squared") -> Tensor:
    """(a - b)^2 ("squared"), or only where a is brighter ("bright": max(a - b, 0)^2) or darker ("dark")."""
    d = a - b
    if side == "bright":
        d = d.clamp_min(0)
    elif side == "dark":
        d = d.clamp_max(0)
    return d.pow(2)


def residual_side(settings: ScoreConfig, contrast: str) -> str:
    """score.residual with "auto" resolved for the source `contrast`: bright for FLAIR, T2, T1ce; dark for T1."""
    if settings.residual != "auto":
        return settings.residual
    return "bright" if contrast in BRIGHT_CONTRASTS else "dark"


def masked_error(a: Tensor, b: Tensor, brain_mask: Tensor, side: str = "squared") -> Tensor:
    """`residual(a, b, side)`, zero outside the brain. All (B, 1, H, W)."""
    return residual(a, b, side) * brain_mask.to(a.dtype)


__all__ = ["AnomalyMethod", "Nets", "ScoreOutput", "masked_error", "residual", "residual_side"]

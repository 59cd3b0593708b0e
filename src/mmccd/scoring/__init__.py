"""Scorers: every method behind one interface, `score(batch, settings, generator) -> ScoreOutput`.

`resolve_scoring` turns the user's `--scoring` choice into the settings, once per entry point:
"auto" is each method's own default (`AnomalyMethod.default_scoring`), "run" the run's own score
section, anything else a preset name or YAML file whose `score` section is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mmccd.config import METHODS, ExperimentConfig, ScoreConfig, load_score_preset
from mmccd.errors import ConfigError
from mmccd.scoring.base import AnomalyMethod, ScoreOutput

_REGISTRY: dict[str, str] = {
    # name -> "module:Class", imported lazily so one method's dependencies never burden another
    "cyclic-unet": "mmccd.scoring.cyclic_unet:CyclicUNet",
    "mmccd": "mmccd.scoring.mmccd:MMCCD",
    "threshold": "mmccd.scoring.baselines.threshold:IntensityThreshold",
    "ae": "mmccd.scoring.baselines.autoencoder:AutoEncoder",
    "dae": "mmccd.scoring.baselines.autoencoder:DenoisingAutoEncoder",
    "ddpm": "mmccd.scoring.baselines.ddpm:AnoDDPM",
    "cddpm": "mmccd.scoring.baselines.ddpm:ConditionedDDPM",
}
assert tuple(_REGISTRY) == METHODS, "config.METHODS and the scoring registry must name the same methods"


def method_names() -> list[str]:
    return list(_REGISTRY)


def method_class(name: str) -> type[AnomalyMethod]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'. Available: {', '.join(_REGISTRY)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def build_method(cfg: ExperimentConfig) -> AnomalyMethod:
    """A method with freshly initialised networks, as configured by `cfg.method`."""
    return method_class(cfg.method)(cfg)


def resolve_scoring(cfg: ExperimentConfig, scoring: str | Path | None = "auto") -> ScoreConfig:
    """The score settings for a run configured by `cfg` under a `--scoring` choice.

    "auto": the method's `default_scoring` preset (MMCCD: "fast"), or the run's own when it has none;
    None or "run": the run's own (cfg.score); else a preset name or YAML path (its `score` section)."""
    if scoring == "auto":
        scoring = method_class(cfg.method).default_scoring
    if scoring is None or scoring == "run":
        return cfg.score
    return load_score_preset(scoring)


__all__ = ["AnomalyMethod", "ScoreOutput", "build_method", "method_class", "method_names", "resolve_scoring"]

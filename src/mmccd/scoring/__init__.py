"""Scorers: every method behind one interface, `score(batch) -> {"anomaly_map": ...}`."""

from __future__ import annotations

from mmccd.config import ExperimentConfig
from mmccd.errors import ConfigError
from mmccd.scoring.base import AnomalyMethod

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


def method_names() -> list[str]:
    return list(_REGISTRY)


def method_class(name: str) -> type[AnomalyMethod]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'. Available: {', '.join(_REGISTRY)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    import importlib

    return getattr(importlib.import_module(module_name), cls_name)


def build_method(cfg: ExperimentConfig) -> AnomalyMethod:
    """A method with freshly initialised networks, as configured by `cfg.method`."""
    return method_class(cfg.method)(cfg)

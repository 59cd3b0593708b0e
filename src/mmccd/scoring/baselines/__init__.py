"""Baselines the field compares against, behind the AnomalyMethod interface (see docs/methods.md).

threshold: IntensityThreshold · ae: AutoEncoder · dae: DenoisingAutoEncoder (Kascenas 2022) ·
ddpm: AnoDDPM (Wyatt 2022) · cddpm: ConditionedDDPM (Behrendt 2023). Import the module you need
(mmccd.scoring.build_method does it lazily); this package imports nothing heavy itself.
"""

"""The Python API in three lines:

    det = mmccd.Detector("cpu", method="mmccd", source="flair", target="t2", workdir="runs/my")
    det.fit("/data/BraTS2021")                       # prepare (or reuse) + train on healthy slices
    result = det.score("/data/new/BraTS-GLI-00001-000")  # result.anomaly_map, result.pred_mask: the input's grid

`Detector.load(run_dir)` reopens a trained run. The same stages are `mmccd prepare/train/...`. Scoring and
evaluation use the method's default scoring (`--scoring auto`), so the threshold `evaluate` chooses is the
one `score` applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmccd.config import ExperimentConfig, ScoreConfig, load_config
from mmccd.data.discovery import case_from_path
from mmccd.data.prepare import prepare_dataset
from mmccd.evaluation.postprocess import PostProcess
from mmccd.pipeline.calibrate import scorer
from mmccd.pipeline.evaluate import Evaluation, evaluate_run
from mmccd.pipeline.runs import load_method, read_run_config, train_run
from mmccd.pipeline.score import find_threshold
from mmccd.scoring import resolve_scoring
from mmccd.scoring.base import AnomalyMethod
from mmccd.scoring.volume import VolumeScore, score_case


class Detector:
    """A method, its config and its working folder (prepared store + run)."""

    def __init__(self, preset: str | Path = "cpu", workdir: str | Path = "results/detector", *,
                 run_dir: str | Path | None = None, device: str | None = None, **overrides: Any):
        """A new detector (preset + overrides, trained by `fit`), or with `run_dir` a trained run (see `load`)."""
        trained = run_dir is not None
        self.run_dir = Path(run_dir) if trained else Path(workdir) / "run"
        self.workdir = self.run_dir.parent
        self.cfg: ExperimentConfig = read_run_config(self.run_dir) if trained else load_config(preset, overrides or None)
        self.method: AnomalyMethod | None = load_method(self.run_dir, device) if trained else None

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None) -> Detector:
        """The trained run in `run_dir`, ready to score (and evaluate)."""
        return cls(run_dir=run_dir, device=device)

    @property
    def settings(self) -> ScoreConfig:
        """How this detector scores: the method's default (`--scoring auto`)."""
        return resolve_scoring(self.cfg, "auto")

    def fit(self, data: str | Path, overwrite: bool = False, resume: bool = False) -> Detector:
        """Train on a BraTS-style folder of cases (prepared into workdir/prepared) or a prepared store."""
        data = Path(data)
        prepared = data if (data / "prepare.json").exists() else self.workdir / "prepared"
        if prepared != data:
            prepare_dataset(data, prepared, self.cfg.prepare, required=(self.cfg.source, self.cfg.target))
        self.method = train_run(prepared, self.run_dir, self.cfg, overwrite=overwrite, resume=resume)
        return self

    def evaluate(self, postprocess: PostProcess | None = None, overwrite: bool = False) -> Evaluation:
        """Validation threshold, test metrics and report (see `mmccd evaluate`); overwrite: replace an
        evaluation made with other settings."""
        return evaluate_run(self.run_dir, self.settings, postprocess=postprocess, method=self.method,
                            overwrite=overwrite)

    def score(self, case: str | Path, threshold: float | None = None) -> VolumeScore:
        """Anomaly map and pred_mask of a case folder or a single NIfTI of the source contrast, on its voxel
        grid. The threshold: `threshold`, else the run's validation threshold (after `evaluate`), else none
        (pred_mask None, with a warning)."""
        if self.method is None:
            raise RuntimeError("call fit() or Detector.load(run_dir) first")
        settings = self.settings
        if threshold is None:
            threshold, _ = find_threshold(self.run_dir, settings)
        c = case_from_path(Path(case), modality=self.cfg.source if Path(case).is_file() else None)
        return score_case(scorer(self.run_dir, self.method, settings), settings, c, threshold)

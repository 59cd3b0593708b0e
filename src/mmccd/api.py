"""The Python API in three lines:

    det = mmccd.Detector("cpu", method="mmccd", source="flair", target="t2", workdir="runs/my")
    det.fit("/data/BraTS2021")                       # prepare (or reuse) + train on healthy slices
    result = det.score("/data/new/BraTS-GLI-00001-000")  # result.anomaly_map: the input's voxel grid

`Detector.load(run_dir)` reopens a trained run. The same stages are `mmccd prepare/train/...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmccd.config import ExperimentConfig, load_config
from mmccd.data.discovery import case_from_path
from mmccd.data.io import load_nifti
from mmccd.data.prepare import prepare_case, prepare_dataset
from mmccd.evaluation.postprocess import PostProcess
from mmccd.pipeline.evaluate import evaluate_run
from mmccd.pipeline.runs import load_method, read_run_config, train_run
from mmccd.scoring.base import AnomalyMethod
from mmccd.scoring.volume import VolumeScore, score_prepared_case


class Detector:
    """A method, its config and its working folder (prepared store + run)."""

    def __init__(self, preset: str | Path = "cpu", workdir: str | Path = "results/detector", **overrides: Any):
        self.workdir = Path(workdir)
        self.cfg: ExperimentConfig = load_config(preset, overrides or None)
        self.method: AnomalyMethod | None = None

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None) -> Detector:
        det = cls.__new__(cls)
        det.workdir = Path(run_dir).parent
        det.cfg = read_run_config(Path(run_dir))
        det.method = load_method(Path(run_dir), device)
        det._run = Path(run_dir)  # type: ignore[attr-defined]
        return det

    def fit(self, data: str | Path, overwrite: bool = False, resume: bool = False) -> Detector:
        """Train on a BraTS-style folder of cases (prepared into workdir/prepared) or a prepared store."""
        data = Path(data)
        prepared = data if (data / "prepare.json").exists() else self.workdir / "prepared"
        if prepared != data:
            prepare_dataset(data, prepared, self.cfg.prepare, required=(self.cfg.source, self.cfg.target))
        self.method = train_run(prepared, self.run_dir, self.cfg, overwrite=overwrite, resume=resume)
        return self

    def evaluate(self, postprocess: PostProcess | None = None, overwrite: bool = False) -> dict[str, Any]:
        """Validation threshold, test metrics and report (see `mmccd evaluate`); overwrite: replace an
        evaluation made with other settings."""
        return evaluate_run(getattr(self, "_run", self.run_dir), postprocess=postprocess, method=self.method,
                            overwrite=overwrite)

    def score(self, case: str | Path) -> VolumeScore:
        """Anomaly map of a case folder or a single NIfTI of the source contrast, on its voxel grid."""
        if self.method is None:
            raise RuntimeError("call fit() or Detector.load(run_dir) first")
        c = case_from_path(Path(case), modality=self.cfg.source if Path(case).is_file() else None)
        source, _ = load_nifti(c.images[self.cfg.source], c.case_id)
        return score_prepared_case(self.method, prepare_case(c, self.method.cfg.prepare), brain=source != 0)

from __future__ import annotations

import csv
import json

import numpy as np

from mmccd.evaluation.figures import subject_strip_plot
from mmccd.evaluation.metrics import MapRecord, evaluate_maps
from mmccd.evaluation.report import write_report


def test_write_report(tmp_path, two_subjects):
    healthy = MapRecord("C", 3, np.array([[0.1, 0.2, 0.3, 0.4]]), np.zeros((1, 4), bool), np.ones((1, 4), bool))
    result = evaluate_maps([*two_subjects, healthy], 0.5)
    subject_strip_plot({"m": [r["dice"] for r in result.per_subject]}, tmp_path / "figures" / "dice strip.png")
    extra = {"method": "<b>mmccd</b>", "source": "flair", "target": "t2", "threshold": 0.000123,
             "protocol": "threshold chosen on validation", "command": "mmccd evaluate --run x", "oracle": {"dice": 0.6}}
    paths = write_report(tmp_path, result, extra)
    assert sorted(p.name for p in paths.values()) == ["metrics.json", "per_slice.csv", "per_subject.csv", "report.html"]

    metrics = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert metrics["summary"]["subject_mean_dice"] == result.summary["subject_mean_dice"]
    assert metrics["per_subject"][2]["auroc"] is None  # subject C has no tumour
    assert metrics["target"] == "t2" and metrics["notes"]

    with open(tmp_path / "per_slice.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["subject_id"] == "A" and float(rows[1]["dice"]) == 0.5
    assert rows[3]["auroc"] == "nan"
    with open(tmp_path / "per_subject.csv") as f:
        subjects = list(csv.DictReader(f))
    assert [r["subject_id"] for r in subjects] == ["A", "B", "C"] and subjects[0]["n_slices"] == "2"

    page = (tmp_path / "report.html").read_text()
    assert "figures/dice%20strip.png" in page  # relative link, quoted
    assert "&lt;b&gt;mmccd&lt;/b&gt;" in page and "<b>mmccd</b>" not in page
    assert "AUPRC" in page and "0.000123" in page and "per subject (headline)" in page


def test_report_without_figures_and_custom_csv_name(tmp_path, two_subjects):
    paths = write_report(tmp_path / "run", evaluate_maps(two_subjects, 0.5), {}, per_slice_csv_name="slices.csv")
    assert paths["per_slice"].name == "slices.csv" and paths["report"].exists()
    assert "<img" not in paths["report"].read_text()

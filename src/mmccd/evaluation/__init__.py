"""Evaluation: metrics inside the brain mask, validation-chosen thresholds, post-processing, figures, reports.

numpy in, numpy out; no torch. Typical use::

    choice = choose_threshold(val_records)                  # on VALIDATION subjects only
    result = evaluate_maps(test_records, choice.threshold)  # applied once to test
    write_report(run_dir, result, {"method": "mmccd", "threshold": choice.describe()})
    write_case_view(out / case_view_name(case_id), image, anomaly_map, choice.threshold, pred_mask, gt_mask, title)
"""

from mmccd.evaluation.figures import dice_threshold_plot, figure_grid, montage, subject_strip_plot
from mmccd.evaluation.metrics import (
    METRICS,
    EvalResult,
    MapRecord,
    auprc,
    auroc,
    dice,
    evaluate_maps,
    group_by_subject,
    predict,
    slice_metrics,
)
from mmccd.evaluation.postprocess import PostProcess, erode_brain, median_filter, remove_small_components
from mmccd.evaluation.report import write_report
from mmccd.evaluation.thresholds import (
    ThresholdChoice,
    candidate_thresholds,
    choose_threshold,
    dice_curve,
    oracle_threshold,
)
from mmccd.evaluation.viewer import case_view_name, write_case_view

__all__ = [
    "METRICS", "EvalResult", "MapRecord", "PostProcess", "ThresholdChoice", "auprc", "auroc",
    "candidate_thresholds", "case_view_name", "choose_threshold", "dice", "dice_curve", "dice_threshold_plot", "erode_brain",
    "evaluate_maps", "figure_grid", "group_by_subject", "median_filter", "montage", "oracle_threshold",
    "predict", "remove_small_components", "slice_metrics", "subject_strip_plot", "write_case_view",
    "write_report",
]

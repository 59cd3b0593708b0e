"""Evaluation: metrics inside the brain mask, validation-chosen thresholds, post-processing, figures, reports.

numpy in, numpy out; no torch. Typical use::

    choice = choose_threshold(val_records)                  # on VALIDATION subjects only
    result = evaluate_maps(test_records, choice.threshold)  # applied once to test
    write_report(run_dir, result, {"method": "mmccd", "threshold": choice.describe()})
    lesions = evaluate_lesions(test_records, choice.threshold, spacing)   # lesion-wise, HD95, volumes
    best = compare_to_best({m: subject_values(r.per_subject) for m, r in results.items()})
    write_case_view(out / case_view_name(case_id), image, anomaly_map, choice.threshold, pred_mask, gt_mask, title)
"""

from mmccd.evaluation.figures import dice_threshold_plot, figure_grid, montage, subject_strip_plot
from mmccd.evaluation.lesions import (
    evaluate_lesions,
    hd95,
    lesion_detection,
    stack_subject,
    subject_lesion_metrics,
    summarise_lesions,
    volume_metrics,
)
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
from mmccd.evaluation.postprocess import (
    PostProcess,
    erode_brain,
    median_filter,
    median_filter_3d,
    remove_small_components,
    remove_small_components_3d,
)
from mmccd.evaluation.report import write_report
from mmccd.evaluation.stats import (
    BestComparison,
    PairedComparison,
    compare_paired,
    compare_to_best,
    subject_values,
)
from mmccd.evaluation.thresholds import (
    ThresholdChoice,
    candidate_thresholds,
    choose_threshold,
    dice_curve,
    oracle_threshold,
)
from mmccd.evaluation.viewer import case_view_name, write_case_view

__all__ = [
    "METRICS", "BestComparison", "EvalResult", "MapRecord", "PairedComparison", "PostProcess", "ThresholdChoice",
    "auprc", "auroc", "candidate_thresholds", "case_view_name", "choose_threshold", "compare_paired",
    "compare_to_best", "dice", "dice_curve", "dice_threshold_plot", "erode_brain", "evaluate_lesions",
    "evaluate_maps", "figure_grid", "group_by_subject", "hd95", "lesion_detection", "median_filter",
    "median_filter_3d", "montage", "oracle_threshold", "predict", "remove_small_components",
    "remove_small_components_3d", "slice_metrics", "stack_subject", "subject_lesion_metrics", "subject_strip_plot",
    "subject_values", "summarise_lesions", "volume_metrics", "write_case_view", "write_report",
]

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


def _sections(page: str, markers: list[str]) -> list[int]:
    where = [page.find(m) for m in markers]
    assert all(i >= 0 for i in where), [m for m, i in zip(markers, where, strict=True) if i < 0]
    return where


def test_report_leads_with_the_answer_and_rounds_for_people(tmp_path, make_records):
    import numpy as np

    from mmccd.evaluation.figures import dice_threshold_plot

    records = make_records(np.random.default_rng(0), n_subjects=3)
    result = evaluate_maps(records, 0.43210987)
    figures = tmp_path / "figures"
    t = np.linspace(0, 1, 5)
    for name in ("a_other.png", "dice_vs_threshold.png", "examples.png"):  # written in another order on purpose
        dice_threshold_plot(t, t, None, 0.5, figures / name)
    extra = {"method": "mmccd", "source": "flair", "target": "t2", "slices": "max_tumour", "n_val_subjects": 2,
             "threshold_source": "validation subjects (best mean Dice)", "threshold": result.threshold,
             "oracle_threshold": 0.51234, "oracle_dice_test": 0.7123456, "score_config": {"masks": 16},
             "command": "mmccd evaluate --run runs/x", "code_version": "abc123", **result.summary}
    views = {"S0": "views/S0_view.html", "S1": "views/S 1#?.html"}
    write_report(tmp_path, result, extra, views=views)
    page = (tmp_path / "report.html").read_text()

    order = _sections(page, ["mmccd, flair → t2: threshold 0.432 chosen on 2 validation subjects",
                             "class='headline'", "oracle Dice", "figures/examples.png",
                             "figures/dice_vs_threshold.png", "figures/a_other.png", "<h2>Per subject</h2>",
                             "<summary>All metrics", "<summary>Configuration", "<summary>Provenance"])
    assert order == sorted(order)
    lead = page[:page.index("</section>")]
    assert lead.count(". ") == 0 and "3 test subjects" in lead and "n = 3" in lead  # one sentence, n subjects
    s = result.summary
    assert f"{s['subject_mean_dice']:.3f} ± {s['subject_std_dice']:.3f}" in lead
    assert f"{s['subject_mean_dice']:.4f}" not in page  # rounded for people; exact values in metrics.json
    assert "0.712" in lead and "0.7123" not in page and "for comparison with papers only, not a result" in lead
    # the oracle is its own row, not the headline value
    assert lead.index("oracle Dice") > lead.index(f"{s['subject_mean_dice']:.3f}")
    # configuration and provenance stay collapsed, below everything else
    assert "<details open" not in page and "abc123" in page[page.index("<summary>Provenance"):]
    assert page.index("&quot;masks&quot;: 16") > page.index("<summary>Configuration")
    # case views linked per subject, paths quoted; a subject without a view gets a dash
    assert "href='views/S0_view.html'" in page and "href='views/S%201%23%3F.html'" in page
    rows = page[page.index("<h2>Per subject</h2>"):page.index("<summary>All metrics")]
    assert rows.count(">open</a>") == 2 and rows.count("<td>–</td>") == 1

    metrics = json.loads((tmp_path / "metrics.json").read_text())  # keys and exact values unchanged
    assert set(metrics) == set(extra) | {"summary", "pooled", "per_subject", "notes", "per_slice_csv"}
    assert metrics["summary"]["subject_mean_dice"] == s["subject_mean_dice"]
    assert metrics["oracle_dice_test"] == 0.7123456


def test_report_html_blocks_for_other_reports():
    from mmccd.evaluation.report_html import Raw, details, fmt, fmt_threshold, lead, link, page, table

    text = page("bench <1>", [lead("A → B: one sentence.", table(["method", "Dice"], [["x<y", 0.123456], ["z", None]],
                                                                   cls="headline")),
                              details("Configuration", Raw("<p>cfg</p>"))])
    assert text.index("one sentence") < text.index("<table class='headline'>") < text.index("<details><summary>")
    assert "<td class='num'>0.123</td>" in text and "x&lt;y" in text and "<td>–</td>" in text
    assert "<title>bench &lt;1&gt;</title>" in text
    assert fmt(float("nan")) == "NaN" and fmt(3) == "3" and fmt(True) == "yes" and fmt_threshold(0.000123456) == "0.000123"
    assert link("a b.html", "<x>") == "<a href='a%20b.html'>&lt;x&gt;</a>"

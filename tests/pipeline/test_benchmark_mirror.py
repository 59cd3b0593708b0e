"""A benchmark of both flair:t2 and t2:flair trains Cyclic UNet's two translators once: on t2:flair they swap roles
(and MMCCD's backward net there is flair:t2's forward one). Checked on a tiny SYNTHETIC phantom: the checkpoints are
the same bytes, nothing is trained again, and a translator trained otherwise (coarse source noise, another seed) is
not borrowed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mmccd.config import load_config
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.splits import Split
from mmccd.data.store import PreparedStore
from mmccd.pipeline.benchmark import run_benchmark
from mmccd.pipeline.benchmark.plan import plan_runs, remaining_networks
from mmccd.pipeline.runs import _copy_mirrored_checkpoint

PRESET = """\
name: mirror-test
prepare: {size: 32, min_brain_fraction: 0.15, workers: 1}
network: {base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [],
          num_head_channels: 8, dropout: 0.0}
diffusion: {stripe_width: 32}
train: {iterations: 4, batch_size: 4, lr: 0.001, checkpoint_every: 2, log_every: 2}
score: {num_masks: 4, ddim_steps: 1, mask_batch: 4}
eval: {figure_slices: 0}
"""
SPLIT = Split(name="test split", train=("a", "b"), val=("c",), test=("d",))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    write_phantom_dataset(root / "cases", n_cases=6, seed=4, shape=(48, 48, 24))
    (root / "preset.yaml").write_text(PRESET)
    run_benchmark(root / "cases", root / "out", preset=root / "preset.yaml", methods=["cyclic-unet", "mmccd"],
                  pairs=["flair:t2", "t2:flair"], protocols=["max_tumour"])
    return root, root / "out" / "runs"


def test_t2_flair_cyclic_unet_is_flair_t2_with_its_translators_swapped(bench):
    _, runs = bench
    fwd, rev = runs / "cyclic-unet_flair-t2", runs / "cyclic-unet_t2-flair"
    for mine, theirs in (("source_to_target", "target_to_source"), ("target_to_source", "source_to_target")):
        assert (rev / "checkpoints" / f"{mine}.pt").read_bytes() == (fwd / "checkpoints" / f"{theirs}.pt").read_bytes()
    info = json.loads((rev / "run_info.json").read_text())
    assert set(info["borrowed"]) == {"source_to_target", "target_to_source"}
    assert not (rev / "logs" / "source_to_target.csv").exists()  # nothing trained there
    metrics = json.loads((rev / "eval-max_tumour" / "metrics.json").read_text())  # evaluated as its own row
    assert metrics["test_store"] == str((runs.parent / "prepared").resolve())  # not RUN/../../prepared
    # MMCCD on t2:flair: its backward net (flair -> t2) is flair:t2's forward one; its diffusion model its own
    mm = runs / "mmccd_t2-flair" / "checkpoints"
    assert (mm / "target_to_source.pt").read_bytes() == (fwd / "checkpoints" / "source_to_target.pt").read_bytes()
    assert (runs / "mmccd_t2-flair" / "logs" / "source_to_target.csv").exists()
    assert not (runs / "mmccd_t2-flair" / "logs" / "target_to_source.csv").exists()
    results = json.loads((runs.parent / "results.json").read_text())
    (row,) = [e for e in results["results"] if (e["method"], e["pair"]) == ("cyclic-unet", "t2:flair")]
    assert "source_to_target is target_to_source of cyclic-unet_flair-t2" in row["train_note"]
    assert row["borrowed_networks"] == ["source_to_target", "target_to_source"]
    # a borrowed network records the code that trained it in the provider's run, not this call's
    fwd_info = json.loads((fwd / "run_info.json").read_text())
    assert info["code_version_by_net"] == {"source_to_target": fwd_info["code_version_by_net"]["target_to_source"],
                                           "target_to_source": fwd_info["code_version_by_net"]["source_to_target"]}
    mm_info = json.loads((runs / "mmccd_t2-flair" / "run_info.json").read_text())
    assert mm_info["code_version_by_net"]["target_to_source"] == fwd_info["code_version_by_net"]["source_to_target"]
    assert row["trained_with_code_by_net"] == info["code_version_by_net"]
    assert "in swapped roles" in (runs.parent / "results.md").read_text()


def test_the_plan_mirrors_only_what_is_trained_alike(bench):
    root, runs = bench
    pairs = [("flair", "t2", ("cyclic-unet", "mmccd")), ("t2", "flair", ("cyclic-unet", "mmccd"))]
    specs = {(s.method, s.pair): s for s in plan_runs(root / "out", root / "preset.yaml", pairs, [SPLIT], cv=False)}
    assert specs[("cyclic-unet", "t2:flair")].mirror == runs / "cyclic-unet_flair-t2"
    assert specs[("cyclic-unet", "flair:t2")].mirror is None and specs[("mmccd", "t2:flair")].mirror is None
    assert remaining_networks(specs[("cyclic-unet", "t2:flair")]) == []  # the estimate counts it once
    # with coarse noise on the forward net's source the two translators are trained differently: no mirror
    (root / "noisy.yaml").write_text("extends: preset.yaml\ntrain: {source_noise_std: 0.2}\n")
    noisy = plan_runs(root / "out", root / "noisy.yaml", pairs, [SPLIT], cv=False)
    assert all(s.mirror is None for s in noisy)


def test_a_translator_trained_otherwise_is_not_borrowed(bench, tmp_path):
    root, runs = bench
    src = runs / "cyclic-unet_flair-t2" / "checkpoints" / "target_to_source.pt"  # t2 -> flair
    cfg = load_config(root / "preset.yaml", {"method": "cyclic-unet", "source": "t2", "target": "flair"})
    cfg = replace(cfg, prepare=PreparedStore.open(root / "out" / "prepared").config)  # as train_run builds it
    assert _copy_mirrored_checkpoint(src, tmp_path / "same.pt", cfg)
    assert (tmp_path / "same.pt").read_bytes() == src.read_bytes()
    assert not _copy_mirrored_checkpoint(src, tmp_path / "seed.pt", replace(cfg, train=replace(cfg.train, seed=7)))
    assert not _copy_mirrored_checkpoint(src, tmp_path / "pair.pt", replace(cfg, source="flair", target="t2"))
    assert not (tmp_path / "seed.pt").exists() and not (tmp_path / "pair.pt").exists()


def test_trained_with_code_names_every_network_s_code():
    from mmccd.pipeline.benchmark.results import trained_with_code

    assert trained_with_code({"code_version": "call", "code_version_by_net": {"a": "old", "b": "new"}}) == "new, old"
    assert trained_with_code({"code_version": "call", "code_version_by_net": {"a": "old", "b": "old"}}) == "old"
    assert trained_with_code({"code_version": "call"}) == "call"  # a network-free method (the threshold)
    # a cross-validated row: every fold's run, not only the first fold's
    assert trained_with_code({"code_version": "a", "code_version_by_net": {"x": "old"}},
                             {"code_version": "b", "code_version_by_net": {"x": "new"}}) == "new, old"
    assert trained_with_code({}) is None

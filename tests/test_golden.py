"""Golden outputs: every method on a tiny SYNTHETIC phantom, pinned so that a refactoring cannot move them.

For each method: train a few steps, evaluate (threshold on validation, metrics on test) with the run's own
scoring, and score one whole case into NIfTI. What is pinned (tests/golden/golden.json):
- the sha256 of every evaluation map (float32 bytes), of the whole-volume NIfTI map, and the metrics;
- a few map values, compared with a tolerance where the bit-exact comparison does not apply.

Bit for bit on the machine kind the goldens were written on (same torch version, CPU capability and processor);
elsewhere (another CPU's kernels round differently) the values are compared within 1e-4.
Regenerate after a change that is MEANT to move them: MMCCD_REGEN_GOLDEN=1 pytest tests/test_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmccd.config import load_config
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.pipeline.evaluate import evaluate_run
from mmccd.pipeline.runs import read_run_config, train_run
from mmccd.pipeline.score import score_cases
from mmccd.provenance import cpu_model
from mmccd.runtime import native_bf16
from mmccd.scoring import method_names, resolve_scoring

GOLDEN = Path(__file__).parent / "golden" / "golden.json"
REGEN = os.environ.get("MMCCD_REGEN_GOLDEN") == "1"
PRESET = """\
name: golden
prepare: {size: 32, min_brain_fraction: 0.15, workers: 1}
network: {base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [16],
          num_head_channels: 8, dropout: 0.1}
diffusion: {stripe_width: 32}
train: {iterations: 6, batch_size: 4, lr: 0.001, checkpoint_every: 3, log_every: 3}
score: {num_masks: 8, ddim_steps: 2, mask_batch: 8}
baseline: {latent_channels: 8, cond_dim: 16, noise_levels: [200, 500]}
eval: {figure_slices: 2}
device: cpu
"""
METRIC_KEYS = ("threshold", "subject_mean_dice", "subject_mean_auroc", "subject_mean_auprc", "pooled_dice",
               "pooled_auroc", "pooled_auprc", "oracle_threshold", "oracle_dice_test", "val_dice_at_threshold")


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _machine() -> dict[str, str]:
    """What decides the bits: torch, its kernel set, and the processor (an AMD EPYC and an Intel Xeon, both
    "AVX512", give different bits: MKL and oneDNN pick their kernels per processor)."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_model(),
            "native_bf16": str(native_bf16(torch.device("cpu")))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic kernels
    root = tmp_path_factory.mktemp("golden")
    write_phantom_dataset(root / "cases", n_cases=6, seed=7, shape=(48, 48, 32))
    (root / "golden.yaml").write_text(PRESET)
    prepare_dataset(root / "cases", root / "prepared", load_config(root / "golden.yaml").prepare)
    yield root
    torch.set_num_threads(threads)


def _outputs(root: Path, method: str) -> dict:
    """`method` "mmccd-fast" is the MMCCD run scored with the `fast` preset (composite, bf16 where native)."""
    preset = root / "golden.yaml"
    scoring = "fast" if method == "mmccd-fast" else "run"
    method = method.removesuffix("-fast")
    run = root / "runs" / method
    if not (run / "config.yaml").exists():
        torch.manual_seed(0)
        train_run(root / "prepared", run, load_config(preset, {"method": method}))
    settings = resolve_scoring(read_run_config(run), scoring)
    before = {p: p.stat().st_mtime_ns for p in (run / "maps").glob("*.npz")}
    summary = evaluate_run(run, settings, out_dir=run / f"eval-{scoring}", views="none").summary
    maps = {}
    for cache in sorted((run / "maps").glob("*.npz")):  # the map caches this evaluation wrote
        if before.get(cache) == cache.stat().st_mtime_ns:
            continue
        with np.load(cache) as z:
            maps[cache.stem.rsplit("_", 1)[0]] = z["maps"].astype(np.float32)  # "test_max_tumour_<digest>"
    case = sorted((root / "cases").iterdir())[0]
    score_cases(run, [case], root / "maps" / f"{method}-{scoring}", scoring=scoring, threshold=summary["threshold"],
                view=False)
    written = root / "maps" / f"{method}-{scoring}"
    volume = np.asarray(nib.load(written / f"{case.name}_anomaly.nii.gz").dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(written / f"{case.name}_pred_mask.nii.gz").dataobj)
    probe = np.random.default_rng(0)
    return {
        "metrics": {k: float(summary[k]) for k in METRIC_KEYS},
        "maps_sha256": {k: _sha(v) for k, v in maps.items()},
        "maps_probe": {k: v.ravel()[probe.integers(0, v.size, 16)].tolist() for k, v in maps.items()},
        "volume_sha256": _sha(volume),
        "volume_sum": float(volume.astype(np.float64).sum()),
        "mask_voxels": int(np.count_nonzero(mask)),
    }


@pytest.mark.parametrize("method", [*method_names(), "mmccd-fast"])
def test_outputs_are_unchanged(workdir, method):
    got = _outputs(workdir, method)
    if REGEN:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden["machine"] = _machine()
        golden.setdefault("methods", {})[method] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip("goldens regenerated")
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing: write it with MMCCD_REGEN_GOLDEN=1")
    golden = json.loads(GOLDEN.read_text())
    want = golden["methods"][method]
    if golden["machine"] == _machine():  # the same kernels: bit for bit
        assert got["maps_sha256"] == want["maps_sha256"]
        assert got["volume_sha256"] == want["volume_sha256"]
        assert got["metrics"] == want["metrics"]
        assert got["mask_voxels"] == want["mask_voxels"]
    else:  # fp32 kernels round differently; bf16 ones (`fast` where native) by bf16's 8 bits of mantissa
        # `fast` runs in bf16 where it is native, so its maps differ by bf16's rounding when either machine
        # (this one or the goldens') used it: an fp32 machine against bf16 goldens too
        bf16 = method == "mmccd-fast" and (native_bf16(torch.device("cpu"))
                                           or golden["machine"].get("native_bf16") == "True")
        rtol, atol, mtol = (5e-2, 2e-3, 2e-2) if bf16 else (1e-4, 1e-6, 1e-4)
        for k, v in want["maps_probe"].items():
            np.testing.assert_allclose(got["maps_probe"][k], v, rtol=rtol, atol=atol)
        assert got["volume_sum"] == pytest.approx(want["volume_sum"], rel=max(rtol, 1e-4))
        for k, v in want["metrics"].items():
            assert got["metrics"][k] == pytest.approx(v, rel=max(rtol, 1e-3), abs=mtol), k

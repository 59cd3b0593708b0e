"""How well a run translates healthy tissue (issue 18, docs/quality.md): on its validation subjects' tumour-free
slices, the mean absolute error and SSIM of the translated target against the real target, MMCCD's imagined
stripe alone (under its mask) against the real target, and the healthy cyclic error (source - reconstruction)^2.

    .venv/bin/python benchmarks/translation_quality.py --run results/cv/runs/fold-0/mmccd_flair-t2 [--scoring fast run]

Cyclic UNet's "translation" is its forward net's output; the DAE's is its reconstruction of the source.
Intensities are in the prepared range [-1, 1]; everything is measured inside the brain mask.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from mmccd.data.batch import collate_slices
from mmccd.data.dataset import SliceDataset
from mmccd.pipeline.runs import load_method, run_split, run_store
from mmccd.scoring import resolve_scoring
from mmccd.scoring.mmccd import MMCCD, imagine_targets, noise_streams

MAX_SLICES = 48  # evenly spread over the validation subjects' healthy slices


def ssim(a: torch.Tensor, b: torch.Tensor, brain: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean SSIM (Wang et al. 2004; 11 x 11 Gaussian window, sigma 1.5) of (N, 1, H, W) images over brain pixels."""
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = F.conv2d(a, w, padding=5), F.conv2d(b, w, padding=5)
    var_a = F.conv2d(a * a, w, padding=5) - mu_a**2
    var_b = F.conv2d(b * b, w, padding=5) - mu_b**2
    cov = F.conv2d(a * b, w, padding=5) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s[brain].mean())


@torch.inference_mode()
def translation_quality(run: Path, scorings: tuple[str, ...] = ("fast", "run")) -> dict:
    """{scoring: {translation_mae, translation_ssim, stripe_mae (MMCCD), cyclic_error, n_slices}}."""
    method = load_method(run, "cpu")
    cfg = method.cfg
    store, split = run_store(run), run_split(run)
    dataset = SliceDataset(store, list(split.val), cfg.source, cfg.target, slices="train")
    idx = torch.linspace(0, len(dataset) - 1, min(MAX_SLICES, len(dataset))).round().long().unique().tolist()
    batch = collate_slices([dataset[i] for i in idx])
    src, tgt, brain = batch.source, batch.target, batch.brain_mask
    out = {}
    for scoring in scorings if isinstance(method, MMCCD) else ("run",):
        settings = resolve_scoring(cfg, scoring)
        stripe_mae = None
        with method.inference(settings) as nets:
            if isinstance(method, MMCCD):
                masks = method.masks(settings)
                streams = noise_streams(torch.Generator().manual_seed(settings.seed), src, len(masks))
                forward = method.nets["source_to_target"]
                err_sum, area = 0.0, 0.0
                y_sum = torch.zeros_like(src)
                for rows in imagine_targets(nets["source_to_target"], forward.schedule, src, masks, streams, settings):
                    h = rows.hidden * brain[rows.slice_idx]
                    err_sum += float(((rows.y_hat.float() - tgt[rows.slice_idx]).abs() * h).sum())
                    area += float(h.sum())
                    y_sum.index_add_(0, rows.slice_idx, rows.y_hat.float() * rows.hidden)
                translation = y_sum / (1.0 - masks).sum(0).clamp_min(1)
                stripe_mae = err_sum / max(area, 1.0)
                recon = nets["target_to_source"](translation).float()
            elif "source_to_target" in method.nets:
                translation = nets["source_to_target"](src).float()
                recon = nets["target_to_source"](translation).float()
            else:  # single-contrast methods: what they compare the source with
                translation = recon = method.score(batch, settings).reconstruction
                tgt_here = src
        reference = tgt if "source_to_target" in method.nets else tgt_here
        out[scoring] = {"translation_mae": float((translation - reference).abs()[brain].mean()),
                        "translation_ssim": ssim(translation.float(), reference.float(), brain),
                        "stripe_mae": stripe_mae,
                        "cyclic_error": float(((src - recon) ** 2)[brain].mean()), "n_slices": len(idx)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--scoring", nargs="+", default=["fast", "run"])
    args = p.parse_args()
    print(json.dumps(translation_quality(args.run, tuple(args.scoring)), indent=1))


if __name__ == "__main__":
    main()

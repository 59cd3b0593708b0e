"""Train and export the built-in model (`mmccd score --model builtin:flair-t2`): MMCCD on the shared BraTS cases.

All labelled cases of a prepared store take part: `--val N` of them (drawn with `--seed`) choose the threshold
and fit the healthy calibration, the others train. There is no test subject: the model's accuracy is what the
cross-validation benchmark measures for the same method and preset (docs/results.md); this run only makes the
model that ships.

    .venv/bin/python benchmarks/train_builtin.py --prepared results/cv/prepared --out results/builtin \\
        --preset cpu --scoring fast-cal --model src/mmccd/builtin/flair-t2.mmccd

Resumable (run it again to continue the training); the export writes float16 weights (the file must stay under
12 MB in the package) and says what it was trained on and under which terms.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from mmccd.config import load_config
from mmccd.data.splits import Split
from mmccd.data.store import PreparedStore
from mmccd.pipeline.export import export_run
from mmccd.pipeline.runs import train_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the run folder's parent")
    p.add_argument("--preset", default="cpu", help="the training preset (or a variant's preset)")
    p.add_argument("--scoring", default="fast", help="the score settings the model ships with")
    p.add_argument("--pair", default="flair:t2")
    p.add_argument("--val", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, help="export the model file here when training has finished")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    source, target = args.pair.split(":")
    store = PreparedStore.open(args.prepared)
    splits = store.splits()
    ids = sorted(splits["train"] + splits["val"] + splits["test"])
    val = sorted(ids[i] for i in np.random.default_rng(args.seed).permutation(len(ids))[: args.val])
    split = Split(f"all {len(ids)} labelled cases: {len(ids) - len(val)} train, {len(val)} validation (seed "
                  f"{args.seed}), no test", tuple(s for s in ids if s not in val), tuple(val), ())
    cfg = load_config(args.preset, {"method": "mmccd", "source": source, "target": target})
    run = args.out / f"mmccd_{source}-{target}"
    train_run(args.prepared, run, cfg, resume=True, split=split)
    print(f"trained {run} on {split.name}")
    if args.model:
        description = (f"{len(split.train)} BraTS 2018 training cases (the shared development set: {', '.join(split.train)}); "
                       f"threshold and calibration on {len(val)} more ({', '.join(val)}); preset {args.preset}, "
                       f"{cfg.train.iterations} steps per network, {cfg.prepare.size} px")
        model = export_run(run, args.model, args.scoring, half=True, description=description, overwrite=True)
        print(f"model: {model} ({model.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

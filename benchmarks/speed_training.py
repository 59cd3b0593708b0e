"""Training step time: `mmccd.training.train_network` vs a plain PyTorch loop (issue 6).

Same network (freshly built each time from the same seed), same dataset, batch size and loss; the timings
alternate (train_network, plain, train_network, plain, ...) so load from other processes hits both alike.
  train_network  the toolkit's loop: step-seeded data order, random flips, AdamW, EMA update, logging,
                 one checkpoint at the end (what `mmccd train` runs)
  plain          DataLoader(shuffle=True) -> loss -> zero_grad -> backward -> AdamW step; nothing else
Reported: seconds per step (the first `--warmup` steps of each run are excluded) and the fraction of
step time spent waiting for the next batch (data wait).

    .venv/bin/python benchmarks/speed_training.py --prepared results/bench-cpu/prepared --preset cpu \
        --method mmccd --net source_to_target --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmccd.config import ExperimentConfig, load_config, merge
from mmccd.data.batch import collate_slices
from mmccd.data.dataset import SliceDataset
from mmccd.data.store import PreparedStore
from mmccd.scoring import build_method
from mmccd.training import train_network


def fresh_net(cfg: ExperimentConfig, name: str) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg)
    return method.nets[name], method.losses()[name]


def toolkit_loop(cfg: ExperimentConfig, name: str, dataset: SliceDataset, steps: int, warmup: int) -> tuple[float, float]:
    """Seconds per step after `warmup` steps (difference of two runs: warmup and warmup + steps) and data wait."""
    times, waits = [], []
    for n in (warmup, warmup + steps):
        net, loss = fresh_net(cfg, name)
        run_cfg = merge(cfg, {"train": {"iterations": n, "checkpoint_every": 10**9, "log_every": 10**9}})
        with tempfile.TemporaryDirectory() as tmp:
            result = train_network(net, loss, dataset, run_cfg, Path(tmp) / f"{name}.pt", name, torch.device("cpu"))
        times.append(result.seconds)
        waits.append(result.data_wait_fraction * result.seconds)
    return (times[1] - times[0]) / steps, (waits[1] - waits[0]) / max(times[1] - times[0], 1e-9)


def plain_loop(cfg: ExperimentConfig, name: str, dataset: SliceDataset, steps: int, warmup: int) -> tuple[float, float]:
    net, loss_fn = fresh_net(cfg, name)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_slices, num_workers=cfg.train.num_workers)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    net.train()
    done, wait, start = 0, 0.0, 0.0
    t_wait = time.perf_counter()
    while done < warmup + steps:
        for batch in loader:
            if done == warmup:
                wait, start = 0.0, time.perf_counter()
                t_wait = start
            wait += time.perf_counter() - t_wait
            loss = loss_fn(net, batch, generator)  # type: ignore[operator]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            t_wait = time.perf_counter()
            if done == warmup + steps:
                break
    total = time.perf_counter() - start
    return total / steps, wait / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", type=Path, required=True, help="prepared store (its training subjects are used)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--method", default="mmccd")
    p.add_argument("--net", default="source_to_target", help="which network of the method to train")
    p.add_argument("--steps", type=int, default=30, help="timed steps per run (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="steps excluded from timing (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers for both loops (default: the preset's)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = PreparedStore.open(args.prepared)
    overrides: dict = {"method": args.method, "device": "cpu"}
    if args.num_workers is not None:
        overrides["train"] = {"num_workers": args.num_workers}
    cfg = merge(load_config(args.preset, overrides), {"prepare": {"size": store.config.size}})
    dataset = SliceDataset(store, store.splits()["train"], cfg.source, cfg.target, slices="train")
    res: dict[str, list[tuple[float, float]]] = {"train_network": [], "plain": []}
    for r in range(args.rounds):
        for name, loop in (("train_network", toolkit_loop), ("plain", plain_loop)):
            res[name].append(loop(cfg, args.net, dataset, args.steps, args.warmup))
            sec, wait = res[name][-1]
            print(f"round {r + 1} {name:13s} {sec:.3f} s/step  data wait {100 * wait:.1f}%", flush=True)
    med = {k: (statistics.median(s for s, _ in v), statistics.median(w for _, w in v)) for k, v in res.items()}
    print(f"\n{args.method}/{args.net}, preset {args.preset} ({cfg.prepare.size} px), batch {cfg.train.batch_size}, "
          f"{len(dataset)} training slices, {cfg.train.num_workers} workers, {torch.get_num_threads()} threads; "
          f"median of {args.rounds} alternating rounds of {args.steps} steps\n")
    print("| loop | s / step | × plain | data wait |")
    print("|---|---:|---:|---:|")
    for k, (sec, wait) in med.items():
        print(f"| {k} | {sec:.3f} | {sec / med['plain'][0]:.2f} | {100 * wait:.1f}% |")


if __name__ == "__main__":
    main()

"""One training loop for every network: AdamW, EMA, AMP, DDP, exact resume (checkpoints.py holds the files).

The batch drawn at step s depends only on (seed, s): epoch e shuffles the training slices with a
generator seeded by (seed, e), so a resumed run sees the same data order. Loss randomness (noise,
timesteps, masks) comes from one torch.Generator whose state is checkpointed with the model,
optimizer, EMA and global RNG, so a CPU run killed at any point and resumed ends with the same
weights as an uninterrupted one.

Under `torchrun` (torch.distributed initialised, see distributed.py) each rank takes an equal share
`global_batch[rank::world]` of every global batch and DistributedDataParallel averages the
gradients; every loss is a mean over the rank's slices, so the update is the one a single process
computes on the whole global batch. Loss noise and dropout differ per rank (each rank has its own
generator and global RNG, both checkpointed per rank); rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mmccd.atomic import atomic_write_text, disk_full_as_error
from mmccd.checkpoints import load_checkpoint, load_state_checked, save_checkpoint
from mmccd.config import ExperimentConfig, TrainConfig
from mmccd.data.batch import SliceBatch, collate_slices
from mmccd.distributed import barrier, dist_info, in_process_group
from mmccd.errors import ConfigError, DataError, MmccdError
from mmccd.models import LossFn
from mmccd.progress import progress
from mmccd.runtime import autocast, autocast_dtype

log = logging.getLogger("mmccd")


# ---------------------------------------------------------------- data order


def global_batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the global batch at `step`: consecutive windows of per-epoch permutations."""
    out: list[int] = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(batch_size - len(out), n - offset)
        out.extend(perm[offset: offset + take].tolist())
    return out


class _StepBatches(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's share of the global batches from `start_step` to `stop_step`."""

    def __init__(self, n: int, cfg: TrainConfig, start_step: int, stop_step: int, rank: int, world: int):
        self.n, self.cfg, self.start, self.stop, self.rank, self.world = n, cfg, start_step, stop_step, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield global_batch_indices(self.n, self.cfg.batch_size, step, self.cfg.seed)[self.rank:: self.world]

    def __len__(self) -> int:
        return self.stop - self.start


class TrainingDivergedError(MmccdError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    net_name: str
    steps: int
    seconds: float
    final_loss: float
    checkpoint: Path
    data_wait_fraction: float  # of this session's wall time spent waiting for batches
    trained_now: bool = True  # False when the checkpoint had already finished


# ---------------------------------------------------------------- the loop


class _LossModule(nn.Module):
    """Wraps net + loss so DistributedDataParallel sees the loss computation as its forward."""

    def __init__(self, net: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, batch: SliceBatch, generator: torch.Generator) -> Tensor:
        return self.loss_fn(self.net, batch, generator)


def _flip(batch: SliceBatch, generator: torch.Generator) -> SliceBatch:
    """Random left-right flip per slice (brains are roughly symmetric); same draw for all fields."""
    flip = torch.rand(len(batch), generator=generator, device=generator.device) < 0.5
    flip = flip.to(batch.source.device).view(-1, 1, 1, 1)

    def f(x: Tensor) -> Tensor:
        return torch.where(flip, x.flip(-1), x)

    return SliceBatch(source=f(batch.source), target=f(batch.target), brain_mask=f(batch.brain_mask),
                      gt_mask=None if batch.gt_mask is None else f(batch.gt_mask),
                      subject_id=batch.subject_id, slice_index=batch.slice_index)


def train_network(
    net: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    cfg: ExperimentConfig,
    checkpoint: Path,
    net_name: str,
    device: torch.device,
    log_dir: Path | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train `net` with `loss_fn` on `dataset` for cfg.train.iterations steps (resuming `checkpoint`).

    The EMA weights end up in `net` when training finishes (they are what scoring uses).
    `stop_after` ends the run early after that many steps in this call (for tests of resume)."""
    tc = cfg.train
    rank, world = dist_info()
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("no training slices: every training subject's slices hold tumour or too little brain",
                        fix="check prepare.min_brain_fraction / train_slice_window or add subjects")
    if tc.batch_size % world:
        raise ConfigError(f"train.batch_size {tc.batch_size} is not divisible by the {world} processes")

    net.to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    amp_dtype = autocast_dtype(tc.amp, device, "train.amp")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # bf16 needs no loss scaling
    generator = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + rank)
    if world > 1:  # own dropout draws per rank (rank 0 keeps the single-process stream)
        _seed_rank_rng(tc.seed, rank, 0)
        barrier()  # rank 0 has prepared the run folder (e.g. deleted it for --overwrite) before anyone reads it
    step = 0
    previous_seconds = 0.0  # training time of earlier (interrupted) sessions, kept in the checkpoint

    if checkpoint.exists():
        ckpt = load_checkpoint(checkpoint)
        load_state_checked(net, ckpt["model"], checkpoint)
        load_state_checked(ema, ckpt["ema"], checkpoint, "EMA model")
        step = int(ckpt["step"])
        previous_seconds = float(ckpt.get("train_seconds", 0.0))
        if step < tc.iterations:
            opt.load_state_dict(ckpt["optimizer"])
            _load_scaler(scaler, ckpt["scaler"], net_name)
            _restore_rng(ckpt["rng"], generator, tc.seed, step, rank, world, net_name)
            log.info("%s: resuming from step %d (%s)", net_name, step, checkpoint)
    if step >= tc.iterations:
        net.load_state_dict(ema.state_dict())
        return TrainResult(net_name, step, previous_seconds, float("nan"), checkpoint, 0.0, trained_now=False)

    model: nn.Module = _LossModule(net, loss_fn)
    if in_process_group():  # also a group of one under torchrun: the NCCL/DDP path runs on a one-GPU machine
        # DDP broadcasts rank 0's weights now and averages gradients in backward
        ids = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    stop = tc.iterations if stop_after is None else min(tc.iterations, step + stop_after)
    loader = DataLoader(dataset, batch_sampler=_StepBatches(n, tc, step, stop, rank, world),
                        collate_fn=collate_slices, num_workers=tc.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator())  # own generator: creating the iterator must not draw from the global RNG

    writer = _Logger(log_dir, net_name, step) if rank == 0 and log_dir is not None else None
    bar = progress(total=tc.iterations, initial=step, desc=f"train {net_name}", disable=rank != 0)
    t_start = time.perf_counter()
    wait = 0.0
    loss_value = float("nan")
    ema_loss = None
    net.train()
    t_wait = time.perf_counter()
    for batch in loader:
        wait += time.perf_counter() - t_wait
        batch = batch.to(device)
        if tc.augment_flip:
            batch = _flip(batch, generator)
        with autocast(amp_dtype, device):
            loss = model(batch, generator)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        _ema_update(ema, net, tc.ema_decay, step, tc.ema_warmup)
        loss_value = _mean_over_ranks(loss.detach(), world)  # the global batch's loss, the same on every rank
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(f"{net_name}: the loss became {loss_value} at step {step}; lower train.lr "
                                        "or use --amp none, then train again (--overwrite)")
        ema_loss = loss_value if ema_loss is None else 0.98 * ema_loss + 0.02 * loss_value
        bar.update(1)
        if step % 10 == 0 or step == stop:
            bar.set_postfix(loss=f"{ema_loss:.4f}")
        elapsed = time.perf_counter() - t_start
        if writer and (step % tc.log_every == 0 or step == stop):
            writer.write(step, loss_value, ema_loss, opt.param_groups[0]["lr"], elapsed, wait / max(elapsed, 1e-9))
        if step % tc.checkpoint_every == 0 or step == stop:
            rng = _gather_rng(generator, world)  # a collective: every rank takes part
            if rank == 0:
                save_checkpoint(checkpoint, net, ema, opt, scaler, rng, step, cfg, net_name, previous_seconds + elapsed)
        t_wait = time.perf_counter()
    bar.close()
    if writer:
        writer.close()
    barrier()  # nobody reads the checkpoint before rank 0 has written it
    seconds = time.perf_counter() - t_start
    if step >= tc.iterations:
        net.load_state_dict(ema.state_dict())
    return TrainResult(net_name, step, previous_seconds + seconds, loss_value, checkpoint, wait / max(seconds, 1e-9))


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float, step: int, warmup: bool) -> None:
    d = min(decay, (1 + step) / (10 + step)) if warmup else decay
    ema_params, net_params = list(ema.parameters()), [p.detach() for p in net.parameters()]
    if len(ema_params) != len(net_params):
        raise ValueError("the EMA model and the network have different parameters")
    torch._foreach_lerp_(ema_params, net_params, 1 - d)  # one fused call (what torch.optim's EMA helpers use)
    for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(bn)


def _mean_over_ranks(loss: Tensor, world: int) -> float:
    if world > 1:
        loss = loss.float().clone()
        dist.all_reduce(loss)  # SUM: gloo has no AVG
        loss /= world
    return float(loss)


def _seed_rank_rng(seed: int, rank: int, step: int) -> None:
    """Global RNG (dropout) of rank > 0 in a multi-process run; rank 0 keeps the seed_everything stream."""
    if rank:
        torch.manual_seed((seed * 1_000_003 + rank) * 1_000_033 + step)


def _gather_rng(generator: torch.Generator, world: int) -> dict[str, Any]:
    """Every rank's loss generator and global CPU/CUDA RNG states (rank order), for the checkpoint."""
    own = {"generator": generator.get_state().cpu(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(generator.device) if generator.device.type == "cuda" else None}
    states: list[dict[str, Any]] = [own]
    if world > 1:
        states = [{}] * world
        dist.all_gather_object(states, own)
    rng: dict[str, Any] = {"torch": states[0]["torch"], "generator": [s["generator"] for s in states],
                           "device": generator.device.type}  # a CPU and a CUDA generator state do not fit each other
    if world > 1:
        rng["torch_ranks"] = [s["torch"] for s in states]
    if own["cuda"] is not None:
        rng["cuda"] = [s["cuda"] for s in states]
    return rng


def _restore_rng(rng: dict[str, Any], generator: torch.Generator, seed: int, step: int, rank: int, world: int,
                 net_name: str) -> None:
    """Restore this rank's RNG states; with another number of processes than the checkpoint's, or its loss
    generator on another kind of device (CPU / CUDA), the data order still continues exactly but loss noise
    and dropout are drawn afresh (a warning)."""
    saved = len(rng["generator"])
    saved_device = rng.get("device", "cuda" if "cuda" in rng else "cpu")  # older checkpoints: "cuda" only from CUDA
    if saved == world and saved_device == generator.device.type:
        generator.set_state(rng["generator"][rank])
        torch.set_rng_state(rng["torch_ranks"][rank] if "torch_ranks" in rng else rng["torch"])
        if "cuda" in rng and generator.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"][rank], generator.device)
        return
    if rank == 0:
        why = (f"was written by {saved} process(es), this run has {world}" if saved != world else
               f"drew its loss noise on {saved_device}, this run draws on {generator.device.type}")
        log.warning("%s: the checkpoint %s: the data order continues exactly, loss noise and dropout are reseeded "
                    "(not bit-identical to an uninterrupted run)", net_name, why)
    generator.manual_seed((seed * 1_000_003 + rank) * 1_000_033 + step)
    if rank == 0:
        torch.set_rng_state(rng["torch"])
    else:
        _seed_rank_rng(seed, rank, step)


def _load_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any], net_name: str) -> None:
    """The checkpoint's loss-scaling state; a checkpoint made without loss scaling (fp32, bf16) resumed with fp16
    (train.amp auto resolves per device) starts from a fresh scale instead of failing."""
    if scaler.is_enabled() and not state:
        log.warning("%s: the checkpoint was trained without fp16 loss scaling; this run uses it: starting from a "
                    "fresh scale", net_name)
        return
    scaler.load_state_dict(state)


class _Logger:
    """CSV log per network (+ TensorBoard when installed: `pip install mmccd[tensorboard]`)."""

    def __init__(self, log_dir: Path, name: str, resume_step: int = 0):
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{name}.csv"
        self.path = path
        if path.exists():  # drop rows past the checkpoint we resume from (trained again) and a row a full disk cut
            lines = path.read_text().splitlines(keepends=True)
            kept = lines[:1] + [ln for ln in lines[1:] if ln.endswith("\n") and ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= resume_step]
            atomic_write_text(path, "".join(kept))
        new = not path.exists()
        self.file = path.open("a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "loss", "loss_smoothed", "lr", "seconds", "data_wait_fraction"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(log_dir / "tensorboard" / name))
        except Exception:  # tensorboard is an optional extra
            self.tb = None

    def write(self, step: int, loss: float, smoothed: float, lr: float, seconds: float, wait: float) -> None:
        with disk_full_as_error(self.path):  # appended, so not atomic: a full disk still names the file
            self.csv.writerow([step, f"{loss:.6g}", f"{smoothed:.6g}", lr, f"{seconds:.1f}", f"{wait:.4f}"])
            self.file.flush()
        if self.tb:
            self.tb.add_scalar("loss", loss, step)

    def close(self) -> None:
        self.file.close()
        if self.tb:
            self.tb.close()

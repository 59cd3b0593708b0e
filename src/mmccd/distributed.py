"""Several processes (`torchrun`, or SLURM `srun` through torchrun): process group, rank, shards.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every
process it starts; `distributed_session` reads them, joins the process group (NCCL for CUDA devices,
gloo on CPU) and leaves it at the end. torchrun with one process joins a group of one, so the NCCL and
DDP path runs (and can be checked) on a one-GPU machine. Outside torchrun every function here is a
no-op for one process, so the same code runs under `python -m mmccd` and under torchrun.

What runs in several processes: training (DistributedDataParallel, training.py), and `prepare` and
`score`, which split their cases `cases[rank::world]` and merge per-rank summaries on every rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mmccd.errors import ConfigError

log = logging.getLogger("mmccd")
T = TypeVar("T")
#: collectives wait this long for the slowest rank (uneven case shards in `score` can take long)
TIMEOUT_ENV = "MMCCD_DIST_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 120


def env_world_size() -> int:
    """WORLD_SIZE set by the launcher (1 when launched without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    """WORLD_SIZE > 1, or torchrun with one process (it sets TORCHELASTIC_RUN_ID): join a process group."""
    return env_world_size() > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def in_process_group() -> bool:
    """True when torch.distributed is initialised (under torchrun, even with one process)."""
    return dist.is_available() and dist.is_initialized()


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes shared files."""
    return dist_info()[0] == 0


def init_distributed(use_cuda: bool | None = None) -> bool:
    """Join the process group when launched by torchrun (`launched_by_torchrun`); True if this call initialised it.

    use_cuda: NCCL on this rank's GPU (cuda:LOCAL_RANK) if True, gloo on CPU if False;
    None = NCCL whenever CUDA is available."""
    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        return False
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    if use_cuda and not torch.cuda.is_available():  # torch's own error here would be an assertion about its build
        raise ConfigError("a CUDA device was requested under torchrun but CUDA is not available here: "
                          "use --device cpu (gloo), or run on a machine with a GPU and a CUDA build of torch")
    if use_cuda and local_rank() >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank()} but {torch.cuda.device_count()} GPU(s) visible: start torchrun "
                          f"with --nproc_per_node {torch.cuda.device_count()} or fewer")
    if use_cuda:
        torch.cuda.set_device(local_rank())  # NCCL collectives and all_gather_object use the current device
    minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MINUTES))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=minutes))
    rank, world = dist_info()
    if rank != 0:  # one copy of every INFO line; warnings and errors of every rank still show
        logging.getLogger("mmccd").setLevel(logging.WARNING)
    log.info("process group: %d processes, backend %s", world, dist.get_backend())
    return True


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str | None = "auto") -> Iterator[tuple[int, int]]:
    """Join the process group for a stage when launched by torchrun, leave it at the end.

    device: the stage's device setting; "cpu" (or None for CPU-only stages) selects gloo,
    "auto" NCCL if CUDA is available, "cuda…" NCCL. Yields (rank, world size)."""
    use_cuda = False if device is None or device == "cpu" else (True if device.startswith("cuda") else None)
    owner = init_distributed(use_cuda)
    try:
        yield dist_info()
    finally:
        if owner:
            cleanup_distributed()


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if in_process_group():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share `items[rank::world]` (every item in one process)."""
    rank, world = dist_info()
    return list(items[rank::world])


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (a barrier too); [obj] in one process."""
    world = dist_info()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def progress_kwargs(desc: str) -> dict[str, Any]:
    """tqdm arguments for a per-rank bar: labelled with the rank, one terminal line per rank."""
    rank, world = dist_info()
    if world == 1:
        return {"desc": desc}
    return {"desc": f"{desc} [rank {rank}/{world}]", "position": local_rank()}

"""DDP in one process on the test device: NCCL on a GPU, gloo on the CPU, joined as torchrun would.

torchrun with one process (`--nproc_per_node 1`) joins a process group of one, so the NCCL path (set_device,
DDP with device_ids, barriers with device_ids) runs on a one-GPU machine; the environment torchrun sets is
set here by hand. Two ranks on the CPU are tested in tests/test_distributed.py.
Also: what a wrong device setting under torchrun says (CUDA mocked: the rules do not need a GPU).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from gpu_helpers import SliceItems, exact_cuda_kernels, free_port, state_on_cpu, toy_cfg, toy_net

from mmccd.distributed import barrier, dist_info, distributed_session, gather_objects, init_distributed
from mmccd.errors import ConfigError
from mmccd.runtime import resolve_device
from mmccd.training import train_network

pytestmark = pytest.mark.gpu


def exact_loss(net, batch, generator):  # no draws: one process with and without DDP compute the same
    return F.mse_loss(net(batch.source), batch.target)


def _torchrun_env(monkeypatch: pytest.MonkeyPatch, world: int = 1, local_rank: int = 0) -> None:
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": str(local_rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(world),
                       "TORCHELASTIC_RUN_ID": "mmccd-test"}.items():
        monkeypatch.setenv(key, value)


def test_ddp_in_a_process_group_of_one_matches_one_process(device: torch.device, tmp_path, monkeypatch) -> None:
    wrapped: list[list[int] | None] = []
    real_ddp = torch.nn.parallel.DistributedDataParallel

    class SpyDDP(real_ddp):  # type: ignore[misc, valid-type]
        def __init__(self, module, device_ids=None, **kwargs):
            wrapped.append(device_ids)
            super().__init__(module, device_ids=device_ids, **kwargs)

    cfg, data = toy_cfg(6), SliceItems()
    with exact_cuda_kernels():
        plain = toy_net(0.0)
        train_network(plain, exact_loss, data, cfg, tmp_path / "plain.pt", "toy", device)
        _torchrun_env(monkeypatch)
        monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", SpyDDP)
        with distributed_session(device.type) as (rank, world):
            assert (rank, world) == (0, 1) and dist.get_backend() == ("nccl" if device.type == "cuda" else "gloo")
            # "cuda" as the user writes it (no index): DDP's device_ids and the generator must still be right
            run_device = resolve_device(device.type)
            ddp = toy_net(0.0)
            train_network(ddp, exact_loss, data, cfg, tmp_path / "ddp.pt", "toy", run_device)
            barrier()
            assert gather_objects({"rank": rank}) == [{"rank": 0}]
        assert not dist.is_initialized()  # the session left the group
    assert wrapped == [[device.index] if device.type == "cuda" else None]
    want, got = state_on_cpu(plain), state_on_cpu(ddp)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)


def test_outside_torchrun_nothing_is_joined(monkeypatch) -> None:
    for key in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    assert init_distributed(False) is False and dist_info() == (0, 1)


def test_cuda_requested_under_torchrun_without_cuda_says_what_to_use(monkeypatch) -> None:
    """Was torch's 'Torch not compiled with CUDA enabled' from torch.cuda.set_device (any CPU machine)."""
    _torchrun_env(monkeypatch, world=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available here: use --device cpu"):
        init_distributed(use_cuda=True)
    assert not dist.is_initialized()


def test_more_processes_than_gpus_is_a_config_error(monkeypatch) -> None:
    _torchrun_env(monkeypatch, world=2, local_rank=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="LOCAL_RANK 1 but 1 GPU.*--nproc_per_node 1"):
        init_distributed(use_cuda=True)


def test_each_torchrun_process_takes_the_gpu_of_its_local_rank(monkeypatch) -> None:
    """A fixed --device cuda:0 with 2 processes on a machine put both ranks on GPU 0 while NCCL had bound
    rank 1 to GPU 1 (and with one process, cuda:1 put the model on another GPU than its collectives);
    'cuda' and 'auto' mean cuda:LOCAL_RANK, GPUs are chosen with CUDA_VISIBLE_DEVICES."""
    _torchrun_env(monkeypatch, world=2, local_rank=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda") == torch.device("cuda", 1) == resolve_device("auto")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="GPU of its LOCAL_RANK.*use --device cuda or auto.*CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda:0")
    _torchrun_env(monkeypatch, world=1, local_rank=0)
    with pytest.raises(ConfigError, match="this one cuda:0"):
        resolve_device("cuda:1")
    monkeypatch.delenv("LOCAL_RANK")  # outside torchrun: any GPU
    assert resolve_device("cuda:1") == torch.device("cuda", 1)

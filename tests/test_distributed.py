"""Several processes: DDP training over gloo (2 CPU processes via torchrun), prepare and score by case shards.

The multi-process part runs this file as a script under `python -m torch.distributed.run`
(torchrun), so the process group is joined from torchrun's environment exactly as `mmccd train`
does. With a deterministic loss (no noise, no dropout, no flip), 2 ranks x B/2 slices equal one
process with B slices up to float rounding: each rank's loss is a mean over its B/2 slices and DDP
averages the gradients of the ranks.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmccd.checkpoints import load_checkpoint
from mmccd.config import ExperimentConfig, load_config, merge
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.distributed import dist_info, distributed_session, gather_objects, progress_kwargs, shard
from mmccd.pipeline.runs import train_run
from mmccd.pipeline.score import score_cases
from mmccd.training import train_network

WORLD = 2
STOP_AFTER = 5  # the interrupted run stops here, between two checkpoints


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 20, size: int = 8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, size, size, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        x = self.x[i]
        return {"source": x, "target": -x.abs(), "brain_mask": torch.ones_like(x, dtype=torch.bool),
                "gt_mask": None, "subject_id": f"s{i}", "slice_index": i}


def toy_net(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(8, 1, 3, padding=1))


def exact_loss(net, batch, generator):  # deterministic: no draws
    return F.mse_loss(net(batch.source), batch.target)


def noisy_loss(net, batch, generator):  # loss noise from the rank's own generator
    noise = torch.randn(batch.source.shape, generator=generator, device=generator.device) * 0.1
    return F.mse_loss(net(batch.source + noise), batch.target)


def cfg(iterations: int = 12, flip: bool = False) -> ExperimentConfig:
    return merge(ExperimentConfig(), {"train": {"iterations": iterations, "batch_size": 8, "lr": 1e-2,
                                                "checkpoint_every": 4, "log_every": 4, "augment_flip": flip}})


def run_ranks(out: Path) -> None:
    """Body of every torchrun process: train, save each rank's weights as out/<run>-rank<r>.pt;
    prepare and score the phantom cases of out/phantom, each rank its shard."""
    cpu = torch.device("cpu")
    with distributed_session("cpu") as (rank, world):
        assert world == WORLD
        ds = ToyDataset()

        def save(net: nn.Module, name: str) -> None:
            torch.save(net.state_dict(), out / f"{name}-rank{rank}.pt")

        net = toy_net()  # deterministic: comparable with one process
        train_network(net, exact_loss, ds, cfg(), out / "exact.pt", "toy", cpu, log_dir=out / "logs")
        save(net, "exact")
        part = toy_net()  # interrupted after STOP_AFTER steps; the parent resumes it in one process
        train_network(part, exact_loss, ds, cfg(), out / "exact-part.pt", "toy", cpu, stop_after=STOP_AFTER)

        stochastic = cfg(flip=True)  # noise, dropout and flips differ per rank
        net = toy_net(0.2)
        train_network(net, noisy_loss, ds, stochastic, out / "noisy.pt", "toy", cpu)
        save(net, "noisy")
        part = toy_net(0.2)
        train_network(part, noisy_loss, ds, stochastic, out / "noisy-part.pt", "toy", cpu, stop_after=STOP_AFTER)
        resumed = toy_net(0.2)  # as a new process would: fresh weights, everything from the checkpoint
        train_network(resumed, noisy_loss, ds, stochastic, out / "noisy-part.pt", "toy", cpu)
        save(resumed, "noisy-resumed")
        torch.save(gather_objects(rank), out / f"gathered-rank{rank}.pt")

        tiny = load_config("tiny")
        prepared = prepare_dataset(out / "phantom", out / "prepared-ranks", dataclasses.replace(tiny.prepare, workers=1))
        scored = score_cases(out / "run", [out / "phantom"], out / "maps", device="cpu")
        torch.save({"prepared": prepared.prepared, "scored": sorted(scored.written)}, out / f"stages-rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    write_phantom_dataset(out / "phantom", n_cases=3, shape=(48, 48, 32))  # uneven shards: 2 + 1 cases
    tiny = load_config("tiny", {"method": "threshold"})  # no networks: the sharding is under test, not a model
    prepare_dataset(out / "phantom", out / "prepared", dataclasses.replace(tiny.prepare, workers=1))
    train_run(out / "prepared", out / "run", tiny)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           __file__, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _assert_equal(a: dict, b: dict) -> None:
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_weights_are_identical_on_every_rank(ranks_out: Path) -> None:
    for name in ("exact", "noisy", "noisy-resumed"):
        _assert_equal(_state(ranks_out / f"{name}-rank0.pt"), _state(ranks_out / f"{name}-rank1.pt"))
    assert _state(ranks_out / "gathered-rank1.pt") == [0, 1]


def test_two_ranks_match_one_process_with_the_same_global_batch(ranks_out: Path, tmp_path: Path) -> None:
    single = toy_net()
    train_network(single, exact_loss, ToyDataset(), cfg(), tmp_path / "single.pt", "toy", torch.device("cpu"))
    ddp = _state(ranks_out / "exact-rank0.pt")
    moved = 0.0
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6)
        moved = max(moved, (v - toy_net().state_dict()[k]).abs().max().item())
    assert moved > 1e-2  # the comparison is not between two untrained nets


def test_checkpoint_of_two_ranks_holds_every_rank_state_and_resumes(ranks_out: Path) -> None:
    ckpt = load_checkpoint(ranks_out / "noisy.pt")
    assert ckpt["finished"] and ckpt["step"] == 12
    assert len(ckpt["rng"]["generator"]) == WORLD and len(ckpt["rng"]["torch_ranks"]) == WORLD
    assert not torch.equal(ckpt["rng"]["generator"][0], ckpt["rng"]["generator"][1])
    # stopped after 5 steps and resumed by 2 processes == 12 uninterrupted steps, bit for bit
    _assert_equal(_state(ranks_out / "noisy-resumed-rank0.pt"), _state(ranks_out / "noisy-rank0.pt"))
    assert (ranks_out / "logs" / "toy.csv").read_text().count("\n") == 1 + 12 // 4  # rank 0 alone logged


def test_two_rank_checkpoint_resumes_in_one_process(ranks_out: Path, tmp_path: Path) -> None:
    part = tmp_path / "exact-part.pt"
    part.write_bytes((ranks_out / "exact-part.pt").read_bytes())
    assert load_checkpoint(part)["step"] == STOP_AFTER
    resumed = toy_net()
    result = train_network(resumed, exact_loss, ToyDataset(), cfg(), part, "toy", torch.device("cpu"))
    assert result.steps == 12
    full = _state(ranks_out / "exact-rank0.pt")
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, full[k], rtol=1e-5, atol=1e-6)


def test_prepare_and_score_split_cases_over_ranks(ranks_out: Path) -> None:
    cases = sorted(p.name for p in (ranks_out / "phantom").iterdir() if p.is_dir())
    for rank in range(WORLD):  # every rank returns the merged summary
        stages = _state(ranks_out / f"stages-rank{rank}.pt")
        assert stages == {"prepared": cases, "scored": cases}
    one, two = ranks_out / "prepared", ranks_out / "prepared-ranks"
    assert (one / "splits.json").read_text() == (two / "splits.json").read_text()
    for case in cases:
        for name in ("images.npy", "brain.npy", "meta.json"):
            assert (one / "cases" / case / name).read_bytes() == (two / "cases" / case / name).read_bytes()
        assert (ranks_out / "maps" / f"{case}_anomaly.nii.gz").exists()


def test_one_process_helpers_are_no_ops() -> None:
    assert dist_info() == (0, 1)
    assert shard([3, 1, 2]) == [3, 1, 2]
    assert gather_objects("x") == ["x"]
    assert progress_kwargs("score") == {"desc": "score"}
    with distributed_session("cpu") as (rank, world):  # WORLD_SIZE unset: nothing to join
        assert (rank, world) == (0, 1)


if __name__ == "__main__":  # a torchrun process of the fixture above
    torch.set_num_threads(1)
    run_ranks(Path(sys.argv[1]))

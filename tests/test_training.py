"""The shared training loop: exact resume, EMA, checkpoints, clear checkpoint errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmccd.checkpoints import load_checkpoint
from mmccd.config import ExperimentConfig, merge
from mmccd.errors import CheckpointError
from mmccd.training import global_batch_indices, train_network


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n=24, size=8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, size, size, generator=g) * 2 - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return {"source": x, "target": -x, "brain_mask": torch.ones_like(x, dtype=torch.bool),
                "gt_mask": None, "subject_id": f"s{i}", "slice_index": i}


def toy_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Dropout(0.2), nn.Conv2d(8, 1, 3, padding=1))


def toy_loss(net, batch, generator):
    noise = torch.randn(batch.source.shape, generator=generator, device=generator.device) * 0.1
    return F.mse_loss(net(batch.source + noise), batch.target)


def cfg(iterations=30):
    return merge(ExperimentConfig(), {"train": {"iterations": iterations, "batch_size": 5, "lr": 1e-2,
                                                "checkpoint_every": 7, "log_every": 5}})


def test_batches_depend_only_on_seed_and_step():
    a = [global_batch_indices(24, 5, s, 0) for s in range(12)]
    b = [global_batch_indices(24, 5, s, 0) for s in range(12)]
    assert a == b
    flat = sum(a[:4], []) + a[4][:4]  # the first 24 draws are one epoch: a permutation
    assert sorted(flat) == list(range(24))
    assert global_batch_indices(24, 5, 3, 1) != a[3]


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    ds = ToyDataset()
    full = toy_net()
    train_network(full, toy_loss, ds, cfg(), tmp_path / "a.pt", "toy", torch.device("cpu"), log_dir=tmp_path / "logs")
    part = toy_net()
    train_network(part, toy_loss, ds, cfg(), tmp_path / "b.pt", "toy", torch.device("cpu"), stop_after=11)
    assert load_checkpoint(tmp_path / "b.pt")["step"] == 11
    resumed = toy_net()  # a fresh process would start from new weights: the checkpoint must restore all
    train_network(resumed, toy_loss, ds, cfg(), tmp_path / "b.pt", "toy", torch.device("cpu"))
    for p, q in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert (tmp_path / "logs" / "toy.csv").read_text().startswith("step,loss")


def test_finished_checkpoint_is_not_trained_again_and_ema_is_loaded(tmp_path):
    ds = ToyDataset()
    net = toy_net()
    train_network(net, toy_loss, ds, cfg(10), tmp_path / "c.pt", "toy", torch.device("cpu"))
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["finished"] and ckpt["step"] == 10
    assert "config" in ckpt and "code_version" in ckpt
    for k, v in net.state_dict().items():  # after training, the module holds the EMA weights
        assert torch.equal(v, ckpt["ema"][k])
    again = toy_net()
    result = train_network(again, toy_loss, ds, cfg(10), tmp_path / "c.pt", "toy", torch.device("cpu"))
    assert not result.trained_now and result.seconds == ckpt["train_seconds"] > 0
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values(), strict=True))


def test_loss_decreases(tmp_path):
    ds = ToyDataset()
    net = toy_net()
    before = toy_loss(net.eval(), _batch(ds), torch.Generator().manual_seed(1)).item()
    train_network(net, toy_loss, ds, cfg(60), tmp_path / "d.pt", "toy", torch.device("cpu"))
    after = toy_loss(net.eval(), _batch(ds), torch.Generator().manual_seed(1)).item()
    assert after < 0.5 * before


def _batch(ds):
    from mmccd.data.batch import collate_slices

    return collate_slices([ds[i] for i in range(len(ds))])


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    ds = ToyDataset()
    train_network(toy_net(), toy_loss, ds, cfg(3), tmp_path / "e.pt", "toy", torch.device("cpu"))
    other = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1))
    with pytest.raises(CheckpointError, match="another architecture"):
        train_network(other, toy_loss, ds, cfg(3), tmp_path / "e.pt", "toy", torch.device("cpu"))

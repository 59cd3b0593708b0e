"""Issue 17.3: running out of memory (CUDA or CPU) while training or scoring is one line naming the settings to
lower with their values and the device; training keeps its last checkpoint and resumes from it exactly.

Injected: a network's forward raises what torch raises when an allocation fails."""

from __future__ import annotations

import pytest
import torch
from reliability_helpers import one_error_line

from mmccd.cli import main
from mmccd.memory import is_out_of_memory
from mmccd.models.unet import UNet
from mmccd.pipeline.runs import read_run_config
from mmccd.scoring import resolve_scoring

ERRORS = {  # what torch raises, by where the memory ran out
    "cuda": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                                "capacity of 79.15 GiB of which 1.2 GiB is free."),
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                "memory: you tried to allocate 4294967296 bytes. Error code 12"),
    "python": MemoryError,
}
TRAIN = ("train", "--method", "cyclic-unet", "--set", "train.iterations=20", "--set", "train.checkpoint_every=5")


def _forward_fails(monkeypatch, error, after: int = 0) -> None:
    """Every UNet forward after the first `after` raises `error()`."""
    real, calls = UNet.forward, []

    def forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise error()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "forward", forward)


def test_only_allocation_failures_count_as_out_of_memory():
    assert all(is_out_of_memory(make()) for make in ERRORS.values())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x8)"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only torch's and Python's allocation errors


@pytest.mark.parametrize("where", list(ERRORS))
def test_training_out_of_memory_names_the_batch_size_and_keeps_its_checkpoint(where, prepared, small_preset, runs,
                                                                              run_cli, tmp_path, monkeypatch):
    run = tmp_path / "run"
    argv = (*TRAIN, "--prepared", prepared, "--preset", small_preset, "--out", run)
    _forward_fails(monkeypatch, ERRORS[where], after=7)  # step 8: after the checkpoint of step 5
    line = one_error_line(run_cli(*argv), "out of memory training source_to_target on cpu",
                          "--batch-size 4 (train.batch_size = 4)", "train.amp = none",
                          "--resume (a benchmark: the same command) continues from step 5 of 20", "a lower --batch-size (e.g. 2)")
    if where != "python":
        assert "allocate" in line  # what torch could not allocate
    ckpt = torch.load(run / "checkpoints" / "source_to_target.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 5 and not ckpt["finished"]  # whole: the last one written
    assert not (run / ".mmccd.lock").exists() and list(run.rglob(".tmp-*")) == []
    if where != "cuda":
        return
    monkeypatch.undo()  # memory is free again: the run resumes and ends where an uninterrupted run ends
    assert run_cli(*argv, "--resume").code == 0
    for net in ("source_to_target", "target_to_source"):
        got, want = (torch.load(r / "checkpoints" / f"{net}.pt", map_location="cpu", weights_only=True)
                     for r in (run, runs["cyclic-unet"]))
        assert got["step"] == want["step"] == 20
        assert all(torch.equal(got["ema"][k], want["ema"][k]) for k in want["ema"]), net


def test_training_before_any_checkpoint_says_there_is_nothing_to_resume(prepared, small_preset, run_cli, tmp_path,
                                                                        monkeypatch):
    _forward_fails(monkeypatch, ERRORS["cuda"])
    one_error_line(run_cli(*TRAIN, "--prepared", prepared, "--preset", small_preset, "--out", tmp_path / "run"),
                   "out of memory training source_to_target", "starts source_to_target again from step 0 (no checkpoint")


def test_another_error_in_training_is_not_called_out_of_memory(prepared, small_preset, tmp_path, monkeypatch):
    _forward_fails(monkeypatch, lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # a bug keeps its traceback
        main([*TRAIN, "--prepared", str(prepared), "--preset", str(small_preset), "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("method", ["mmccd", "cyclic-unet"])
def test_scoring_out_of_memory_names_the_settings_in_use(method, runs, phantom, run_cli, tmp_path, monkeypatch):
    settings = resolve_scoring(read_run_config(runs[method]), "auto")  # what `mmccd score` uses by default
    _forward_fails(monkeypatch, ERRORS["cuda"])
    out = tmp_path / "maps"
    result = run_cli("score", "--run", runs[method], "--case", phantom / "Phantom_00000", phantom / "Phantom_00001",
                     "--out", out, "--threshold", "0.1")
    if method == "mmccd":
        one_error_line(result, "out of memory scoring with mmccd on cpu", "CUDA out of memory",
                       f"score.mask_batch x score.slice_batch = {settings.mask_batch} x {settings.slice_batch}",
                       f"lower score.mask_batch ({settings.mask_batch} now) or score.slice_batch "
                       f"({settings.slice_batch} now) with --scoring FILE.yaml", "the maps and the threshold stay")
    else:
        one_error_line(result, "out of memory scoring with cyclic-unet on cpu", "a network call holds",
                       "another one (--device)")
    assert "skipped" not in result.err  # stopped at the first case: the next would run out of memory too
    assert list(out.glob("*")) == [] if out.exists() else True

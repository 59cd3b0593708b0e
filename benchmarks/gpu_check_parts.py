"""The parts of benchmarks/gpu_check.py, each run in its own process (`gpu_check.py --part NAME`).

Data are SYNTHETIC phantoms made here (mmccd.data.phantom) unless --case / --store name real ones. The
record keeping, time boxes and shared inputs are in gpu_check_common.py.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gpu_check_common import (
    Part,
    child_env,
    config,
    ensure_store,
    peak_memory,
    reset_peak,
    run_cli,
    store_slices,
)

from mmccd.config import ScoreConfig, load_config, load_score_preset
from mmccd.data.batch import SliceBatch
from mmccd.data.dataset import SliceDataset
from mmccd.data.discovery import case_from_path
from mmccd.data.phantom import write_phantom_dataset
from mmccd.data.prepare import prepare_dataset
from mmccd.data.store import PreparedStore
from mmccd.models import MaskedConditionalDiffusion
from mmccd.scoring import build_method
from mmccd.scoring.base import AnomalyMethod
from mmccd.training import train_network

NETS = {"source_to_target": "masked diffusion (forward)", "target_to_source": "backward UNet"}
# (label, train.amp, channels_last, compile)
VARIANTS = [("fp32", "none", False, False), ("bf16", "bf16", False, False),
            ("bf16 + channels_last", "bf16", True, False), ("bf16 + channels_last + compile", "bf16", True, True)]


# ---------------------------------------------------------------- (a) the device tests


def part_tests(part: Part) -> None:
    """pytest -m gpu tests/gpu with MMCCD_TEST_DEVICE = this device, counts from its JUnit XML: the quick tests
    first, then the slow ones (torch.compile) in a run of their own, so that a time-out there keeps the counts."""
    runs = (("pytest", "gpu and not slow", 10.0), ("pytest slow", "gpu and slow", 2.0))
    if part.device.type != "cuda":  # the slow tests are CUDA-only: one run (their skips included)
        runs = (("pytest", "gpu", 2.0),)
    for key, marks, reserve in runs:
        xml = part.work / f"pytest-{key.replace(' ', '-')}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)

        def run(m: str = marks, x: Path = xml, r: float = reserve) -> dict[str, Any]:
            res = run_cli(["-m", "pytest", "-q", "-m", m, "tests/gpu", "-p", "no:cacheprovider", f"--junitxml={x}",
                           "-rs"], part.left() - r, child_env(MMCCD_TEST_DEVICE=part.device.type))
            if "No module named pytest" in res.get("output", ""):
                return {"error": "pytest is not installed in this environment: pip install -e .[dev]", **res}
            return res if "error" in res else {**res, **junit_counts(x)}

        part.measure(key, run, needs=5.0)
    part.finish()


def junit_counts(xml: Path) -> dict[str, Any]:
    """passed (a count), failed / errors / skips (test names; skips with the reason) from a JUnit XML."""
    import xml.etree.ElementTree as ET

    if not xml.exists():
        return {"error": "pytest wrote no report (see output)"}
    cases = ET.parse(xml).getroot().iter("testcase")
    out: dict[str, Any] = {"passed": 0, "failed": [], "errors": [], "skips": []}
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            out["failed"].append(name)
        elif "error" in kinds:
            out["errors"].append(name)
        elif "skipped" in kinds:
            out["skips"].append(f"{name}: {case.find('skipped').get('message', '')}")  # type: ignore[union-attr]
        else:
            out["passed"] += 1
    return out


# ---------------------------------------------------------------- (b) training throughput


def compiled_loss(net: torch.nn.Module, loss_fn: Callable) -> Callable:
    """The network's loss through a torch.compile'd stand-in sharing its weights (the masked diffusion model:
    its UNet compiled, since the loss is a method of the wrapper)."""
    if isinstance(net, MaskedConditionalDiffusion):
        stand_in: torch.nn.Module = MaskedConditionalDiffusion(torch.compile(net.net), net.schedule)  # type: ignore[arg-type]
    else:
        stand_in = torch.compile(net)  # type: ignore[assignment]
    return lambda _net, batch, generator: loss_fn(stand_in, batch, generator)


def train_rate(part: Part, net_name: str, amp: str, channels_last: bool, compile: bool) -> dict[str, Any]:
    """Steps/s of `mmccd.training.train_network` (AdamW, EMA, flips, data loading) after the warm-up steps."""
    sizes = part.sizes
    cfg = config(part, train={"amp": amp, "iterations": sizes.warmup + sizes.timed + 1,
                              "checkpoint_every": 10**9, "log_every": 10**9})
    store = ensure_store(part)
    st = PreparedStore.open(store)
    dataset = SliceDataset(st, st.splits()["train"], cfg.source, cfg.target, slices="train")
    torch.manual_seed(0)
    method = build_method(cfg)
    net, loss_fn = method.nets[net_name], method.losses()[net_name]
    if channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    if compile:
        loss_fn = compiled_loss(net, loss_fn)
    stamps: list[float] = []

    def timed_loss(n: torch.nn.Module, batch: SliceBatch, generator: torch.Generator) -> torch.Tensor:
        part.sync()  # the loop syncs every step anyway (the loss is checked for NaN)
        stamps.append(time.perf_counter())
        return loss_fn(n, batch, generator)

    reset_peak(part)
    with tempfile.TemporaryDirectory() as tmp:
        train_network(net, timed_loss, dataset, cfg, Path(tmp) / f"{net_name}.pt", net_name, part.device)
    w, t = sizes.warmup, sizes.timed
    rate = t / (stamps[w + t] - stamps[w])
    return {"steps_per_s": round(rate, 2), "hours_per_100k": round(100_000 / rate / 3600, 2),
            "peak_gib": peak_memory(part), "batch": cfg.train.batch_size, "size": cfg.prepare.size,
            "timed_steps": t, "warmup_steps": w, "first_steps_s": round(stamps[w] - stamps[0], 1),
            "train_slices": len(dataset)}


def part_train(part: Part, compile: bool = False) -> None:
    """(b) every variant but compile (`part_compile` runs those last, with the time that is left)."""
    for net_name in NETS:
        for label, amp, channels_last, compiled in VARIANTS:
            if compiled != compile:
                continue
            if compiled and part.spec["tiny"]:
                part.data["measures"][f"{net_name} {label}"] = {
                    "skipped": "--tiny: torch.compile takes minutes on a CPU (opt-in there)"}
                continue
            part.measure(f"{net_name} {label}", lambda n=net_name, a=amp, c=channels_last, k=compiled:
                         train_rate(part, n, a, c, k), needs=60.0 if compiled and not part.spec["tiny"] else 1.0)
            if part.device.type == "cuda":
                torch.cuda.empty_cache()
    part.finish()


def part_compile(part: Part) -> None:
    part_train(part, compile=True)


# ---------------------------------------------------------------- (c) scoring seconds per slice


def time_scoring(part: Part, method: AnomalyMethod, settings: ScoreConfig, batch: SliceBatch) -> float:
    """Wall seconds to score `batch` (maps back on the CPU), after an untimed call on its first slice."""
    first = dataclasses.replace(batch, source=batch.source[:1], target=batch.target[:1],
                                brain_mask=batch.brain_mask[:1], gt_mask=None, subject_id=batch.subject_id[:1],
                                slice_index=batch.slice_index[:1])
    method.score(first.to(part.device), dataclasses.replace(settings, ddim_steps=1)).anomaly_map.cpu()
    part.sync()
    t0 = time.perf_counter()
    method.score(batch.to(part.device), settings).anomaly_map.cpu()
    part.sync()
    return time.perf_counter() - t0


def reference_settings(part: Part, **changes: Any) -> ScoreConfig:
    """The reference protocol (128 masks x 100 DDIM steps, fp32), masks capped at 2 per pixel row (--tiny)."""
    ref = load_score_preset("reference")
    size = config(part).prepare.size
    return dataclasses.replace(ref, num_masks=min(ref.num_masks, 2 * size), **changes)


def part_score(part: Part) -> None:
    """(c) the reference protocol, timed with `ref_steps` of its 100 DDIM steps on one slice and extrapolated by
    network passes; `fast` at a few batchings. Untrained reference networks: the time does not depend on weights."""
    sizes, cfg = part.sizes, config(part)
    store = ensure_store(part)
    torch.manual_seed(0)
    method = build_method(cfg).to(part.device).eval()
    one = store_slices(store, cfg, "all", 1)
    for label, extra in (("reference (fp32)", {}), ("reference + bf16 + channels_last", {"amp": "bf16",
                                                                                        "channels_last": True})):
        for mask_batch in sizes.ref_mask_batches:
            def ref(mb: int = mask_batch, ex: dict = extra) -> dict[str, Any]:
                full = reference_settings(part, mask_batch=mb, **ex)
                short = dataclasses.replace(full, ddim_steps=sizes.ref_steps)
                reset_peak(part)
                seconds = time_scoring(part, method, short, one)
                scale = method.network_evaluations(full) / method.network_evaluations(short)
                return {"s_per_slice": round(seconds * scale, 3), "measured_s": round(seconds, 3),
                        "timed_ddim_steps": sizes.ref_steps, "of_ddim_steps": full.ddim_steps,
                        "passes_per_slice": method.network_evaluations(full), "num_masks": full.num_masks,
                        "extrapolated_by": round(scale, 2), "peak_gib": peak_memory(part), "mask_batch": mb}

            part.measure(f"{label}, mask_batch {mask_batch}", ref, needs=2.0)
    fast = load_score_preset("fast")
    batch = store_slices(store, cfg, "all", sizes.fast_slices)
    for mask_batch, slice_batch in sizes.fast_batches:
        def fast_rate(mb: int = mask_batch, sb: int = slice_batch) -> dict[str, Any]:
            settings = dataclasses.replace(fast, mask_batch=mb, slice_batch=sb)
            reset_peak(part)
            seconds = time_scoring(part, method, settings, batch)
            return {"s_per_slice": round(seconds / len(batch), 4), "slices": len(batch), "mask_batch": mb,
                    "slice_batch": sb, "passes_per_slice": method.network_evaluations(settings),
                    "peak_gib": peak_memory(part)}

        part.measure(f"fast, mask_batch {mask_batch} slice_batch {slice_batch}", fast_rate, needs=2.0)
    part.finish()


# ---------------------------------------------------------------- (c) a whole volume end to end


def ensure_run(part: Part) -> Path:
    """A finished MMCCD run with the preset's networks, trained 2 steps per network on the phantom store."""
    from mmccd.pipeline.runs import train_run

    run = part.work / "run"
    if not (run / "checkpoints" / "target_to_source.pt").exists():
        cfg = config(part, train={"iterations": 2, "batch_size": 4, "checkpoint_every": 2, "num_workers": 0})
        train_run(ensure_store(part), run, cfg, overwrite=True)
    return run


def ensure_volume(part: Part) -> Path:
    """--case, else one SYNTHETIC phantom case of the BraTS size (240 x 240 x 155)."""
    if part.spec.get("case"):
        return Path(part.spec["case"])
    root = part.work / "volume"
    if not (root / "Phantom_00000").exists():
        write_phantom_dataset(root, n_cases=1, seed=11, shape=part.sizes.volume_shape)
    return root / "Phantom_00000"


def part_volume(part: Part) -> None:
    """`mmccd score --scoring fast` on one whole volume in fresh processes, then the stages in a warm one."""
    from mmccd.pipeline.runs import load_method
    from mmccd.pipeline.score import score_cases
    from mmccd.scoring import resolve_scoring
    from mmccd.scoring.volume import prepare_for_scoring, score_prepared_case

    run = part.measure("a run to score with", lambda: {"run": str(ensure_run(part))})
    case = part.measure("the volume", lambda: {"case": str(ensure_volume(part))})
    if not run or not case or "error" in run or "error" in case:
        part.finish()
        return
    cli = ["-m", "mmccd.cli", "--quiet", "score", "--run", run["run"], "--case", case["case"], "--scoring", "fast",
           "--device", str(part.device), "--overwrite"]
    for attempt in range(1, part.sizes.cli_attempts + 1):
        part.measure(f"mmccd score (fresh process) #{attempt}",
                     lambda: run_cli([*cli, "--out", str(part.work / "maps-cli")], part.left() - 2), needs=5.0)

    def warm() -> dict[str, Any]:
        method = load_method(Path(run["run"]), str(part.device))
        settings = resolve_scoring(method.cfg, "fast")
        the_case = case_from_path(Path(case["case"]))
        if part.sizes.warm_up:
            score_cases(Path(run["run"]), [the_case.root], part.work / "maps", device=str(part.device), overwrite=True)
        t0 = time.perf_counter()
        score_cases(Path(run["run"]), [the_case.root], part.work / "maps", device=str(part.device), overwrite=True)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepared = prepare_for_scoring(the_case, method)
        t_prepare = time.perf_counter() - t0
        t0 = time.perf_counter()
        score_prepared_case(method, settings, prepared)
        part.sync()
        t_score = time.perf_counter() - t0
        return {"warm_volume_s": round(total, 2), "prepare_s": round(t_prepare, 2), "score_s": round(t_score, 2),
                "writing_and_loading_s": round(total - t_prepare - t_score, 2),
                "slices_scored": len(prepared.meta["slice_indices"]), "shape": list(prepared.meta["original_shape"])}

    part.measure("mmccd score stages (warm process)", warm, needs=5.0)
    part.finish()


# ---------------------------------------------------------------- (d) torchrun with one process


def part_torchrun(part: Part) -> None:
    """`torchrun --nproc_per_node 1 mmccd train` on a tiny phantom store: NCCL on CUDA (gloo on a CPU)."""
    def run() -> dict[str, Any]:
        phantom, store = part.work / "ddp-phantom", part.work / "ddp-store"
        if not (store / "splits.json").exists():
            write_phantom_dataset(phantom, n_cases=3, seed=5, shape=(48, 48, 32))
            prepare_dataset(phantom, store, dataclasses.replace(load_config("tiny").prepare, workers=1))
        out = part.work / "ddp-run"
        steps = part.sizes.torchrun_steps
        res = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "mmccd.cli", "--",
                       "train", "--prepared", str(store), "--method", "cyclic-unet", "--preset", "tiny", "--device",
                       part.device.type, "--set", f"train.iterations={steps}", "--set", "train.checkpoint_every=2",
                       "--out", str(out), "--overwrite"], part.left() - 2)
        backend = "nccl" if part.device.type == "cuda" else "gloo"
        ckpt = out / "checkpoints" / "source_to_target.pt"
        finished = ckpt.exists() and torch.load(ckpt, map_location="cpu", weights_only=True)["step"] == steps
        joined = f"backend {backend}" in res.get("output", "")
        ok = res.get("rc") == 0 and finished and joined
        return {**res, "backend": backend, "joined_process_group": joined, "finished": finished, "ok": ok,
                **({} if ok else {"error": f"rc {res.get('rc')}, process group joined: {joined}, "
                                           f"finished {steps} steps: {finished} (see output)"})}

    part.measure("torchrun --nproc_per_node 1 mmccd train", run)
    part.finish()


# ---------------------------------------------------------------- (e) a short real-data run


def part_real(part: Part) -> None:
    """--store: MMCCD trained briefly at the preset's size, then `mmccd evaluate` (fast scoring): Dice."""
    store = part.spec.get("store")
    if not store:
        part.data["measures"]["real data"] = {"skipped": "no --store given (optional)"}
        part.finish("skipped")
        return

    def run() -> dict[str, Any]:
        if not (Path(store) / "prepare.json").exists():
            raise FileNotFoundError(f"--store {store} is not a prepared store (no prepare.json): "
                                    "make one with `mmccd prepare --data DIR --out STORE --size 128`")
        rate = float(part.spec.get("train_rate") or 5.0)  # steps/s measured in part (b), if it ran
        train_time = max(10.0, 0.6 * part.left() - 20.0)  # the rest: evaluation and start-up
        steps = int(max(20, min(5000, rate * train_time / 2)))  # two networks
        out = part.work / "real-run"
        train = run_cli(["-m", "mmccd.cli", "--quiet", "train", "--prepared", store, "--method", "mmccd", "--preset",
                         part.sizes.preset, "--device", str(part.device), "--set", f"train.iterations={steps}",
                         "--set", f"train.checkpoint_every={steps}", "--out", str(out), "--overwrite"],
                        part.left() - 15)
        if train.get("rc") != 0:
            return {"error": f"training failed (rc {train.get('rc')})", "train": train}
        evaluate = run_cli(["-m", "mmccd.cli", "--quiet", "evaluate", "--run", str(out), "--device", str(part.device),
                            "--overwrite"], part.left() - 2)
        metrics = out / "metrics.json"
        if evaluate.get("rc") != 0 or not metrics.exists():
            return {"error": f"evaluation failed (rc {evaluate.get('rc')})", "evaluate": evaluate}
        m = json.loads(metrics.read_text())
        return {"steps_per_network": steps, "train_wall_s": train["wall_s"], "evaluate_wall_s": evaluate["wall_s"],
                "dice": m.get("subject_mean_dice"), "auroc": m.get("subject_mean_auroc"),
                "oracle_dice": m.get("oracle_dice_test"), "n_test_subjects": m.get("n_test_subjects"),
                "scoring": "fast (mmccd evaluate's default for MMCCD)"}

    part.measure("real data", run, needs=30.0 if not part.spec["tiny"] else 1.0)
    part.finish()


PARTS: dict[str, Callable[[Part], None]] = {
    "tests": part_tests, "train": part_train, "score": part_score, "volume": part_volume,
    "torchrun": part_torchrun, "compile": part_compile, "real": part_real}


def run_part(name: str, spec_path: Path) -> int:
    """Body of `gpu_check.py --part NAME --spec FILE`."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    part = Part(name, spec)
    try:
        PARTS[name](part)
    except Exception as exc:  # outside any measurement (e.g. building the inputs)
        part.data["error"] = f"{type(exc).__name__}: {exc}"
        part.data["traceback"] = traceback.format_exc()[-3000:]
        part.finish("error")
        return 1
    return 0

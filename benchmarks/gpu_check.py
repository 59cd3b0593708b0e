"""One prepared check of mmccd's CUDA path (issue 16): device tests, training and scoring speed, torchrun.

    python benchmarks/gpu_check.py --out results/gpu --device cuda            # <= 8 minutes on one H200
    python benchmarks/gpu_check.py --out /tmp/gpu-check --device cpu --tiny   # tiny sizes: under a minute on a CPU

Parts, in this order, each in its own process and time box (a share of --budget-minutes; time a part leaves
unused goes to the next one), each catching its own failures so that one broken part loses nothing else:
  tests     pytest -m gpu tests/gpu with MMCCD_TEST_DEVICE set to the device (pass / fail / skip counts)
  train     steps/s of `train_network` after warm-up, reference preset (gpu: batch 32, 128 px), for the masked
            diffusion forward model and the backward UNet: fp32, bf16, bf16 + channels-last; hours per 100k
            steps; peak GPU memory (torch.cuda.max_memory_allocated)
  score     seconds per slice: the reference protocol (128 masks x 100 DDIM steps) timed with a FEW of its
            DDIM steps on one slice and extrapolated by network passes; `fast` (the fast preset's score
            section) at a few mask_batch / slice_batch sizes
  volume    one whole 240 x 240 x 155 volume through `mmccd score --scoring fast` in fresh processes (a SYNTHETIC
            phantom unless --case), and its stages in a warm process; the 1,251 BraTS 2021 volumes projected
  torchrun  `torchrun --nproc_per_node 1 mmccd train` on a tiny phantom store: NCCL (gloo on a CPU)
  compile   `train` with bf16 + channels-last + torch.compile (last: its compilation takes minutes)
  real      with --store PREPARED: a short MMCCD training on it and `mmccd evaluate` (fast scoring): Dice
Writes OUT/gpu_check.json (every measurement, errors included) and OUT/gpu_check.md (the table, also printed);
OUT/parts/ holds each part's JSON and log, OUT/work/ the synthetic inputs (delete it freely).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ORDER = ("tests", "train", "score", "volume", "torchrun", "compile", "real")
SHARES = {"tests": 0.18, "train": 0.18, "score": 0.12, "volume": 0.14, "torchrun": 0.08, "compile": 0.20, "real": 0.10}
TRAIN_TARGET = 20.0  # steps/s, reference preset at batch 32 in bf16
REF_TARGET = 10.0  # s per slice, reference scoring
VOLUME_TARGET = 2.0  # s per whole 240 x 240 x 155 volume with `fast`, end to end
BRATS_2021 = 1251
DATASET_TARGET = 45.0  # minutes for all of BraTS 2021 with `fast`
NETS = {"source_to_target": "masked diffusion (forward)", "target_to_source": "backward UNet"}
TRAIN_VARIANTS = ("fp32", "bf16", "bf16 + channels_last", "bf16 + channels_last + compile")


# ---------------------------------------------------------------- running the parts


def run_parts(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    """Each selected part in its own process group, killed at its time box; its JSON (partial if killed)."""
    parts = [p for p in ORDER if p in args.parts]
    budget = args.budget_minutes * 60
    total_share = sum(SHARES[p] for p in parts)
    end = time.time() + budget
    carry, results = 0.0, {}
    for name in parts:
        share = SHARES[name] / total_share * budget
        box = min(share + carry, end - time.time())
        if box < 5:
            results[name] = {"part": name, "status": "skipped", "error": "the time budget is spent", "measures": {}}
            continue
        spec = {"out": str(out), "device": args.device, "tiny": args.tiny, "case": args.case, "store": args.store,
                "threads": args.threads, "deadline": time.time() + box - 3,
                "train_rate": _train_rate(results.get("train", {}))}
        spec_path = out / "parts" / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        print(f"[{name}] up to {box:.0f} s ...", flush=True)
        t0 = time.time()
        status = _run_isolated([sys.executable, __file__, "--part", name, "--spec", str(spec_path)],
                               out / "parts" / f"{name}.log", box)
        results[name] = _read_part(out / "parts" / f"{name}.json", name, status, out / "parts" / f"{name}.log")
        used = time.time() - t0
        carry = max(0.0, share + carry - used)
        print(f"[{name}] {results[name]['status']} in {used:.0f} s", flush=True)
    return results


def _run_isolated(cmd: list[str], log: Path, timeout: float) -> str:
    """Run `cmd` in a new session (its workers and subprocesses too), kill the whole group at `timeout`."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=_env())
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"timed out after {timeout:.0f} s (killed; what it measured before is kept)"
    return "ok" if rc == 0 else f"exited with {rc}"


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}


def _read_part(path: Path, name: str, status: str, log: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        return {"part": name, "status": "error", "error": f"{status}; no results written. Log tail: {tail}",
                "measures": {}}
    if status != "ok":
        data["status"] = "timed out" if status.startswith("timed out") else "error"
        data.setdefault("error", status)
        for value in data.get("measures", {}).values():
            if value.get("running"):
                value.pop("running")
                value["error"] = status
    return data


def _train_rate(train: dict[str, Any]) -> float | None:
    """Steps/s of the forward model in bf16 from part `train` (sizes the optional real-data run)."""
    m = train.get("measures", {}).get("source_to_target bf16", {})
    return m.get("steps_per_s")


# ---------------------------------------------------------------- the table


def _ratio_verdict(value: float, target: float, higher_is_better: bool, tiny: bool) -> str:
    if tiny:
        return "n/a (--tiny sizes)"
    ratio = value / target if higher_is_better else target / value
    if ratio >= 1:
        return f"pass ({ratio:.1f}× the target)"
    return f"FAIL ({ratio:.2f}× the target: needs {1 / ratio:.1f}× faster)"


def _problem(m: dict[str, Any] | None) -> str | None:
    if m is None:
        return "not run"
    if "error" in m:
        return "error: " + str(m["error"]).splitlines()[0][:160]
    if "skipped" in m:
        return "skipped: " + str(m["skipped"])
    return None


def _merge_test_counts(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not runs:
        return None
    return {"passed": sum(r["passed"] for r in runs), **{k: [n for r in runs for n in r[k]]
                                                         for k in ("failed", "errors", "skips")}}


def table_rows(results: dict[str, dict[str, Any]], tiny: bool, device: str) -> list[dict[str, str]]:
    """One row per check: what was measured, the target and the verdict (how far from the target)."""
    rows: list[dict[str, str]] = []

    def row(check: str, measured: str, target: str, verdict: str) -> None:
        rows.append({"check": check, "measured": measured, "target": target, "verdict": verdict})

    def measures(part: str) -> dict[str, Any]:
        return results.get(part, {}).get("measures", {})

    # (a) the device tests
    runs = [measures("tests").get(k) for k in ("pytest", "pytest slow") if k == "pytest" or device.startswith("cuda")]
    t = _merge_test_counts([r for r in runs if r is not None and not _problem(r)])
    if t is None or any(r is None or _problem(r) for r in runs):
        broken = next((r for r in runs if r is None or _problem(r)), None)
        row("device tests (pytest -m gpu tests/gpu)", (_problem(broken) or "not run")
            + (f"; the others: {t['passed']} passed, {len(t['failed'])} failed" if t else ""), "all pass", "error")
    else:
        bad = len(t["failed"]) + len(t["errors"])
        skipped_ok = not device.startswith("cuda") or not t["skips"]
        measured = f"{t['passed']} passed, {len(t['failed'])} failed, {len(t['errors'])} errors, {len(t['skips'])} skipped"
        if bad:
            measured += " — " + ", ".join((t["failed"] + t["errors"])[:4])
        row(f"device tests (pytest -m gpu, MMCCD_TEST_DEVICE={'cuda' if device.startswith('cuda') else 'cpu'})",
            measured, "all pass; none skipped on CUDA", "pass" if not bad and skipped_ok else "FAIL")
    # (b) training
    for net, label in NETS.items():
        for variant in TRAIN_VARIANTS:
            part = "compile" if "compile" in variant else "train"
            m = measures(part).get(f"{net} {variant}")
            check = f"training, {label}, {variant}"
            target = f"≥ {TRAIN_TARGET:g} steps/s (bf16, batch 32)"
            if _problem(m):
                row(check, _problem(m) or "", target, "—" if m and "skipped" in m else "error")
                continue
            assert m is not None
            gib = f" · peak {m['peak_gib']} GiB" if m.get("peak_gib") is not None else ""
            measured = (f"{m['steps_per_s']} steps/s (batch {m['batch']}, {m['size']} px) · {m['hours_per_100k']} h "
                        f"per 100k steps{gib}")
            verdict = ("info (the target is for bf16)" if variant == "fp32" and not tiny
                       else _ratio_verdict(m["steps_per_s"], TRAIN_TARGET, True, tiny))
            row(check, measured, target, verdict)
    # (c) scoring per slice
    s = measures("score")
    for label, target_row in (("reference (fp32)", True), ("reference + bf16 + channels_last", True)):
        found = {k: v for k, v in s.items() if k.startswith(label + ",")}
        good = {k: v for k, v in found.items() if not _problem(v)}
        check = f"scoring, {label}, s / slice"
        if not good:
            first = next(iter(found.values()), None)
            row(check, _problem(first) or "not run", f"≤ {REF_TARGET:g} s / slice", "error")
            continue
        best = min(good.values(), key=lambda v: v["s_per_slice"])
        measured = (f"{best['s_per_slice']} s (mask_batch {best['mask_batch']}, best of {len(good)}; "
                    f"{best['timed_ddim_steps']} of {best['of_ddim_steps']} DDIM steps timed on one slice, "
                    f"×{best['extrapolated_by']} by network passes; {best['num_masks']} masks)")
        row(check, measured, f"≤ {REF_TARGET:g} s / slice" if target_row else "—",
            _ratio_verdict(best["s_per_slice"], REF_TARGET, False, tiny))
    fast = {k: v for k, v in s.items() if k.startswith("fast,") and not _problem(v)}
    if fast:
        best = min(fast.values(), key=lambda v: v["s_per_slice"])
        row("scoring, fast, s / slice", f"{best['s_per_slice']} s (mask_batch {best['mask_batch']}, slice_batch "
            f"{best['slice_batch']}; best of {len(fast)}; {best['slices']} slices)", "—", "info")
    else:
        first = next((v for k, v in s.items() if k.startswith("fast,")), None)
        row("scoring, fast, s / slice", _problem(first) or "not run", "—", "error")
    # (c) a whole volume
    v = measures("volume")
    clis = [m for k, m in v.items() if k.startswith("mmccd score (fresh") and not _problem(m) and m.get("rc") == 0]
    warm = v.get("mmccd score stages (warm process)")
    check = "whole volume, fast, `mmccd score` end to end (fresh process)"
    if clis:
        cli = min(m["wall_s"] for m in clis)
        row(check, f"{cli} s (best of {len(clis)}: start-up, model load, prepare, score, write NIfTI/PNG/HTML)",
            f"≤ {VOLUME_TARGET:g} s", _ratio_verdict(cli, VOLUME_TARGET, False, tiny))
    else:
        bad = next((m for k, m in v.items() if k.startswith("mmccd score (fresh")), None)
        detail = _problem(bad) or (f"rc {bad.get('rc')}: {bad.get('output', '')[-160:]}" if bad else "not run")
        row(check, detail, f"≤ {VOLUME_TARGET:g} s", "error")
        cli = None
    if warm and not _problem(warm):
        row("whole volume, fast, in a warm process", f"{warm['warm_volume_s']} s = prepare {warm['prepare_s']} + "
            f"score {warm['score_s']} ({warm['slices_scored']} slices) + load/write {warm['writing_and_loading_s']}",
            "—", "info")
        startup = max(0.0, (cli or warm["warm_volume_s"]) - warm["warm_volume_s"])
        minutes = (startup + BRATS_2021 * warm["warm_volume_s"]) / 60
        row(f"all {BRATS_2021:,} BraTS 2021 volumes, fast (projected)", f"{minutes:.1f} min (one process: start-up "
            f"{startup:.1f} s + {BRATS_2021:,} × {warm['warm_volume_s']} s)", f"≤ {DATASET_TARGET:g} min",
            _ratio_verdict(minutes, DATASET_TARGET, False, tiny))
    else:
        row("whole volume, fast, in a warm process", _problem(warm) or "not run", "—", "error")
    # (d) torchrun
    d = measures("torchrun").get("torchrun --nproc_per_node 1 mmccd train")
    if d and d.get("ok"):
        row("torchrun --nproc_per_node 1, train", f"joined ({d['backend']}), trained and finished in {d['wall_s']} s",
            f"joins {'NCCL' if device.startswith('cuda') else 'gloo'}, finishes", "pass")
    else:
        row("torchrun --nproc_per_node 1, train", _problem(d) or "not run", "joins the process group, finishes", "FAIL")
    # (e) real data
    r = measures("real").get("real data")
    if r and not _problem(r):
        row("real data: short MMCCD run + `mmccd evaluate` (fast)", f"Dice {r['dice']:.3f}, AUROC {r['auroc']:.3f} "
            f"(oracle {r['oracle_dice']:.3f}) after {r['steps_per_network']} steps per network; "
            f"{r['n_test_subjects']} test subjects", "— (a check that it runs; not a result)", "info")
    else:
        row("real data: short MMCCD run + `mmccd evaluate` (fast)", _problem(r) or "not run", "—",
            "—" if r and "skipped" in r else "error")
    return rows


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
                            "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cudnn=torch.backends.cudnn.version(),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def markdown(rows: list[dict[str, str]], info: dict[str, Any], command: str, wall: float, tiny: bool) -> str:
    head = [f"# mmccd GPU check — {datetime.date.today().isoformat()}", "",
            f"Command: `{command}` ({wall / 60:.1f} min wall clock)  ",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    if tiny:
        head += ["**--tiny**: tiny networks and sizes, to check the script itself; the targets are for the reference "
                 "sizes on a GPU, so no verdict is given against them.", ""]
    lines = ["| check | measured | target | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['measured'].replace('|', '/')} | {r['target']} | {r['verdict']} |" for r in rows]
    notes = ["", "Inputs are SYNTHETIC phantoms (mmccd.data.phantom) unless --case / --store named real data; times do "
             "not depend on image content. Reference scoring is timed with a few of its 100 DDIM steps on one slice "
             "and extrapolated by network passes; untrained networks (the time does not depend on the weights). "
             "fp32 convolutions use TF32 where PyTorch's default allows it (see Machine)."]
    return "\n".join(head + lines + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder (gpu_check.json, gpu_check.md, parts/, work/)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: CUDA if present)")
    p.add_argument("--tiny", action="store_true", help="tiny networks and sizes (seconds on a CPU): checks the script")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="all parts together (default 8)")
    p.add_argument("--store", help="a prepared store at 128 px (`mmccd prepare --size 128`) for the real-data part")
    p.add_argument("--case", help="a real case folder for the whole-volume part (default: a synthetic phantom)")
    p.add_argument("--parts", nargs="+", default=list(ORDER), choices=ORDER, help="a subset of the parts")
    p.add_argument("--threads", type=int, help="torch intra-op threads in each part (default: torch's)")
    p.add_argument("--part", choices=ORDER, help=argparse.SUPPRESS)  # internal: run one part
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu_check_parts import run_part

        return run_part(args.part, args.spec)
    if args.out is None:
        p.error("--out is required")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here (a CPU build of torch, or no driver); "
                "use --device cpu --tiny to check the script on a CPU")
    out = args.out
    (out / "parts").mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.time()
    results = run_parts(args, out)
    wall = time.time() - t0
    info = machine()
    rows = table_rows(results, args.tiny, args.device)
    report = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": info,
              "wall_s": round(wall, 1), "budget_minutes": args.budget_minutes, "tiny": args.tiny,
              "device": args.device, "rows": rows, "parts": results}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(rows, info, command, wall, args.tiny)
    (out / "gpu_check.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

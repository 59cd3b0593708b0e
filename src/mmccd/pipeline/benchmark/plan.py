"""What a benchmark will do: the runs (method x contrast pair x fold x seed), their folders, their order,
and an estimate of the training time measured on this machine before anything starts.

    runs/<method>_<src>-<tgt>/                      the store's own split (no --folds)
    runs/fold-<k>/<method>_<src>-<tgt>/             fold k of --folds K
    runs/fold-0/seed-<s>/<method>_<src>-<tgt>/      --seeds: the same run of fold 0 with training seed s
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmccd.checkpoints import load_checkpoint
from mmccd.config import METHODS, MODALITIES, ExperimentConfig, load_config, to_dict
from mmccd.data.batch import SliceBatch
from mmccd.data.splits import Split
from mmccd.errors import ConfigError
from mmccd.scoring import build_method, method_class

DEFAULT_METHODS = ("cyclic-unet", "mmccd", "threshold")
DEFAULT_PAIRS = ("flair:t2",)


def split_variant(token: str) -> tuple[str, str | None]:
    """'mmccd' -> ('mmccd', None); 'mmccd@fast-cal' -> ('mmccd', 'fast-cal'): a method with its own preset."""
    method, _, variant = token.partition("@")
    return method, variant or None


def row_name(token: str) -> str:
    """A method token's row name: 'mmccd', or 'mmccd@fast-cal' (a YAML path variant: its file name, no suffix)."""
    method, variant = split_variant(token)
    if variant is None:
        return method
    return f"{method}@{Path(variant).stem if Path(variant).suffix else variant}"


def parse_pair(text: str, default_methods: Sequence[str] = DEFAULT_METHODS) -> tuple[str, str, tuple[str, ...]]:
    """'flair:t2' -> ('flair', 't2', default_methods); 't2:flair=mmccd,dae' -> ('t2', 'flair', ('mmccd', 'dae')).

    source: the input at inference; target: the contrast it is translated to (training needs both). A method
    may be a variant, METHOD@PRESET: the method trained and scored with that preset (e.g. mmccd@fast-cal)."""
    pair, _, chosen = text.strip().partition("=")
    parts = pair.lower().split(":")
    if len(parts) != 2 or any(p not in MODALITIES for p in parts) or parts[0] == parts[1]:
        raise ConfigError(f"contrast pair '{text}': expected SOURCE:TARGET with two different contrasts of "
                          f"{', '.join(MODALITIES)}, e.g. flair:t2 (or flair:t2=mmccd,dae for some methods only)")
    methods = tuple(m.strip() for m in chosen.split(",") if m.strip()) if chosen else tuple(default_methods)
    unknown = [m for m in methods if split_variant(m)[0] not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"contrast pair '{text}': unknown method(s) {', '.join(unknown) or '(none)'}; "
                          f"known: {', '.join(METHODS)}")
    return parts[0], parts[1], tuple(dict.fromkeys(methods))


def run_name(method: str, source: str, target: str) -> str:
    return f"{method}_{source}-{target}"


@dataclass(frozen=True)
class RunSpec:
    """One run of the benchmark: a method on a contrast pair, trained on one split with one seed."""

    method: str
    source: str
    target: str
    fold: int | None  # None: the store's own split (splits.json)
    seed: int  # train.seed
    split: Split
    run: Path
    reuse: Path | None  # the run whose shared network this one copies (it is trained first)
    cfg: ExperimentConfig
    variant: str | None = None  # METHOD@PRESET: the preset this variant is trained and scored with
    shares_run: bool = False  # a variant that only scores differently: it evaluates the plain method's run
    support: bool = False  # trained for another row's sake (a multi-target variant's other targets): no row itself
    after: tuple[Path, ...] = ()  # runs it needs finished first, beyond `reuse` (a multi-target variant's others)
    mirror: Path | None = None  # the same method's run on the reversed pair whose networks it uses (trained first)

    @property
    def pair(self) -> str:
        return f"{self.source}:{self.target}"

    @property
    def name(self) -> str:
        """The row's name: the method, or METHOD@PRESET for a variant (`row_name`)."""
        return row_name(self.method if self.variant is None else f"{self.method}@{self.variant}")

    @property
    def variant_tag(self) -> str | None:
        """The variant's preset as a name for folders (a YAML path: its file name without suffix)."""
        return None if self.variant is None else self.name.split("@", 1)[1]

    @property
    def label(self) -> str:
        where = "" if self.fold is None else f" fold {self.fold}"
        return f"{self.name} {self.source}->{self.target}{where}" + (f" seed {self.seed}" if self.seed else "")


def _folder(runs: Path, fold: int | None, seed: int, main_seed: int) -> Path:
    base = runs if fold is None else runs / f"fold-{fold}"
    return base if seed == main_seed else base / f"seed-{seed}"


def plan_runs(out: Path, preset: str | Path, pairs: Sequence[tuple[str, str, tuple[str, ...]]],
              splits: Sequence[Split], cv: bool, seeds: Sequence[int] = (),
              seed_methods: Sequence[str] = ()) -> list[RunSpec]:
    """Every run, providers of shared networks before the runs that reuse them (Cyclic UNet before MMCCD).

    The seed study (`seeds`) is run on the first pair's fold 0 (or its single split) only."""
    specs: list[RunSpec] = []
    for p, (source, target, methods) in enumerate(pairs):
        ordered = sorted(methods, key=lambda m: (split_variant(m)[1] is not None, not provides_to(m, methods)))
        plain = [m for m in ordered if split_variant(m)[1] is None]
        for k, split in enumerate(splits):
            fold = k if cv else None
            base = load_config(preset, {"method": split_variant(ordered[0])[0], "source": source, "target": target})
            main_seed = base.train.seed
            runs_seeds = [(m, main_seed) for m in ordered]
            if k == 0 and p == 0:  # the seed study: the first pair's fold 0 only
                runs_seeds += [(m, s) for s in seeds if s != main_seed for m in ordered if m in seed_methods]
            for token, seed in runs_seeds:
                method, variant = split_variant(token)
                overrides = {"method": method, "source": source, "target": target, "train": {"seed": seed}}
                cfg = load_config(variant or preset, overrides)
                folder = _folder(out / "runs", fold, seed, main_seed)
                shared = [m for m in method_class(method).shared_networks.values() if m in plain]
                reuse = folder / run_name(shared[0], source, target) if shared else None
                trains_like_plain = variant is not None and method in plain and \
                    training_part(cfg) == training_part(load_config(preset, overrides))
                spec = RunSpec(method, source, target, fold, seed, split, folder, reuse, cfg, variant, trains_like_plain)
                name = method if variant is None or trains_like_plain else spec.name
                specs.append(dataclasses.replace(spec, run=folder / run_name(name, source, target)))
    return _with_mirrors(_with_supporting_runs(specs, preset))


def _with_mirrors(specs: list[RunSpec]) -> list[RunSpec]:
    """A run of a method with `mirrored_networks` (Cyclic UNet) on target:source when the benchmark already has it
    on source:target (same fold, seed and training settings): it uses that run's networks in swapped roles, so
    t2:flair's Cyclic UNet costs no training after flair:t2's (and MMCCD's backward net on t2:flair neither)."""
    out: list[RunSpec] = []
    for spec in specs:
        cls = method_class(spec.method)
        if cls.mirrored_networks and not spec.shares_run and cls.mirrors_when(spec.cfg):
            for other in out:
                if (other.method == spec.method and other.mirror is None and not other.shares_run
                        and (other.source, other.target) == (spec.target, spec.source)
                        and (other.fold, other.seed) == (spec.fold, spec.seed)
                        and other.cfg.train == spec.cfg.train and other.cfg.network == spec.cfg.network
                        and other.cfg.prepare == spec.cfg.prepare):
                    spec = dataclasses.replace(spec, mirror=other.run)
                    break
        out.append(spec)
    return out


def _with_supporting_runs(specs: list[RunSpec], preset: str | Path) -> list[RunSpec]:
    """A multi-target variant (score.extra_targets) scores with the runs of its other targets beside its own:
    plan them (trained, not reported) where the benchmark does not already, and run the variant after them."""
    out, planned = [], {s.run for s in specs}
    for spec in specs:
        extra = spec.cfg.score.extra_targets
        siblings = tuple(spec.run.parent / run_name(spec.method, spec.source, t) for t in extra)
        for target, run in zip(extra, siblings, strict=True):
            if run not in planned:
                cfg = load_config(preset, {"method": spec.method, "source": spec.source, "target": target,
                                           "train": {"seed": spec.seed}})
                out.append(RunSpec(spec.method, spec.source, target, spec.fold, spec.seed, spec.split, run, None, cfg,
                                   support=True))
                planned.add(run)
        out.append(dataclasses.replace(spec, after=siblings) if siblings else spec)
    return out


def default_seed_rows(preset: str | Path, methods: Sequence[str], plain: Sequence[str]) -> list[str]:
    """The seed study's rows when none are named: the `plain` methods among `methods` and their variants that
    only score differently (they are evaluated on each seed's networks at no training cost); a variant that
    trains networks of its own is not repeated."""
    rows = []
    for token in dict.fromkeys(methods):
        method, variant = split_variant(token)
        if method not in plain:
            continue
        if variant is not None:
            overrides = {"method": method}
            if training_part(load_config(variant, overrides)) != training_part(load_config(preset, overrides)):
                continue
        rows.append(token)
    return rows


def training_part(cfg: ExperimentConfig) -> dict:
    """What decides a run's weights: its config without the scoring, evaluation and bookkeeping keys."""
    d = to_dict(cfg)
    for key in ("name", "score", "eval", "device"):
        d.pop(key, None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("checkpoint_every", "log_every", "num_workers")}
    return d


def provides_to(method: str, methods: Sequence[str]) -> bool:
    """True when another of `methods` reuses a network of `method` (so it is trained first)."""
    return any(split_variant(method)[0] in method_class(split_variant(m)[0]).shared_networks.values()
               for m in methods)


# ---------------------------------------------------------------- the estimate


@dataclass
class TrainingEstimate:
    networks: int  # networks still to train
    steps: int  # their remaining steps
    core_seconds: float  # measured seconds per step x remaining steps, one process each
    seconds_per_step: dict[str, float]  # per network kind
    jobs: int

    def describe(self) -> str:
        hours = self.core_seconds / 3600
        per = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(self.seconds_per_step.items()))
        return (f"{self.networks} network(s) to train, {self.steps:,} steps in all; measured seconds per step here: "
                f"{per or 'none needed'}; about {hours:.1f} h of one process, {hours / max(1, self.jobs):.1f} h "
                f"with {self.jobs} job(s) in parallel (training only; scoring adds to it)")


def remaining_networks(spec: RunSpec) -> list[tuple[str, int]]:
    """(network name, steps left) of the networks of `spec` that are not finished (a reused one counts once:
    in the run that provides it; a variant sharing the plain method's run trains nothing)."""
    if spec.shares_run:
        return []
    method = build_method(spec.cfg)
    shared = set(method_class(spec.method).shared_networks) if spec.reuse is not None else set()
    if spec.mirror is not None:
        shared |= set(method_class(spec.method).mirrored_networks)
    out = []
    for name in method.losses():
        if name in shared:
            continue
        path = spec.run / "checkpoints" / f"{name}.pt"
        step = int(load_checkpoint(path).get("step", 0)) if path.exists() else 0
        if step < spec.cfg.train.iterations:
            out.append((name, spec.cfg.train.iterations - step))
    return out


def measure_step_seconds(cfg: ExperimentConfig, net_name: str, steps: int = 3, threads: int = 1) -> float:
    """Median seconds of one training step (forward, backward, AdamW) of one network on random slices."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        method = build_method(dataclasses.replace(cfg, device="cpu"))
        net, loss_fn = method.nets[net_name].train(), method.losses()[net_name]
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        size, b = cfg.prepare.size, cfg.train.batch_size
        x = torch.rand(b, 1, size, size, generator=g) * 2 - 1
        batch = SliceBatch(source=x, target=-x, brain_mask=torch.ones_like(x, dtype=torch.bool),
                           subject_id=["estimate"] * b, slice_index=torch.arange(b))
        times = []
        for _ in range(steps + 1):  # the first step warms up the allocator
            t = time.perf_counter()
            loss = loss_fn(net, batch, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        return sorted(times[1:])[len(times[1:]) // 2]
    finally:
        torch.set_num_threads(before)


def estimate_training(specs: Sequence[RunSpec], jobs: int, threads: int = 1) -> TrainingEstimate:
    """Networks left to train x seconds per step measured now (one per network kind, a few steps each)."""
    measured: dict[str, float] = {}
    networks = steps = 0
    core = 0.0
    for spec in specs:
        for name, left in remaining_networks(spec):
            kind = f"{spec.method}.{name}"
            if kind not in measured:
                measured[kind] = measure_step_seconds(spec.cfg, name, threads=threads)
            networks, steps, core = networks + 1, steps + left, core + left * measured[kind]
    return TrainingEstimate(networks, steps, core, measured, jobs)


__all__ = ["DEFAULT_METHODS", "DEFAULT_PAIRS", "RunSpec", "TrainingEstimate", "estimate_training", "parse_pair",
           "default_seed_rows", "plan_runs", "provides_to", "remaining_networks", "row_name", "run_name", "split_variant",
           "training_part"]

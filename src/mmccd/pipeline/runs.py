"""Run folders: create (refusing to overwrite results), train every network of a method, reload.

    RUN/
      config.yaml       resolved config (the run's single source of truth)
      run_info.json     code and package versions, the prepared store, training times
      checkpoints/      <net>.pt: weights, EMA, optimizer, RNG, config, code version
      logs/             <net>.csv training curves (+ tensorboard/ when installed)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from mmccd.atomic import atomic_write, atomic_write_text
from mmccd.checkpoints import load_checkpoint, load_state_checked
from mmccd.config import ExperimentConfig, dump_yaml, from_dict, to_dict
from mmccd.data.dataset import SliceDataset
from mmccd.data.splits import Split
from mmccd.data.store import PreparedStore
from mmccd.distributed import barrier, dist_info
from mmccd.errors import ConfigError, DataError, OutputExistsError
from mmccd.locks import clear, contents, holds_folder_lock
from mmccd.memory import explain_training_failure
from mmccd.provenance import run_info
from mmccd.runtime import resolve_device, seed_everything
from mmccd.scoring import build_method
from mmccd.scoring.base import AnomalyMethod
from mmccd.training import train_network

log = logging.getLogger("mmccd")


def prepare_output_dir(out: Path, *, overwrite: bool, resume: bool, marker: str) -> None:
    """Refuse to write into a folder that already holds results, unless asked to overwrite or resume."""
    out = Path(out)
    if out.exists() and contents(out):
        if overwrite:
            if not (out / marker).exists() and not resume:
                raise OutputExistsError(
                    f"{out} is not empty and does not look like an mmccd output ({marker} missing); "
                    "refusing to delete it: choose another --out")
            if not resume:
                clear(out)  # its lock stays: the caller holds it
        elif not resume:
            raise OutputExistsError(
                f"{out} already holds results ({', '.join(sorted(p.name for p in contents(out))[:5])}); "
                "pass --resume to continue it, --overwrite to replace it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def read_run_config(run_dir: Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml): train first with `mmccd train ... --out {run_dir}`")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is unreadable ({type(exc).__name__}); it is the run's record of its config: "
                          "restore it, or train again into a new folder") from None
    return from_dict(data, where=str(path))  # ConfigError (not a traceback) for a non-mapping or unknown keys


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run_info.json"
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({type(exc).__name__}: {exc}); "
                          f"resume the run (`mmccd train ... --out {run_dir} --resume`) to write it again") from None
    return info if isinstance(info, dict) else {}


def run_split(run_dir: Path) -> Split:
    """The subjects the run was trained on, and its validation and test subjects (run_info.json).

    Runs of earlier versions recorded only their store: its splits.json then."""
    info = read_run_info(run_dir)
    if "split" in info:
        return Split.from_dict(info["split"])
    return Split.of_store(run_store(run_dir).splits())


def run_store(run_dir: Path) -> PreparedStore:
    """The prepared store the run was trained on, checked to hold the same data for the run's subjects.

    Looked for at the path relative to the run (a moved or copied benchmark folder keeps working), then at the
    absolute path recorded at training; a store whose prepare settings or cases differ from what the run
    recorded is refused, naming both stores."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if "prepared" not in info:
        raise ConfigError(f"{run_dir}/run_info.json does not name the prepared store the run was trained on: "
                          f"resume the run (`mmccd train ... --out {run_dir} --resume`) to write it again")
    candidates = [run_dir / info["prepared_relative"]] if info.get("prepared_relative") else []
    candidates.append(Path(info["prepared"]))
    identity = info.get("store")
    problems = []
    for path in dict.fromkeys(candidates):  # the relative one first
        if not (path / "prepare.json").exists():
            problems.append(f"{path}: not there")
            continue
        store = PreparedStore.open(path)
        differ = store.differences(identity) if identity else []
        if not differ:
            return store
        problems.append(f"{path.resolve()}: {'; '.join(differ)}")
    raise DataError(f"the prepared store run {run_dir} was trained on is not found: " + " · ".join(problems),
                    fix="evaluating on another store would choose thresholds on other subjects (maybe the run's "
                        "own training subjects); restore the store (or move the run together with it), or train "
                        "the run again on the store you have")


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / "run_info.json", json.dumps(info, indent=2))


# run_info's record of the code and machine that trained the run (provenance.run_info)
PROVENANCE_KEYS = ("code_version", "packages", "python", "machine", "cpu", "cpu_capability", "torch_threads", "cuda",
                   "device", "time")

# what may change on --resume: more iterations, bookkeeping, and the sections training does not use
RESUME_MAY_CHANGE = ("name", "device", "score", "eval", "train.iterations", "train.checkpoint_every",
                     "train.log_every", "train.num_workers")


def config_changes(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Keys (dotted) that differ between two configs and would change the trained weights."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(to_dict(old)), flat(to_dict(new))
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and not any(k == p or k.startswith(p + ".") for p in RESUME_MAY_CHANGE)]


@holds_folder_lock("run_dir", "train")  # one writer per run folder (locks.py)
def train_run(prepared: Path, run_dir: Path, cfg: ExperimentConfig, *, overwrite: bool = False,
              resume: bool = False, reuse_backward_from: Path | None = None,
              mirror_from: Path | None = None, split: Split | None = None) -> AnomalyMethod:
    """Train every network of `cfg.method` on the healthy slices of the training subjects.

    split: the subjects (default: the store's splits.json); a fold of a cross-validation, for one.
    `reuse_backward_from`: a run whose trained `backward` network (target -> source UNet) is
    identical in role and config, e.g. Cyclic UNet's for MMCCD; its checkpoint is copied.
    `mirror_from`: the same method's run on the reversed pair (target:source, same subjects and training
    settings); its networks that this method's `mirrored_networks` names are copied in their swapped roles
    (Cyclic UNet on t2:flair uses the two translators of flair:t2) and recorded under "borrowed" in run_info."""
    store = PreparedStore.open(prepared)
    cfg = dataclasses.replace(cfg, prepare=store.config)  # the store decides size and normalisation
    rank, _ = dist_info()
    run_dir = Path(run_dir)
    if rank == 0:
        if resume and (run_dir / "config.yaml").exists():
            changes = config_changes(read_run_config(run_dir), cfg)
            if changes:
                raise OutputExistsError(
                    f"{run_dir} was trained with another config ({'; '.join(changes[:4])}"
                    f"{' ...' if len(changes) > 4 else ''}); --resume needs the same config "
                    "(see its config.yaml), or pass --overwrite to start again")
        prepare_output_dir(run_dir, overwrite=overwrite, resume=resume, marker="config.yaml")
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.device)
    method = build_method(cfg)
    split = split or Split.of_store(store.splits())
    if resume and "split" in read_run_info(run_dir) and run_split(run_dir) != split:
        raise OutputExistsError(f"{run_dir} was trained on other subjects ({run_split(run_dir).name}); --resume "
                                "needs the same split, or pass --overwrite to start again")
    train_ids = list(split.train)
    before = read_run_info(run_dir)
    info = before | {
        "prepared": str(Path(prepared).resolve()),
        "prepared_relative": os.path.relpath(Path(prepared).resolve(), run_dir.resolve()),
        "store": store.identity([*split.train, *split.val, *split.test]),
        "split": split.as_dict(), "train_subjects": train_ids, "device": str(device), **run_info()}
    losses = method.losses()
    dataset = SliceDataset(store, train_ids, cfg.source, cfg.target, slices="train")
    info["train_slices"] = len(dataset)
    if rank == 0:  # written now too, so that a run killed mid-training still records its data and versions
        write_run_info(run_dir, info)
    times = info.setdefault("train_seconds", {})
    trained_now: list[str] = []
    mirrored = type(method).mirrored_networks if mirror_from is not None and type(method).mirrors_when(cfg) else {}
    for name, loss_fn in losses.items():
        ckpt = run_dir / "checkpoints" / f"{name}.pt"
        if name in mirrored:
            if rank == 0 and not ckpt.exists():
                there = Path(mirror_from) / "checkpoints" / f"{mirrored[name]}.pt"
                if _copy_mirrored_checkpoint(there, ckpt, cfg):
                    info.setdefault("borrowed", {})[name] = f"{there} (trained as {mirrored[name]} of the reversed pair)"
                    info.setdefault("code_version_by_net", {})[name] = _trained_with_code(there)
            barrier()
        if reuse_backward_from is not None and name == "target_to_source":
            if rank == 0 and not ckpt.exists():
                there = Path(reuse_backward_from) / "checkpoints" / "target_to_source.pt"
                if _copy_compatible_checkpoint(there, ckpt, cfg):
                    info.setdefault("code_version_by_net", {})[name] = _trained_with_code(there)
            barrier()  # the other ranks see the copied checkpoint
        with explain_training_failure(cfg, device, ckpt, name):  # out of memory / disk full: what to lower, where to resume
            result = train_network(method.nets[name], loss_fn, dataset, cfg, ckpt, name, device, log_dir=run_dir / "logs")
        if result.trained_now or name not in times:
            times[name] = round(result.seconds, 1)
            info.setdefault("data_wait_fraction", {})[name] = round(result.data_wait_fraction, 4)
        if result.trained_now:
            trained_now.append(name)
            info.setdefault("code_version_by_net", {})[name] = info["code_version"]
    if not trained_now and "code_version" in before:  # a resume that trained nothing: the code and machine that
        info = ({k: v for k, v in info.items() if k not in PROVENANCE_KEYS}  # trained it stay recorded, not this
                | {k: before[k] for k in PROVENANCE_KEYS if k in before})  # call's (a key recorded since: unknown)
    if rank == 0:
        write_run_info(run_dir, info)
    return method.eval()


def _trained_with_code(ckpt: Path) -> str | None:
    """The code version that trained the network `ckpt` of another run (what a copy of it records)."""
    info = read_run_info(ckpt.parent.parent)
    return info.get("code_version_by_net", {}).get(ckpt.stem) or info.get("code_version")


def _copy_compatible_checkpoint(src: Path, dst: Path, cfg: ExperimentConfig) -> bool:
    """Copy another run's backward network when it was trained as this run would train it. True when copied."""
    if not src.exists():
        return False
    other = from_dict(load_checkpoint(src)["config"])

    def backward_part(train: Any) -> Any:  # the source noise is the forward networks' alone
        return dataclasses.replace(train, source_noise_std=0.0, source_noise_resolution=16)

    pairs = {(cfg.source, cfg.target)}
    if src.stem in read_run_info(src.parent.parent).get("borrowed", {}):  # trained in its roles swapped there
        pairs.add((cfg.target, cfg.source))
    same = (other.network == cfg.network and backward_part(other.train) == backward_part(cfg.train)
            and other.prepare == cfg.prepare and (other.source, other.target) in pairs)
    if same:
        _copy_checkpoint(src, dst)
        log.info("reusing the backward network trained in %s", src.parent.parent)
    return same


def _copy_checkpoint(src: Path, dst: Path) -> None:
    with atomic_write(dst, src.stat().st_size) as tmp:  # never a truncated checkpoint under its name
        shutil.copyfile(src, tmp)


def _copy_mirrored_checkpoint(src: Path, dst: Path, cfg: ExperimentConfig) -> bool:
    """Copy a finished network of the reversed pair's run when it was trained exactly as this run would train
    it (same network, training settings and store; source and target swapped). True when copied."""
    if not src.exists():
        return False
    ckpt = load_checkpoint(src)
    other = from_dict(ckpt["config"])
    same = (ckpt.get("finished", False) and other.network == cfg.network and other.train == cfg.train
            and other.prepare == cfg.prepare and (other.source, other.target) == (cfg.target, cfg.source))
    if same:
        _copy_checkpoint(src, dst)
        log.info("reusing %s of the reversed pair's run %s as %s", src.stem, src.parent.parent, dst.stem)
    else:
        log.info("not reusing %s: it was not trained with this run's settings on the reversed pair; training "
                 "%s here", src, dst.stem)
    return bool(same)


def load_method(run_dir: Path, device: str | None = None) -> AnomalyMethod:
    """The method of a run with its EMA weights, on `device` (default: the run's config)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    method = build_method(cfg)
    for name in method.losses():
        path = run_dir / "checkpoints" / f"{name}.pt"
        ckpt = load_checkpoint(path)
        if not ckpt.get("finished", False):
            raise ConfigError(f"{path} is from an unfinished training run (step {ckpt['step']} of "
                              f"{cfg.train.iterations}): finish it with `mmccd train ... --out {run_dir} --resume`")
        load_state_checked(method.nets[name], ckpt["ema"], path)
    return method.to(resolve_device(device or cfg.device)).eval()

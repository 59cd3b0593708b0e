"""Configuration as data: one frozen dataclass per stage, defaults here, YAML presets to override.

A preset (``src/mmccd/configs/<name>.yaml``) holds only the keys it changes. Unknown keys and
values of the wrong type are rejected with an error that names the key and the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmccd.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
MODALITIES = ("t1", "t1ce", "t2", "flair")
#: every method's name (scoring/__init__ maps each to its class; a test checks the two agree)
METHODS = ("cyclic-unet", "mmccd", "threshold", "ae", "dae", "ddpm", "cddpm")
Modality = Literal["t1", "t1ce", "t2", "flair"]
Method = Literal["cyclic-unet", "mmccd", "threshold", "ae", "dae", "ddpm", "cddpm"]
Amp = Literal["none", "bf16", "fp16", "auto"]
_LITERAL_NOUNS = {typing.get_args(Modality): "contrast", typing.get_args(Method): "method"}
#: contrasts in which tumour and oedema are hyperintense (the rest: T1, hypointense)
BRIGHT_CONTRASTS = ("flair", "t2", "t1ce")
REFERENCE_SIZE = 128  # px: the size at which the paper quotes stripe widths and strides


def scale_from_reference(value: float, size: int, *, even: bool = False, minimum: int = 1) -> int:
    """A length quoted at 128 px (the reference's image size), scaled to `size` px and rounded.

    even=True rounds to an even number (stripe widths: the model was trained on even offsets);
    never below `minimum`. E.g. a 16 px stripe is 8 px at 64, 30 at 240; a 2 px stride is 1 px at 64."""
    scaled = value * size / REFERENCE_SIZE
    return max(minimum, 2 * round(scaled / 2) if even else round(scaled))


@dataclass(frozen=True)
class PrepareConfig:
    """`mmccd prepare`: NIfTI cases -> slice store."""

    size: int = 128  # square in-plane size after crop + resize
    low_percentile: float = 1.0  # of brain voxels, mapped to -1
    high_percentile: float = 99.0  # of brain voxels, mapped to +1
    normalisation: Literal["percentile", "reference"] = "percentile"  # "reference": the authors' half-range centring
    min_brain_fraction: float = 0.1  # of the slice's cropped area, for a slice to count as "with brain"
    train_slice_window: tuple[int, int] | None = None  # e.g. (70, 89): the reference's axial window
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    split_seed: int = 0
    workers: int = 0  # processes over cases; 0 = min(4, cpu count)


@dataclass(frozen=True)
class NetworkConfig:
    """Guided-diffusion-style UNet (models/unet.py)."""

    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes in pixels
    num_head_channels: int = 32
    dropout: float = 0.1


@dataclass(frozen=True)
class DiffusionConfig:
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    stripe_width: int = 16  # px at 128 px, scaled with the image size (scale_from_reference)
    mask_per_batch: bool = False  # True = one stripe for the whole batch, as the reference code


@dataclass(frozen=True)
class BaselineConfig:
    """Hyper-parameters of the reconstruction baselines (scoring/baselines/, docs/methods.md)."""

    latent_channels: int = 64  # AE/DAE: channels of the spatial bottleneck
    dae_noise_resolution: int = 16  # DAE: coarse noise drawn at this size and upsampled (Kascenas 2022)
    dae_noise_std: float = 0.2
    noise_level: int = 500  # DDPM/cDDPM: partial diffusion to this t (of num_timesteps)
    noise_levels: tuple[int, ...] = ()  # if set: average the error over these t (ensemble)
    noise_type: Literal["gaussian", "simplex"] = "gaussian"  # "simplex": AnoDDPM's (gradient-noise stand-in)
    cond_dim: int = 128  # cDDPM: size of the latent embedding of the clean input
    threshold_sign: Literal["bright", "dark", "auto"] = "auto"  # intensity threshold; "auto": from the contrast


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 100_000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1+step)/(10+step)): useful EMA on short runs
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    num_workers: int = 0
    amp: Amp = "none"  # fp16 only on CUDA; "auto": bf16 where native (runtime.autocast_dtype)
    augment_flip: bool = True  # random left-right flip of training slices
    # beyond the paper (docs/quality.md): the forward networks learn from a source corrupted by coarse noise, as the
    # DAE does (Kascenas et al. 2022), so at test time they translate what they cannot explain as if healthy
    source_noise_std: float = 0.0  # std of the coarse noise added inside the brain to the forward net's source; 0 = off
    source_noise_resolution: int = 16  # its grid (px across), upsampled bilinearly


@dataclass(frozen=True)
class ScoreConfig:
    """How a trained method scores. MMCCD's speed levers are measured in docs/speed.md."""

    num_masks: int = 128  # stripes in the ensemble (split evenly over `mask_directions`); 0 = every mask_stride px
    mask_stride: int = 2  # px between stripe starts at 128 px (scaled with size), when num_masks = 0
    mask_family: Literal["stripes", "checkerboard"] = "stripes"  # checkerboard: blocks of the stripe width
    mask_directions: tuple[Literal["vertical", "horizontal"], ...] = ("vertical", "horizontal")
    stripes_per_mask: int = 1  # > 1: each mask hides that many equally spaced stripes (fewer masks)
    ddim_steps: int = 100
    timestep_spacing: Literal["leading", "trailing"] = "leading"  # reference: 990..0; trailing 999..: few steps
    eta: float = 0.0
    composite: bool = False  # MMCCD: one backward pass on the composite of all masks' imagined regions
    mask_batch: int = 32  # masks per network call (per slice)
    slice_batch: int = 1  # slices per network call: a call holds mask_batch x slice_batch images
    channels_last: bool = False
    amp: Amp = "none"  # bf16: CPU with avx512_bf16/AMX, or CUDA · fp16: CUDA · auto: bf16/fp16 where native
    compile: bool = False  # torch.compile the networks (opt-in: minutes of compile time)
    seed: int = 0
    # beyond the paper (docs/quality.md): each off by default
    calibration: Literal["none", "intensity", "intensity-edge"] = "none"  # relative to healthy tissue (calibration.py)
    calibration_bins: int = 32  # source-intensity bins of the healthy calibration
    calibration_edge_bins: int = 4  # "intensity-edge": gradient-magnitude bins (healthy quantiles) per intensity bin
    residual: Literal["squared", "bright", "dark", "auto"] = "squared"  # which side of (source - recon) counts;
    # auto: only hyperintense deviations for FLAIR, T2, T1ce and hypointense ones for T1 (where lesions lie)
    extra_targets: tuple[Modality, ...] = ()  # MMCCD: more target contrasts (their runs beside this one), combined
    refine_iterations: int = 0  # MMCCD: iterative mask refinement after the first map (IterMask-style); 0 = off
    refine_quantile: float = 0.9  # ... pixels above this quantile of a slice's first map stay hidden at first


@dataclass(frozen=True)
class EvalConfig:
    threshold_quantiles: int = 200  # candidate thresholds searched on validation maps
    figure_slices: int = 6
    eval_slices: Literal["max_tumour", "all"] = "max_tumour"  # reference protocol; "all": every slice with brain


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    method: Method = "cyclic-unet"
    source: Modality = "flair"
    target: Modality = "t2"
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------- loading and merging


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting YAML lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:  # the one place string options are checked
        if value not in args:
            noun = _LITERAL_NOUNS.get(args, "value")
            raise ConfigError(f"{where}: unknown {noun} {value!r}; expected one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {tp}, found {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, found {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, found {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def merge(cfg: Any, overrides: dict[str, Any], where: str = "config") -> Any:
    """Return a copy of dataclass `cfg` with nested `overrides` applied, validated."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping, found {overrides!r}")
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{key}'. Known keys: {', '.join(sorted(fields))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(cfg, **changes)


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: the problem and its line/column (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({type(exc).__name__}: {exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


PER_METHOD = "per_method"  # preset key: {method name: sections that apply only to that method}
EXTENDS = "extends"  # preset key: the preset (name or path) whose keys this one starts from


def preset_path(preset: str | Path, what: str = "preset") -> Path:
    """A preset name (a file in configs/) or a path to a YAML file -> its path."""
    path = Path(preset)
    if not path.suffix:
        path = CONFIG_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown {what} '{preset}'. Available: {', '.join(preset_names())}, "
                              "or a path to a YAML file")
    return path


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_preset(preset: str | Path, what: str = "preset", _seen: tuple[Path, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """(path, keys) of a preset with its `extends:` chain resolved (the parent's keys, then its own)."""
    path = preset_path(preset, what)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: '{EXTENDS}' forms a cycle ({' -> '.join(p.name for p in (*_seen, path))})")
    data = dict(read_yaml(path))
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return path, data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: {EXTENDS}: expected a preset name or a YAML path, found {parent!r}")
    if not Path(parent).suffix or Path(parent).is_absolute():
        ref = parent
    else:  # a relative path: from the extending file's folder
        ref = path.parent / parent
    _, base = read_preset(ref, what, (*_seen, path.resolve()))
    base.pop("name", None)  # the extending preset names itself (or stays unnamed)
    return path, _deep_merge(base, data)


def load_config(preset: str | Path = "cpu", overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults <- preset YAML (a name in configs/ or a path, `extends:` resolved) <- `overrides`."""
    path, data = read_preset(preset)
    per_method = data.pop(PER_METHOD, None) or {}
    if not isinstance(per_method, dict):
        raise ConfigError(f"{path}: {PER_METHOD}: expected a mapping of method name to config sections")
    unknown = sorted(set(per_method) - set(METHODS))
    if unknown:
        raise ConfigError(f"{path}: {PER_METHOD}: unknown method {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(METHODS)}")
    cfg = merge(ExperimentConfig(), data, where=str(path))
    if overrides:
        cfg = merge(cfg, overrides, where="overrides")
    if cfg.method in per_method:  # defaults <- preset <- preset's section for this method <- overrides
        cfg = merge(cfg, per_method[cfg.method] or {}, where=f"{path}: {PER_METHOD}.{cfg.method}")
        if overrides:
            cfg = merge(cfg, overrides, where="overrides")
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """What a field's type cannot say (string options are checked by their Literal types in `merge`)."""
    if cfg.source == cfg.target:
        raise ConfigError(f"source and target contrast are both '{cfg.source}': choose two different contrasts")
    validate_score(cfg.score)


def validate_score(sc: ScoreConfig) -> None:
    for key in ("mask_batch", "slice_batch", "ddim_steps", "stripes_per_mask", "calibration_bins"):
        if getattr(sc, key) < 1:
            raise ConfigError(f"score.{key}: expected an integer >= 1, found {getattr(sc, key)}")
    if sc.extra_targets and sc.calibration == "none":
        raise ConfigError("score.extra_targets combines the maps of several targets on one scale: it needs "
                          "score.calibration (intensity or intensity-edge)")
    if sc.refine_iterations < 0 or not 0.0 < sc.refine_quantile < 1.0:
        raise ConfigError(f"score.refine_iterations >= 0 and 0 < score.refine_quantile < 1 expected, found "
                          f"{sc.refine_iterations} and {sc.refine_quantile}")


def load_score_preset(preset: str | Path) -> ScoreConfig:
    """The `score` section of a preset (`extends:` resolved; defaults for keys it does not set)."""
    path, data = read_preset(preset, "scoring preset")
    sc = merge(ScoreConfig(), data.get("score") or {}, where=f"{path}: score")
    validate_score(sc)
    return sc


SPEED_ONLY_SCORE_KEYS = ("mask_batch", "slice_batch", "channels_last", "compile")  # do not change the maps
#: keys of earlier versions that are gone, with the value that meant "off": a saved config holding that value
#: still loads (the key is dropped); any other value is an error (the run relied on something removed)
RETIRED_KEYS = {("score", "smooth_sigma"): 0.0}


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-YAML form (tuples as lists)."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def from_dict(data: dict[str, Any], where: str = "saved config") -> ExperimentConfig:
    """A saved config (config.yaml, a checkpoint's) back as an ExperimentConfig; retired no-op keys dropped."""
    if isinstance(data, dict):
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for (section, key), off in RETIRED_KEYS.items():
            values = data.get(section)
            if isinstance(values, dict) and key in values:
                if values[key] != off:
                    raise ConfigError(f"{where}: {section}.{key} = {values[key]!r} is no longer supported (it was "
                                      f"removed in this version of mmccd); train or evaluate with an earlier version")
                del values[key]
    return merge(ExperimentConfig(), data, where=where)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

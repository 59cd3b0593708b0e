"""The `[preprocess]` extra: heavy dependencies imported lazily, with an error that names the extra."""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from types import ModuleType

from mmccd.errors import MmccdError

INSTALL = "pip install 'mmccd[preprocess]'"
# import name -> distribution name (for versions in preprocess.json)
DISTRIBUTIONS = {"SimpleITK": "simpleitk", "deepbet": "deepbet", "dcm2niix": "dcm2niix", "pydicom": "pydicom",
                 "nibabel": "nibabel", "numpy": "numpy", "scipy": "scipy", "torch": "torch",
                 "brainles_preprocessing": "brainles-preprocessing"}


class MissingExtraError(MmccdError, ImportError):
    """A dependency of the `[preprocess]` extra is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise MissingExtraError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{purpose} needs the Python package '{DISTRIBUTIONS.get(module, module)}', "
                                f"which is not installed ({exc}); install the extra: {INSTALL}") from None


def available(module: str) -> bool:
    """True when `module` can be imported (without importing it now)."""
    return importlib.util.find_spec(module) is not None


def versions(modules: tuple[str, ...] = tuple(DISTRIBUTIONS)) -> dict[str, str]:
    """Installed distribution versions of `modules` (absent ones left out)."""
    out = {}
    for m in modules:
        try:
            out[DISTRIBUTIONS.get(m, m)] = metadata.version(DISTRIBUTIONS.get(m, m))
        except metadata.PackageNotFoundError:
            pass
    return out

"""The prepared store: slices on disk as .npy, read memory-mapped without decoding NIfTI again.

    PREPARED/
      prepare.json                 PrepareConfig used, modalities, mmccd version, created time
      splits.json                  subject-level splits (splits.py), written once
      cases/<case_id>/images.npy   (n, 4, S, S) float16, channels = MODALITIES ("t1","t1ce","t2","flair");
                                   a missing modality is -1 (see meta "modalities_present")
                      brain.npy    (n, S, S) uint8 0/1
                      seg.npy      (n, S, S) uint8: 0 background, 1 necrotic, 2 oedema, 3 enhancing
                                   (BraTS 2021's 4 stored as 3); absent without segmentation
                      meta.json    written LAST: its presence marks the case complete

n = stored axial slices (every slice with brain); meta.json holds the geometry needed to write
maps back into the input grid (see prepare.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import mmccd
from mmccd.atomic import atomic_save_npy, atomic_write_text
from mmccd.config import MODALITIES, PrepareConfig, merge, to_dict
from mmccd.errors import ConfigError, DataError

PREPARE_JSON = "prepare.json"
SPLITS_JSON = "splits.json"
STORE_FORMAT = 1


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=_json_default) + "\n"


def prepare_record(cfg: PrepareConfig, required: Sequence[str]) -> dict[str, Any]:
    """The content of prepare.json: config, code version and package versions (provenance.py)."""
    from mmccd.provenance import code_version, package_versions

    return {"format": STORE_FORMAT, "config": to_dict(cfg), "modalities": list(MODALITIES),
            "required": list(required), "mmccd_version": mmccd.__version__, "code_version": code_version(),
            "packages": package_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_json(path: Path, what: str, fix: str, case: str | None = None) -> Any:
    """json.loads of a file this package wrote, with a DataError (not a traceback) if it is damaged."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{what} is unreadable", case=case, file=path, found=f"{type(exc).__name__}: {exc}",
                        fix=fix) from None


def read_prepare_json(root: str | Path) -> dict[str, Any] | None:
    path = Path(root) / PREPARE_JSON
    if not path.exists():
        return None
    return read_json(path, "prepare.json", "delete the prepared folder and run `mmccd prepare` again")


def write_prepare_json(root: str | Path, cfg: PrepareConfig, required: Sequence[str]) -> None:
    atomic_write_text(Path(root) / PREPARE_JSON, dumps(prepare_record(cfg, required)))


def case_dir(root: str | Path, case_id: str) -> Path:
    return Path(root) / "cases" / case_id


def is_complete(root: str | Path, case_id: str) -> bool:
    return (case_dir(root, case_id) / "meta.json").exists()


def write_case(root: str | Path, case_id: str, images: np.ndarray, brain: np.ndarray, seg: np.ndarray | None,
               meta: dict[str, Any]) -> Path:
    """Write one case: arrays to temp names then renamed, meta.json last. Returns the case folder.

    images (n, 4, S, S) -> float16; brain (n, S, S) -> uint8; seg (n, S, S) -> uint8 or None."""
    folder = case_dir(root, case_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)  # incomplete until rewritten
    for stale in folder.glob(".tmp-*"):  # left by a writer killed mid-write; one process writes a case
        stale.unlink(missing_ok=True)
    atomic_save_npy(folder / "images.npy", images.astype(np.float16))
    atomic_save_npy(folder / "brain.npy", brain.astype(np.uint8))
    if seg is not None:
        atomic_save_npy(folder / "seg.npy", seg.astype(np.uint8))
    else:
        (folder / "seg.npy").unlink(missing_ok=True)
    atomic_write_text(folder / "meta.json", dumps(meta))
    return folder


class PreparedStore:
    """Read access to a prepared folder; arrays are memory-mapped (np.load(mmap_mode="r"))."""

    def __init__(self, root: Path, record: dict[str, Any]):
        self.root = Path(root)
        self.record = record
        self._meta: dict[str, dict[str, Any]] = {}

    @classmethod
    def open(cls, root: str | Path) -> PreparedStore:
        root = Path(root)
        hint = f"run `mmccd prepare --data <folder of cases> --out {root}` first"
        if not root.is_dir():
            raise DataError("the prepared folder does not exist", file=root, fix=hint)
        record = read_prepare_json(root)
        if record is None:
            raise DataError("not a prepared folder", file=root, expected=f"{PREPARE_JSON} written by `mmccd prepare`",
                            found="no prepare.json", fix=hint)
        if record.get("format") != STORE_FORMAT:
            raise DataError("the prepared folder has another format", file=root / PREPARE_JSON,
                            expected=f"format {STORE_FORMAT}", found=f"format {record.get('format')}",
                            fix="prepare the data again with this version of mmccd")
        return cls(root, record)

    @property
    def config(self) -> PrepareConfig:
        try:
            return merge(PrepareConfig(), self.record["config"], where=str(self.root / PREPARE_JSON))
        except (ConfigError, KeyError) as exc:
            raise DataError("prepare.json holds an invalid config", file=self.root / PREPARE_JSON, found=str(exc),
                            fix="prepare the data again with this version of mmccd") from None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.record.get("modalities", MODALITIES))

    @property
    def case_ids(self) -> list[str]:
        """Complete cases (meta.json present), sorted."""
        cases = self.root / "cases"
        if not cases.is_dir():
            return []
        return sorted(p.name for p in cases.iterdir() if (p / "meta.json").exists())

    def _dir(self, case_id: str) -> Path:
        folder = case_dir(self.root, case_id)
        if not (folder / "meta.json").exists():
            raise DataError("case not in the prepared folder (or incomplete)", case=case_id, file=folder,
                            fix=f"run `mmccd prepare` again to complete {self.root}")
        return folder

    def meta(self, case_id: str) -> dict[str, Any]:
        if case_id not in self._meta:
            self._meta[case_id] = read_json(self._dir(case_id) / "meta.json", "the case's meta.json",
                                            f"delete {case_dir(self.root, case_id)} and run `mmccd prepare` again",
                                            case=case_id)
        return self._meta[case_id]

    def _array(self, case_id: str, name: str) -> np.ndarray:
        path = self._dir(case_id) / name
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:  # truncated or damaged after it was written (copy, disk)
            raise DataError("a prepared array is damaged", case=case_id, file=path,
                            found=f"{type(exc).__name__}: {exc}",
                            fix=f"delete {path.parent} and run `mmccd prepare` again (it redoes only that case)") from None

    def images(self, case_id: str) -> np.ndarray:
        """(n, 4, S, S) float16 memmap, channels in `modalities` order."""
        return self._array(case_id, "images.npy")

    def brain(self, case_id: str) -> np.ndarray:
        """(n, S, S) uint8 memmap."""
        return self._array(case_id, "brain.npy")

    def seg(self, case_id: str) -> np.ndarray | None:
        """(n, S, S) uint8 memmap (labels 0..3) or None without segmentation."""
        return self._array(case_id, "seg.npy") if (self._dir(case_id) / "seg.npy").exists() else None

    def spacing(self, case_id: str) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm of the stored slices: the original voxel spacing along the axial
        axis, and in-plane the original spacing scaled by the crop box side / the stored size."""
        meta = self.meta(case_id)
        voxel = np.linalg.norm(np.asarray(meta["affine"], dtype=float)[:3, :3], axis=0)
        axis = int(meta["axial_axis"])
        row, col = (voxel[a] for a in range(3) if a != axis)
        scale = float(meta["box"][2]) / float(meta["size"])
        return float(voxel[axis]), float(row * scale), float(col * scale)

    def case_fingerprint(self, case_id: str) -> str:
        """A content fingerprint of one stored case: its meta.json and the size and first and last MiB of
        each array (cheap: the arrays are not read in full), so a case prepared again differently differs."""
        folder = self._dir(case_id)
        h = hashlib.sha256((folder / "meta.json").read_bytes())
        for name in ("images.npy", "brain.npy", "seg.npy"):
            path = folder / name
            if path.exists():
                size = path.stat().st_size
                h.update(f"{name}:{size}".encode())
                with path.open("rb") as f:
                    h.update(f.read(1 << 20))
                    f.seek(max(0, size - (1 << 20)))
                    h.update(f.read(1 << 20))
        return h.hexdigest()[:16]

    def identity(self, case_ids: Sequence[str]) -> dict[str, Any]:
        """What a run trained on this store records of it: prepare settings and the cases it uses."""
        return {"prepare": self.record.get("config"), "cases": {c: self.case_fingerprint(c) for c in sorted(case_ids)}}

    def differences(self, identity: dict[str, Any]) -> list[str]:
        """How this store differs from a recorded `identity` (empty: it holds the same data for those cases)."""
        out = []
        if identity.get("prepare") != self.record.get("config"):
            out.append("other prepare settings")
        missing = [c for c in identity.get("cases", {}) if not is_complete(self.root, c)]
        if missing:
            out.append(f"{len(missing)} of its cases missing ({', '.join(missing[:3])})")
        changed = [c for c, fp in identity.get("cases", {}).items()
                   if c not in missing and self.case_fingerprint(c) != fp]
        if changed:
            out.append(f"{len(changed)} case(s) prepared differently ({', '.join(changed[:3])})")
        return out

    def splits(self) -> dict[str, Any]:
        path = self.root / SPLITS_JSON
        if not path.exists():
            raise DataError("the prepared folder has no splits", file=path,
                            fix=f"run `mmccd prepare` again on {self.root} to finish it")
        return read_json(path, "splits.json", "delete it and run `mmccd prepare` again to write new splits")

    def __repr__(self) -> str:
        return f"PreparedStore({str(self.root)!r}, {len(self.case_ids)} cases)"

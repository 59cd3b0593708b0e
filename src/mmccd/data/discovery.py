"""Find cases on disk: one folder per case, files paired to modalities by name (never by position).

Naming schemes recognised without configuration:

- BraTS 2017-2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``
- BraTS 2023+:     ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (t1n->t1, t1c->t1ce, t2w->t2, t2f->flair)

``.nii`` works as well as ``.nii.gz``. Anything else: pass a `layout`, a mapping of modality
("t1", "t1ce", "t2", "flair", "seg") to a glob pattern relative to the case folder, where
``{case}`` stands for the folder name, e.g. ``{"t1": "{case}_T1w.nii.gz", "flair": "*FLAIR*.nii*"}``.

Each case folder follows one naming: a data folder may mix BraTS 2021 and 2023 cases (each read by its own
naming, which also fixes its segmentation labels), but a case whose files mix the two is refused (its label
convention would be ambiguous).

Problems of one case (duplicates, a mixed naming, no NIfTI file, a broken link, a folder name that is not
UTF-8) do not raise here: they are recorded in `Case.problems` and reported by validation, so one bad case
never hides the others. Subfolders without case files are listed as such beside the cases (never silently
dropped); a data folder with no case at all is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mmccd.config import MODALITIES
from mmccd.data.io import is_nifti_name, strip_nifti_suffix
from mmccd.errors import DataError, printable

SEG = "seg"
# naming -> (separator, {file suffix: canonical key})
NAMINGS: dict[str, tuple[str, dict[str, str]]] = {
    "brats2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": SEG}),
    "brats2023": ("-", {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": SEG}),
}
# suffix aliases accepted for a single file (case_from_path)
FILE_ALIASES = {"t1": "t1", "t1n": "t1", "t1w": "t1", "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
                "t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair"}


@dataclass(frozen=True)
class Case:
    """One subject's co-registered volumes.

    images: canonical modality ("t1", "t1ce", "t2", "flair") -> file; absent keys are missing
    seg:    label map file or None
    naming: "brats2021" | "brats2023" | "custom" | "single-file" | "none" (no case file found)
    problems: discovery problems (duplicate or ambiguous files, ...), reported by validation
    """

    case_id: str
    root: Path
    images: dict[str, Path]
    seg: Path | None
    naming: str
    problems: tuple[str, ...] = field(default=())

    @property
    def files(self) -> dict[str, Path]:
        """images plus "seg" when present."""
        return {**self.images, **({SEG: self.seg} if self.seg is not None else {})}


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI-named files of `folder`, hidden ones (e.g. a killed writer's .tmp-*) excluded; a broken link is
    kept so that reading it says so (instead of "missing")."""
    return sorted(p for p in folder.iterdir() if (p.is_file() or _broken_link(p)) and is_nifti_name(p.name)
                  and not p.name.startswith("."))


def _broken_link(p: Path) -> bool:
    return p.is_symlink() and not p.exists()


def _match_naming(files: list[Path], naming: str) -> dict[str, list[Path]]:
    sep, suffixes = NAMINGS[naming]
    found: dict[str, list[Path]] = {}
    for f in files:
        stem = strip_nifti_suffix(f.name).lower()
        for suffix, key in suffixes.items():
            if stem.endswith(sep + suffix):
                found.setdefault(key, []).append(f)
    return found


def _match_layout(folder: Path, layout: Mapping[str, str]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for key, pattern in layout.items():
        matches = sorted(p for p in folder.glob(pattern.replace("{case}", folder.name))
                         if (p.is_file() or _broken_link(p)) and not p.name.startswith("."))
        if matches:
            found[key] = matches
    return found


def _check_layout(layout: Mapping[str, str]) -> None:
    bad = [k for k in layout if k not in (*MODALITIES, SEG)]
    if bad:
        raise DataError(f"unknown key(s) in the file layout: {', '.join(bad)}",
                        expected=f"keys among {', '.join((*MODALITIES, SEG))}", found=", ".join(sorted(layout)))


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths)


def _build_case(folder: Path, found: dict[str, list[Path]], naming: str, problems: list[str],
                layout: Mapping[str, str] | None = None) -> Case:
    images: dict[str, Path] = {}
    seg = None
    for key in (*MODALITIES, SEG):
        paths = found.get(key, [])
        if len(paths) > 1:
            if layout:
                problems.append(f"the layout pattern {layout[key]!r} for {key} matches {len(paths)} files: "
                                f"{_names(paths)} (make the pattern match exactly one file per case)")
            else:
                problems.append(f"duplicate files for {key}: {_names(paths)} (keep exactly one)")
            continue
        if paths:
            if key == SEG:
                seg = paths[0]
            else:
                images[key] = paths[0]
    return Case(folder.name, folder, images, seg, naming, tuple(problems))


def _problem_case(folder: Path, problem: str) -> Case:
    """A folder that cannot be read as a case: no files, one problem saying why (its id printable)."""
    return Case(printable(folder.name), folder, {}, None, "none", (problem,))


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.fsdecode's escapes of bytes that are not UTF-8
        return False


def discover_case(folder: str | Path, layout: Mapping[str, str] | None = None) -> Case:
    """The Case of one case folder (problems recorded, never raised)."""
    folder = Path(folder)
    if not _is_utf8(folder.name):  # its id would go into file names, JSON, CSV and HTML: refuse it here, clearly
        return _problem_case(folder, f"the case folder name is not valid UTF-8 (shown as '{printable(folder.name)}'); "
                                     "rename the folder and its files in UTF-8 (e.g. `convmv -f latin1 -t utf8 -r`)")
    if layout:
        _check_layout(layout)
        found = _match_layout(folder, layout)
        problems = [] if found else [f"no file matches the layout {dict(layout)}"]
        return _build_case(folder, found, "custom", problems, layout)
    files = _nifti_files(folder)
    matches = {naming: _match_naming(files, naming) for naming in NAMINGS}
    naming = max(NAMINGS, key=lambda n: sum(len(v) for v in matches[n].values()))
    found = matches[naming]
    problems = []
    if all(matches.values()):  # both namings in one case: each file taken, the case refused
        found = {}
        for n in NAMINGS:
            for key, paths in matches[n].items():
                found.setdefault(key, []).extend(paths)
        listed = " and ".join(f"the BraTS {n[-4:]} naming ({_names(sorted(p for v in matches[n].values() for p in v))})"
                              for n in NAMINGS)
        problems.append(f"the file names mix {listed}; rename them to one naming (each fixes the segmentation "
                        "labels: enhancing tumour is 4 in BraTS 2021, 3 in 2023)")
    if not found:
        problems.append(f"no file follows the BraTS 2021 (<case>_flair.nii.gz) or 2023 (<case>-t2f.nii.gz) naming "
                        f"(files: {_names(files) or 'none'}); pass a layout for other names")
    return _build_case(folder, found, naming, problems)


def _folder_without_case_files(folder: Path, layout: Mapping[str, str] | None) -> str:
    """Why a subfolder of the data folder holds no case (the problem of its listed, skipped case)."""
    if _broken_link(folder):
        return (f"the case folder is a broken symbolic link (to {os.readlink(folder)}); fetch the data it points to "
                "(e.g. `datalad get`) or remove the link")
    try:
        entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        return f"the case folder cannot be listed ({exc.strerror or exc}); check its permissions"
    held = "it is empty"
    if entries:
        held = (f"it holds {len(entries)} other entr{'y' if len(entries) == 1 else 'ies'}: {', '.join(entries[:5])}"
                + (", ..." if len(entries) > 5 else ""))
    wanted = f"no file matches the layout {dict(layout)}" if layout else "no NIfTI file in the case folder"
    return (f"{wanted} ({held}); add the case's .nii.gz files (DICOM: convert with dcm2niix) or move the folder "
            "out of the data folder")


def find_cases(root: str | Path, layout: Mapping[str, str] | None = None) -> list[Case]:
    """Every subfolder of `root` that holds NIfTI files (or matches `layout`) is a case; sorted by id.

    Beside at least one such case, every other subfolder (empty, without NIfTI files, a broken link) is a case
    with a problem, listed and skipped by validation. Raises DataError only for problems of `root` itself
    (missing, not a folder, no case folders)."""
    root = Path(root)
    if not root.exists():
        raise DataError("the data folder does not exist", file=root, fix="check the --data path")
    if not root.is_dir():
        raise DataError("the data path is not a folder", file=root,
                        expected="a folder with one subfolder per case", found="a file",
                        fix="to score a single file, pass it to `mmccd score`")
    if layout:
        _check_layout(layout)
    cases, others = [], []
    for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".")
                         and (p.is_dir() or (_broken_link(p) and not is_nifti_name(p.name)))):
        if folder.is_dir() and (_match_layout(folder, layout) if layout else _nifti_files(folder)):
            cases.append(discover_case(folder, layout))
        else:
            others.append(_problem_case(folder, _folder_without_case_files(folder, layout)))
    if not cases:
        flat = _nifti_files(root)
        fix = None
        if layout:
            found = f"no subfolder with files matching the layout {dict(layout)}"
        elif flat:
            found = f"{len(flat)} NIfTI file(s) directly in the folder and no case folders"
            fix = "put each case's files in a folder named after the case"
            if discover_case(root).images:
                fix = ("this looks like one case folder: pass the folder that holds the case folders "
                       f"(e.g. {root.parent})")
        else:
            found = "no subfolder with NIfTI files"
        if others:
            found += f" ({len(others)} subfolder(s) without: {', '.join(c.case_id for c in others[:5])}" \
                     + (", ..." if len(others) > 5 else "") + ")"
        raise DataError("no cases found", file=root, expected="one subfolder per case holding its NIfTI files "
                        "(e.g. BraTS2021_00000/BraTS2021_00000_flair.nii.gz)", found=found, fix=fix)
    return sorted(cases + others, key=lambda c: c.case_id)


def case_from_path(path: str | Path, modality: str | None = None, layout: Mapping[str, str] | None = None) -> Case:
    """A case folder, or a single NIfTI file of one contrast (naming "single-file").

    For a file the modality is `modality` or inferred from the name's suffix (``_flair``, ``-t2f``, ...);
    the case id is the name without that suffix."""
    path = Path(path)
    if not path.exists():
        raise DataError("the input does not exist", file=path)
    if path.is_dir():
        return discover_case(path, layout)
    if not is_nifti_name(path.name):
        raise DataError("not a NIfTI file name", file=path, expected="a .nii or .nii.gz file, or a case folder")
    stem = strip_nifti_suffix(path.name)
    head, token = stem, ""
    for sep in ("_", "-"):
        if sep in stem:
            h, t = stem.rsplit(sep, 1)
            if t.lower() in FILE_ALIASES:
                head, token = h, t.lower()
                break
    if not _is_utf8(head):
        raise DataError("the file name is not valid UTF-8", file=path, expected="a UTF-8 name (it gives the case id)",
                        found=f"'{printable(path.name)}'", fix="rename the file in UTF-8 (e.g. `convmv -f latin1 -t utf8`)")
    if modality is None:
        if not token:
            raise DataError("cannot tell the contrast from the file name", file=path,
                            expected="a name ending in _t1, _t1ce, _t2, _flair (or -t1n, -t1c, -t2w, -t2f)",
                            found=path.name, fix="name the contrast explicitly (modality=... / --source)")
        modality = FILE_ALIASES[token]
    if modality not in MODALITIES:
        raise DataError("unknown contrast", file=path, expected=", ".join(MODALITIES), found=modality)
    return Case(head, path.parent, {modality: path}, None, "single-file")

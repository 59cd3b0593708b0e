"""Issue 7.1 at the user level: `mmccd` on broken inputs prints one clear line per problem (file, what was
expected, what was found, what to do), exits non-zero and shows no traceback (that is behind --debug).

One broken input per test, built in a temporary copy of a SYNTHETIC phantom case. BAD_INPUT_KINDS below lists
every kind of the corpus, here and in test_bad_inputs_data.py (issue 17.5), with what mmccd does and its test."""

from __future__ import annotations

import builtins
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from reliability_helpers import image, one_error_line, rewrite, run_mmccd, skipped_case, voxels

import mmccd.data.io as mmccd_io
from mmccd.cli import main
from mmccd.config import load_config
from mmccd.data.prepare import prepare_dataset
from mmccd.errors import CheckpointError, ConfigError

# (kind of bad input, what mmccd does, the test that pins it). What it does: "error" = one line naming the file
# and what to do, exit 2; "skipped" = in a batch the case is skipped and listed with that line (exit 1 when no
# case is left; --stop-on-error stops at it); "warning" = done, with a warning; "accepted" = works end to end.
# One entry per distinct input (two parameters of one test count twice when they are different inputs).
BAD_INPUT_KINDS = [
    # the data folder
    ("data folder that does not exist", "error", "test_missing_folder"),
    ("data folder without case folders", "error", "test_empty_folder"),
    ("data folder that is one case folder", "error", "test_data_folder_that_is_one_case_folder"),
    ("case folder that is a dangling symbolic link", "skipped", "test_case_folder_that_is_a_dangling_symbolic_link"),
    ("empty case folder", "skipped", "test_empty_case_folder_and_a_folder_without_nifti"),
    ("case folder without NIfTI files (DICOM)", "skipped", "test_empty_case_folder_and_a_folder_without_nifti"),
    # names and namings
    ("case missing a contrast", "skipped", "test_case_missing_a_modality"),
    ("two files for one contrast (.nii and .nii.gz)", "skipped", "test_duplicate_modality_files"),
    ("segmentation without images", "skipped", "test_segmentation_without_images"),
    ("BraTS 2021 and 2023 cases in one data folder", "accepted", "test_brats_2021_and_2023_cases_in_one_data_folder"),
    ("one case mixing the 2021 and 2023 namings", "skipped", "test_one_case_mixing_the_2021_and_2023_namings"),
    ("--layout pattern matching two files of a case", "skipped", "test_layout_pattern_that_matches_two_files"),
    ("case folder name that is not UTF-8", "skipped", "test_non_utf8_names"),
    ("file name that is not UTF-8", "accepted (shown escaped)", "test_non_utf8_names"),
    ("case id with spaces", "accepted", "test_case_id_with_spaces_is_accepted_end_to_end"),
    # files and headers
    ("truncated .nii.gz", "error (--stop-on-error)", "test_truncated_nii_gz_in_a_terminal"),
    ("non-NIfTI file with a NIfTI name", "skipped", "test_non_nifti_file_with_a_nifti_name"),
    ("gzip file that is not NIfTI inside", "skipped", "test_gzip_file_that_is_not_nifti_inside"),
    ("file that is a broken symbolic link (git-annex)", "skipped", "test_broken_symbolic_link"),
    ("unreadable file (permission)", "skipped", "test_unreadable_file_simulated"),
    ("4D image", "skipped", "test_4d_or_2d_image"),
    ("2D image", "skipped", "test_4d_or_2d_image"),
    ("4D file with a singleton fourth axis", "accepted",
     "test_4d_file_with_a_singleton_fourth_axis_is_accepted_end_to_end"),
    ("volume of one axial slice", "accepted", "test_volume_of_one_slice"),
    ("volume of one sagittal slice", "skipped", "test_volume_of_one_slice"),
    ("image with a zero-sized dimension", "skipped", "test_image_with_a_zero_sized_dimension"),
    ("RGB voxels", "skipped", "test_voxels_that_are_not_grey_levels"),
    ("complex voxels", "skipped", "test_voxels_that_are_not_grey_levels"),
    ("non-invertible affine", "skipped", "test_affine_that_is_not_invertible_or_holds_nan"),
    ("NaN affine", "skipped", "test_affine_that_is_not_invertible_or_holds_nan"),
    ("contrasts of different shapes", "skipped", "test_shape_mismatch"),
    ("contrasts of different voxel sizes", "skipped", "test_voxel_size_or_orientation_mismatch"),
    ("contrasts of different orientations", "skipped", "test_voxel_size_or_orientation_mismatch"),
    ("segmentation of another shape", "skipped", "test_segmentation_of_another_shape"),
    # voxels
    ("NaN or infinite voxels", "skipped", "test_nan_or_inf_voxels"),
    ("all-zero volume", "skipped", "test_all_zero_volume"),
    ("constant volume", "skipped", "test_constant_volume"),
    ("source contrast that is pure noise", "skipped", "test_source_contrast_that_is_pure_noise"),
    ("16-bit image with a negative scl_slope (inverted)", "skipped", "test_16_bit_image_with_a_negative_scl_slope"),
    ("image that is not skull-stripped (no zero background)", "skipped", "test_image_that_is_not_skull_stripped"),
    ("segmentation labels outside the naming's convention", "skipped", "test_unexpected_segmentation_labels"),
    ("fractional segmentation labels", "skipped", "test_fractional_segmentation_labels"),
    # contrasts, checkpoints, stores, configs, outputs
    ("a contrast name that does not exist", "error", "test_requested_contrast_that_does_not_exist"),
    ("scoring a case without the run's source contrast", "skipped",
     "test_score_a_case_without_the_runs_source_contrast"),
    ("scoring with a broken contrast other than the source", "warning",
     "test_score_needs_only_the_source_a_broken_other_contrast_is_a_warning"),
    ("checkpoint of another architecture", "error", "test_checkpoint_from_another_architecture"),
    ("corrupted checkpoint", "error", "test_corrupted_checkpoint"),
    ("checkpoint from a newer format version", "error", "test_checkpoint_from_a_newer_format_version"),
    ("prepared store damaged after the fact", "error", "test_damaged_prepared_store"),
    ("config with an unknown key", "error", "test_config_with_an_unknown_key_or_a_wrong_type"),
    ("config value of the wrong type", "error", "test_config_with_an_unknown_key_or_a_wrong_type"),
    ("invalid YAML", "error", "test_invalid_yaml_is_one_line"),
    ("output folder that already holds results", "error", "test_output_folder_that_already_holds_results"),
    ("output path that cannot be created", "error", "test_an_output_path_that_cannot_be_created"),
    ("evaluation with other settings already in the run", "error",
     "test_evaluate_does_not_silently_replace_an_evaluation_with_other_settings"),
]


def test_the_corpus_holds_at_least_30_kinds_each_with_its_test():
    here = Path(__file__).parent
    source = "".join((here / name).read_text() for name in ("test_bad_inputs.py", "test_bad_inputs_data.py"))
    kinds = [kind for kind, _, _ in BAD_INPUT_KINDS]
    assert len(kinds) >= 30 and len(set(kinds)) == len(kinds)
    assert [test for _, _, test in BAD_INPUT_KINDS if f"def {test}(" not in source] == []


# ---------------------------------------------------------------- folders


def test_missing_folder(prepare, tmp_path):
    one_error_line(prepare(tmp_path / "nope"), "nope", "does not exist", "check the --data path")


def test_empty_folder(prepare, tmp_path):
    (tmp_path / "empty").mkdir()
    one_error_line(prepare(tmp_path / "empty"), "no cases found", "expected one subfolder per case",
                   "found no subfolder with NIfTI files")


# ---------------------------------------------------------------- files of a case


def test_case_missing_a_modality(prepare, one_case):
    data, case = one_case
    image(case, "t2").unlink()
    skipped_case(prepare(data), "the t2 image is missing", "expected a t2 file (Phantom_00000_t2.nii.gz)",
                 "found modalities flair, seg, t1, t1ce", "add the file")


def test_duplicate_modality_files(prepare, one_case):
    data, case = one_case
    (case / "Phantom_00000_flair.nii").write_bytes(gzip.decompress(image(case, "flair").read_bytes()))
    skipped_case(prepare(data), "duplicate files for flair", "Phantom_00000_flair.nii, Phantom_00000_flair.nii.gz",
                 "keep exactly one")


def test_shape_mismatch(prepare, one_case):
    data, case = one_case
    rewrite(case, "t2", np.ones((40, 48, 32), np.float32))
    skipped_case(prepare(data), "Phantom_00000_t2.nii.gz", "another shape", "expected shape (48, 48, 32)",
                 "found shape (40, 48, 32)", "resample")


@pytest.mark.parametrize("change", ["voxel size", "orientation"])
def test_voxel_size_or_orientation_mismatch(prepare, one_case, change):
    data, case = one_case
    values, affine = voxels(case, "t2")
    if change == "voxel size":
        affine[2, 2] = 2 * affine[0, 0]  # twice as thick (the phantom: 200 mm / 48 voxels = 4.167 mm)
        fragments = ("another voxel size", "expected voxel size 4.167 x 4.167 x 4.167 mm", "found 4.167 x 4.167 x 8.333 mm")
    else:
        affine[0, 0] = -affine[0, 0]  # the same voxel size, the first axis flipped
        fragments = ("another orientation", "expected axes RAS", "found axes LAS", "reorient")
    rewrite(case, "t2", values, affine)
    line = skipped_case(prepare(data), "Phantom_00000_t2.nii.gz", *fragments)
    assert "np.float64" not in line


@pytest.mark.parametrize("shape", [(48, 48, 32, 3), (48, 48)])
def test_4d_or_2d_image(prepare, one_case, shape):
    data, case = one_case
    rewrite(case, "flair", np.ones(shape, np.float32))
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "not a 3D volume", f"found shape {shape}")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_voxels(prepare, one_case, value):
    data, case = one_case
    values, _ = voxels(case, "flair")
    values = values.astype(np.float32)
    values[10, 10, 10] = value
    rewrite(case, "flair", values)
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "NaN or infinite", "expected finite intensities",
                 "found 1 non-finite voxel(s)")


def test_all_zero_volume(prepare, one_case):
    data, case = one_case
    rewrite(case, "flair", np.zeros((48, 48, 32), np.float32))
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "is empty", "expected a skull-stripped brain",
                 "found all voxels 0")


def test_constant_volume(prepare, one_case):
    data, case = one_case
    rewrite(case, "flair", np.full((48, 48, 32), 7.0, np.float32))
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "is constant", "found every voxel 7")


def test_truncated_nii_gz_in_a_terminal(one_case, small_preset, tmp_path):
    """A half-downloaded file, seen from a fresh process: a one-line reason, no traceback."""
    data, case = one_case
    path = image(case, "flair")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run_mmccd("prepare", "--data", data, "--out", tmp_path / "out", "--preset", small_preset,
                       "--workers", "1", "--stop-on-error")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    (line,) = [s for s in result.stderr.splitlines() if "error:" in s]
    for f in ("Phantom_00000_flair.nii.gz", "truncated or corrupt", "EOFError", "download or export the file again"):
        assert f in line, line


@pytest.mark.parametrize("name", ["Phantom_00000_flair.nii.gz", "Phantom_00000_flair.nii"])
def test_non_nifti_file_with_a_nifti_name(prepare, one_case, name):
    data, case = one_case
    image(case, "flair").unlink()
    (case / name).write_text("<html>404 Not Found</html>\n" * 20)
    expected = "a .nii.gz file (gzip)" if name.endswith(".gz") else "a NIfTI-1/2 header"
    skipped_case(prepare(data), name, "not a", f"expected {expected}", "found first bytes", "re-export")


def test_broken_symbolic_link(prepare, one_case):
    """git-annex / datalad folders whose content was never fetched."""
    data, case = one_case
    image(case, "flair").unlink()
    image(case, "flair").symlink_to("../.git/annex/objects/missing")
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "broken symbolic link", "datalad get")


def test_unexpected_segmentation_labels(prepare, one_case):
    data, case = one_case
    seg, _ = voxels(case, "seg")
    seg = seg.astype(np.uint8)
    seg[0, 0, 0] = 7
    rewrite(case, "seg", seg)
    skipped_case(prepare(data), "Phantom_00000_seg.nii.gz", "unexpected labels", "expected labels {0, 1, 2, 4}",
                 "found labels [7]", "map the labels")


def test_segmentation_of_another_shape(prepare, one_case):
    data, case = one_case
    rewrite(case, "seg", np.zeros((48, 48, 30), np.uint8))
    skipped_case(prepare(data), "Phantom_00000_seg.nii.gz", "another shape", "found shape (48, 48, 30)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: chmod cannot make it unreadable "
                                              "(test_unreadable_file_simulated covers the message)")
def test_unreadable_file(prepare, one_case):
    data, case = one_case
    image(case, "flair").chmod(0)
    try:
        skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "permission denied", "chmod a+r")
    finally:
        image(case, "flair").chmod(0o644)


def test_unreadable_file_simulated(prepare, one_case, monkeypatch):
    """The same as test_unreadable_file, with the operating system's refusal simulated (runs as root too)."""
    data, case = one_case
    locked = image(case, "flair")

    def guarded_open(file, *args, **kwargs):
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(mmccd_io, "open", guarded_open, raising=False)
    skipped_case(prepare(data), "Phantom_00000_flair.nii.gz", "permission denied", "chmod a+r")


# ---------------------------------------------------------------- a contrast that does not exist


def test_requested_contrast_that_does_not_exist(prepare, run_cli, one_case, prepared, small_preset, tmp_path):
    data, _ = one_case
    with pytest.raises(SystemExit) as exc:  # argparse: usage + one error line, exit 2
        prepare(data, "--source", "pd")
    assert exc.value.code == 2
    result = run_cli("train", "--prepared", prepared, "--out", tmp_path / "run", "--preset", small_preset,
                     "--set", "source=pd")
    one_error_line(result, "unknown contrast 'pd'", "expected one of t1, t1ce, t2, flair")
    with pytest.raises(ConfigError, match="unknown contrast 'pd'"):  # the function under the CLI, too
        prepare_dataset(data, tmp_path / "api", load_config(small_preset).prepare, required=("pd", "t2"))


def test_score_a_case_without_the_runs_source_contrast(run_cli, runs, one_case, tmp_path):
    data, case = one_case
    image(case, "flair").unlink()
    result = run_cli("score", "--run", runs["cyclic-unet"], "--case", case, "--out", tmp_path / "maps")
    assert result.code == 1 and not result.out
    (line,) = [s for s in result.err.splitlines() if s.startswith("skipped")]
    for f in ("Phantom_00000", "the source contrast is missing", "expected a flair image", "found t1, t1ce, t2"):
        assert f in line, line
    # a single file whose name says T2 is not scored as FLAIR
    result = run_cli("score", "--run", runs["cyclic-unet"], "--case", image(case, "t2"), "--out", tmp_path / "maps")
    assert result.code == 1 and "expected a flair image" in result.err and "found t2" in result.err
    assert not list((tmp_path / "maps").glob("*.nii.gz"))


def test_score_needs_only_the_source_a_broken_other_contrast_is_a_warning(run_cli, runs, one_case, tmp_path, caplog):
    data, case = one_case
    t2 = image(case, "t2")
    t2.write_bytes(t2.read_bytes()[: t2.stat().st_size // 2])  # truncated: unreadable voxels
    result = run_cli("score", "--run", runs["cyclic-unet"], "--case", case, "--out", tmp_path / "maps")
    assert result.code == 0, result
    warning = [s for s in caplog.text.splitlines() if "scoring Phantom_00000 from its flair image alone" in s]
    assert len(warning) == 1 and str(t2) in warning[0] and "truncated or corrupt" in warning[0]
    assert (tmp_path / "maps" / "Phantom_00000_anomaly.nii.gz").exists()
    image(case, "flair").write_bytes(b"not a NIfTI file")  # the source itself broken: skipped, with its name
    result = run_cli("score", "--run", runs["cyclic-unet"], "--case", case, "--out", tmp_path / "maps2")
    assert result.code == 1 and "Phantom_00000_flair.nii.gz" in result.err


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_from_another_architecture(run_cli, runs, run_copy, phantom, tmp_path):
    run = run_copy("cyclic-unet")
    ckpt = run / "checkpoints" / "source_to_target.pt"  # MMCCD's forward net: 2 input channels + time embedding
    shutil.copyfile(runs["mmccd"] / "checkpoints" / "source_to_target.pt", ckpt)
    for argv in (("score", "--run", run, "--case", phantom / "Phantom_00000", "--out", tmp_path / "maps"),
                 ("evaluate", "--run", run)):
        one_error_line(run_cli(*argv), str(ckpt), "another architecture", "missing:", "unexpected:",
                       "use the config saved with that checkpoint or train again")


@pytest.mark.parametrize("damage", ["truncated", "replaced by text"])
def test_corrupted_checkpoint(run_cli, run_copy, phantom, tmp_path, damage):
    run = run_copy("mmccd")
    ckpt = run / "checkpoints" / "target_to_source.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000] if damage == "truncated" else b"not a checkpoint\n" * 10)
    for argv in (("score", "--run", run, "--case", phantom / "Phantom_00000", "--out", tmp_path / "maps"),
                 ("evaluate", "--run", run)):
        one_error_line(run_cli(*argv), str(ckpt), "cannot be read", "corrupt", "delete it and train again")
    assert not (tmp_path / "maps").exists() or not any((tmp_path / "maps").iterdir())


def test_checkpoint_from_a_newer_format_version(run_cli, run_copy, phantom, tmp_path):
    run = run_copy("mmccd")
    ckpt = run / "checkpoints" / "target_to_source.pt"
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    kind, _, version = payload["format"].rpartition("-v")
    payload["format"] = f"{kind}-v{int(version) + 1}"
    torch.save(payload, ckpt)
    for argv in (("score", "--run", run, "--case", phantom / "Phantom_00000", "--out", tmp_path / "maps"),
                 ("evaluate", "--run", run)):
        one_error_line(run_cli(*argv), str(ckpt), "written by a newer mmccd", payload["format"], "upgrade mmccd")
    assert not (tmp_path / "maps").exists() or not any((tmp_path / "maps").iterdir())


def test_corrupted_checkpoint_in_a_terminal_and_with_debug(run_copy, phantom, tmp_path):
    run = run_copy("cyclic-unet")
    ckpt = run / "checkpoints" / "source_to_target.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:3000])
    argv = ["score", "--run", str(run), "--case", str(phantom / "Phantom_00000"), "--out", str(tmp_path / "maps")]
    result = run_mmccd(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [s for s in result.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mmccd score: error: checkpoint {ckpt}"), lines
    with pytest.raises(CheckpointError):  # --debug: the exception propagates (Python prints the traceback)
        main(["--debug", *argv])


# ---------------------------------------------------------------- a prepared store damaged after the fact


@pytest.mark.parametrize("damage", ["images.npy", "meta.json"])
def test_damaged_prepared_store(run_cli, prepared, small_preset, tmp_path, damage):
    store = shutil.copytree(prepared, tmp_path / "store")
    case = sorted(json.loads((store / "splits.json").read_text())["train"])[0]
    path = store / "cases" / case / damage
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # e.g. an interrupted rsync
    result = run_cli("train", "--prepared", store, "--out", tmp_path / "run", "--preset", small_preset)
    one_error_line(result, f"case {case}", str(path), "unreadable" if damage == "meta.json" else "damaged",
                   "run `mmccd prepare` again")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("where", ["preset", "set"])
@pytest.mark.parametrize("problem", ["unknown key", "wrong type"])
def test_config_with_an_unknown_key_or_a_wrong_type(run_cli, prepared, small_preset, tmp_path, where, problem):
    key, value = ("train.iterashuns", "5") if problem == "unknown key" else ("train.iterations", "many")
    if where == "preset":
        path = tmp_path / "my.yaml"
        cfg = yaml.safe_load(small_preset.read_text())
        cfg["train"][key.split(".")[1]] = yaml.safe_load(value)
        path.write_text(yaml.safe_dump(cfg))
        argv = ["--preset", path]
    else:
        argv = ["--preset", small_preset, "--set", f"{key}={value}"]
    result = run_cli("train", "--prepared", prepared, "--out", tmp_path / "run", *argv)
    if problem == "unknown key":
        one_error_line(result, "unknown key 'iterashuns'", "Known keys:", "iterations")
    else:
        one_error_line(result, "train.iterations", "expected an integer", "found 'many'")
    if where == "preset":
        assert str(tmp_path / "my.yaml") in result.err
    assert not (tmp_path / "run").exists()  # nothing created before the config is valid


def test_invalid_yaml_is_one_line(run_cli, prepared, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  iterations: [1, 2\n")
    result = run_cli("train", "--prepared", prepared, "--out", tmp_path / "run", "--preset", path)
    one_error_line(result, str(path), "not valid YAML", "line ")
    assert len(result.err.strip().splitlines()) == 1


# ---------------------------------------------------------------- outputs that already hold results


def test_output_folder_that_already_holds_results(run_cli, prepared, small_preset, run_copy, phantom, tmp_path):
    run = run_copy("cyclic-unet")
    before = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    train = ("train", "--prepared", prepared, "--out", run, "--preset", small_preset)
    one_error_line(run_cli(*train), "already holds results", "--resume", "--overwrite")
    one_error_line(run_cli(*train, "--resume", "--set", "train.lr=0.5"), "trained with another config",
                   "train.lr: 0.001 there, 0.5 now")
    assert run_cli(*train, "--resume", "--set", "train.iterations=20").code == 0  # finished: nothing trained again
    assert before == {p: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    # a folder that is not a run is never deleted, even with --overwrite
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    one_error_line(run_cli("train", "--prepared", prepared, "--out", other, "--preset", small_preset, "--overwrite"),
                   "does not look like an mmccd output", "refusing to delete it")
    one_error_line(run_cli("prepare", "--data", phantom, "--out", other, "--workers", "1"),
                   "not empty and not a prepared folder")
    assert (other / "chapter1.tex").read_text() == "precious"
    # score: existing maps are kept unless --overwrite
    score = ("score", "--run", run, "--case", phantom / "Phantom_00001", "--out", tmp_path / "maps", "--threshold", "0.5")
    assert run_cli(*score).code == 0
    amap = tmp_path / "maps" / "Phantom_00001_anomaly.nii.gz"
    stamp = amap.stat().st_mtime_ns
    result = run_cli(*score)
    assert result.code == 1 and "exists; pass --overwrite to replace it" in result.err
    assert amap.stat().st_mtime_ns == stamp
    assert run_cli(*score, "--overwrite").code == 0 and amap.stat().st_mtime_ns != stamp


def test_an_output_path_that_cannot_be_created(run_cli, phantom, tmp_path):
    """The environment, not the data (permissions, a full disk, a file in the way): one line as well."""
    (tmp_path / "a-file").write_text("")
    one_error_line(run_cli("prepare", "--data", phantom, "--out", tmp_path / "a-file" / "store", "--workers", "1"),
                   "Not a directory", str(tmp_path / "a-file" / "store"), "check the path")


# ---------------------------------------------------------------- a batch with good and bad cases


def _batch(phantom, tmp_path):
    data = tmp_path / "batch"
    for i in range(4):
        shutil.copytree(phantom / f"Phantom_0000{i}", data / f"Phantom_0000{i}")
    image(data / "Phantom_00001", "t2").unlink()  # found by the header checks, before any work
    values, _ = voxels(data / "Phantom_00002", "flair")  # found while preparing (voxels)
    values = values.astype(np.float32)
    values[5, 5, 5] = np.nan
    rewrite(data / "Phantom_00002", "flair", values)
    return data


def test_batch_skips_bad_cases_and_summarises(prepare, phantom, tmp_path):
    result = prepare(_batch(phantom, tmp_path))
    assert result.code == 0
    assert "prepared 2 case(s), reused 0, skipped 2" in result.out
    skipped = [s for s in result.err.splitlines() if "skipped" in s]
    assert len(skipped) == 2
    assert "skipped Phantom_00001" in skipped[0] and "the t2 image is missing" in skipped[0]
    assert "skipped Phantom_00002" in skipped[1] and "NaN or infinite" in skipped[1]
    assert sorted(p.name for p in (tmp_path / "out" / "cases").iterdir() if (p / "meta.json").exists()) == [
        "Phantom_00000", "Phantom_00003"]


@pytest.mark.parametrize("bad", ["header", "voxels"])
def test_batch_stop_on_error(prepare, phantom, tmp_path, bad):
    data = _batch(phantom, tmp_path)
    if bad == "voxels":  # only the NaN case is bad: the cases before it are done, then it stops
        shutil.rmtree(data / "Phantom_00001")
        shutil.copytree(phantom / "Phantom_00001", data / "Phantom_00001")
    result = prepare(data, "--stop-on-error")
    case = "Phantom_00001" if bad == "header" else "Phantom_00002"
    one_error_line(result, f"case {case}")
    done = sorted(p.name for p in (tmp_path / "out" / "cases").glob("*") if (p / "meta.json").exists()) \
        if (tmp_path / "out" / "cases").exists() else []
    assert done == ([] if bad == "header" else ["Phantom_00000", "Phantom_00001"])
    assert not (tmp_path / "out" / "splits.json").exists()  # an interrupted store never freezes its splits


def test_a_store_whose_cases_were_all_bad_can_be_fixed_and_resumed(prepare, one_case, phantom):
    data, case = one_case
    image(case, "t2").unlink()
    assert prepare(data).code == 1
    shutil.copyfile(image(phantom / "Phantom_00000", "t2"), image(case, "t2"))
    result = prepare(data)
    assert result.code == 0 and "prepared 1 case(s)" in result.out, result


def test_evaluate_does_not_silently_replace_an_evaluation_with_other_settings(run_cli, run_copy, tmp_path):
    run = run_copy("cyclic-unet")
    assert run_cli("evaluate", "--run", run).code == 0
    first = (run / "metrics.json").read_text()
    assert run_cli("evaluate", "--run", run).code == 0  # the same settings: evaluated again, same numbers
    assert json.loads((run / "metrics.json").read_text())["threshold"] == json.loads(first)["threshold"]
    line = one_error_line(run_cli("evaluate", "--run", run, "--median", "3"))
    for f in (str(run / "metrics.json"), "other settings", "postprocess", "--overwrite", "--out"):
        assert f in line, line
    assert json.loads((run / "metrics.json").read_text()) == json.loads(first)  # nothing lost
    assert run_cli("evaluate", "--run", run, "--median", "3", "--out", tmp_path / "median3").code == 0
    assert json.loads((tmp_path / "median3" / "metrics.json").read_text())["postprocess"] != json.loads(first)["postprocess"]
    assert run_cli("evaluate", "--run", run, "--median", "3", "--overwrite").code == 0
    assert json.loads((run / "metrics.json").read_text())["postprocess"] != json.loads(first)["postprocess"]

"""The QC montage and the command-line surface (lean: no registration)."""

import argparse

import numpy as np
import pytest

from mmccd.data.raw import cli
from mmccd.data.raw.qc import checkerboard, qc_montage


def test_checkerboard_alternates_tiles():
    a, b = np.zeros((32, 32)), np.ones((32, 32))
    cb = checkerboard(a, b, tile=16)
    assert cb[0, 0] == 0 and cb[0, 16] == 1 and cb[16, 0] == 1 and cb[16, 16] == 0


def test_qc_montage_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, 40),) * 3, indexing="ij")
    mask = x**2 + y**2 + z**2 < 0.6
    vols = {c: (rng.random((40, 40, 40)) + 2 * mask).astype(np.float32) for c in ("t1", "flair")}
    out = qc_montage(vols, mask, "t1", tmp_path / "qc.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="mmccd")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_parser_defaults_and_exclusive_inputs(tmp_path):
    args = _parse(["preprocess", "--case", "raw/p01", "--out", "cases/p01"])
    assert args.command == "preprocess" and args.brain == "deepbet" and args.contrasts == ["t1", "t1ce", "t2", "flair"]
    with pytest.raises(SystemExit):
        _parse(["preprocess", "--case", "a", "--data", "b", "--out", "c"])


def test_main_names_the_extra_when_missing(monkeypatch, tmp_path):
    from mmccd.data.raw import extra

    def missing(module, purpose):
        raise extra.MissingExtraError(f"{purpose} needs {module}; install the extra: {extra.INSTALL}")

    monkeypatch.setattr(extra, "require", missing)
    with pytest.raises(extra.MissingExtraError, match=r"mmccd\[preprocess\]"):
        cli.main(_parse(["preprocess", "--case", str(tmp_path), "--out", str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists()

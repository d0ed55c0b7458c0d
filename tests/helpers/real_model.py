"""Where the real embedding model is: the directory `make models` assembles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def real_model_dir() -> Path:
    """`MEMORYD_TEST_MODEL_DIR` (the Makefile sets it), else
    `models/all-MiniLM-L6-v2`; a relative path is taken from the repository
    root. A missing model fails the test: it must not pass by skipping."""
    path = Path(os.environ.get("MEMORYD_TEST_MODEL_DIR") or "models/all-MiniLM-L6-v2")
    path = path if path.is_absolute() else ROOT / path
    if not (path / "model.onnx").is_file():
        pytest.fail(f"no embedding model in {path}: run `make models` first")
    return path

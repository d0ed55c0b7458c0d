"""The installed `memoryd` command: help that explains every setting, start-up
validation naming the bad variable, and `bootstrap` printing a key once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from memoryd.config import env_name, setting_fields
from memoryd.domain.key_format import parse_key

MEMORYD = Path(sys.executable).parent / "memoryd"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MEMORYD_")}
    return subprocess.run(
        [str(MEMORYD), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        check=False,
    )


def test_the_command_is_installed() -> None:
    assert MEMORYD.is_file(), f"{MEMORYD} missing: is the package installed in this venv?"


def test_top_level_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "bootstrap"):
        assert command in result.stdout
    # The benchmarks are `python -m benchmarks` from a checkout, not part of the product.
    assert "bench" not in result.stdout
    version = run("--version")
    assert version.returncode == 0 and re.search(r"memoryd \d+\.\d+", version.stdout)


@pytest.mark.parametrize("command", ["serve", "bootstrap"])
def test_subcommand_help_explains_every_setting(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for f in setting_fields():
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert env_name(f.name) in text, env_name(f.name)
        first_words = " ".join(f.metadata["help"].split()[:3])
        assert first_words in text, (f.name, first_words)
    if command == "bootstrap":
        assert "--org-name" in text


def test_help_never_shows_secret_values_from_the_environment() -> None:
    result = run(
        "serve",
        "--help",
        env={
            "MEMORYD_DATABASE_URL": "postgresql+asyncpg://u:hunter2@db/x",
            "MEMORYD_OPENAI_API_KEY": "sk-x",
        },
    )
    assert result.returncode == 0
    assert "hunter2" not in result.stdout and "sk-x" not in result.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MEMORYD_PORT": "not-a-port"}, "MEMORYD_PORT"),
        ({"MEMORYD_LOG_LEVEL": "chatty"}, "MEMORYD_LOG_LEVEL"),
        ({"MEMORYD_DATABASE_URL": "mysql://x/y"}, "MEMORYD_DATABASE_URL"),
        ({"MEMORYD_KEY_CACHE_TTL_S": "nan"}, "MEMORYD_KEY_CACHE_TTL_S"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_it(
    env: dict[str, str], named: str, tmp_path: Path
) -> None:
    result = run("serve", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "memoryd.db").exists()  # nothing was started


def test_a_bad_option_names_the_option(tmp_path: Path) -> None:
    result = run("serve", "--data-dir", str(tmp_path), "--port", "http")
    assert result.returncode == 2
    assert "--port" in result.stderr


def test_bootstrap_prints_a_new_owner_key_once(tmp_path: Path) -> None:
    keys = []
    for name in ("first", "second"):
        result = run(
            "bootstrap", "--data-dir", str(tmp_path), "--org-name", name, "--log-level", "DEBUG"
        )
        assert result.returncode == 0, result.stderr
        found = re.findall(r"ms_org_[0-9A-Za-z]+", result.stdout)
        assert len(found) == 1, result.stdout
        assert f"'{name}'" in result.stdout and "ONCE" in result.stdout
        assert found[0] not in result.stderr  # printed, never logged
        parsed = parse_key(found[0])
        assert parsed.kind == "org"
        keys.append(found[0])
    assert keys[0] != keys[1]
    assert (tmp_path / "memoryd.db").is_file()


# --- start-up errors: one line naming the cause, exit status 1 -------------------------

_HASHING = ("--embedding-provider", "hashing", "--embedding-dimension", "64")


def _serve_fails(data_dir: Path, *extra: str) -> str:
    """Runs `memoryd serve` expecting a failed start; its one stderr line."""
    result = run("serve", "--data-dir", str(data_dir), "--log-level", "WARNING", *_HASHING, *extra)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memoryd: cannot start: "), lines[0]
    assert "ms_org_" not in result.stdout  # no organization was made
    return lines[0]


def test_a_busy_port_stops_start_up_with_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _serve_fails(tmp_path, "--port", str(port))
    assert f"127.0.0.1:{port}" in line and "in use" in line


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def test_a_read_only_data_dir_stops_start_up_naming_it(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as data_dir:
        line = _serve_fails(data_dir)
    assert str(data_dir) in line and "read-only" in line
    assert "retry shortly" not in line


def test_a_full_disk_stops_start_up_with_one_line(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "full", "size=256k") as data_dir:
        with contextlib.suppress(OSError), open(data_dir / "filler", "wb") as f:
            while True:
                f.write(bytes(4096))
                f.flush()
        line = _serve_fails(data_dir)
    assert str(data_dir) in line and "no space" in line


def test_a_missing_model_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = run(
        "serve",
        "--data-dir",
        str(tmp_path),
        "--port",
        "0",
        "--log-level",
        "WARNING",
        "--embedding-model-dir",
        str(tmp_path / "no-model"),
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "ms_org_" not in result.stdout


# --- a half-bootstrapped store: detected, and repaired by `bootstrap --new-owner-key` ----


def test_bootstrap_says_how_to_repair_an_org_without_owner_key_and_mints_one(
    tmp_path: Path,
) -> None:
    # what a bootstrap stopped between its two writes leaves: an org, no key
    from datetime import UTC, datetime

    from memoryd.domain.control import AuditQuery, Organization
    from memoryd.storage.sql import SqlControlStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'memoryd.db'}"

    async def make_orphan() -> None:
        store = SqlControlStore(url)
        await store.open()
        await store.create_org(Organization("org_orphan", "default", datetime.now(UTC)))
        await store.close()

    asyncio.run(make_orphan())

    advised = run("bootstrap", "--data-dir", str(tmp_path), "--org-name", "second")
    assert advised.returncode == 0, advised.stderr
    assert "org_orphan" in advised.stderr
    assert "memoryd bootstrap --new-owner-key org_orphan" in advised.stderr

    minted = run("bootstrap", "--data-dir", str(tmp_path), "--new-owner-key", "org_orphan")
    assert minted.returncode == 0, minted.stderr
    keys = re.findall(r"ms_org_[0-9A-Za-z]+", minted.stdout)
    assert len(keys) == 1 and "ONCE" in minted.stdout and "org_orphan" in minted.stdout
    assert keys[0] not in minted.stderr
    key_id = parse_key(keys[0]).key_id

    async def check() -> None:
        store = SqlControlStore(url)
        await store.open()
        try:
            record = await store.get_key(key_id)
            assert record is not None and record.org_id == "org_orphan"
            assert record.scopes == ("*",)
            assert await store.orgs_without_owner_key() == []
            events = (await store.list_audit(AuditQuery("org_orphan"), 10, None)).items
            assert [(e.action, e.target, e.actor_key_id) for e in events] == [
                ("api_key.create", key_id, "bootstrap")
            ]
        finally:
            await store.close()

    asyncio.run(check())

    # by name too, when it is unique; an unknown one is one line and exit 1
    again = run("bootstrap", "--data-dir", str(tmp_path), "--new-owner-key", "second")
    assert again.returncode == 0 and "'second'" in again.stdout
    unknown = run("bootstrap", "--data-dir", str(tmp_path), "--new-owner-key", "org_nope")
    assert unknown.returncode == 1 and "no such organization" in unknown.stderr
    assert "ms_org_" not in unknown.stdout


# --- upgrade-vectors ------------------------------------------------------------------------


def test_upgrade_vectors_brings_an_embedded_store_made_before_keywords_up_to_date(
    tmp_path: Path,
) -> None:
    import json
    import uuid
    from datetime import UTC, datetime

    import qdrant_edge as qe

    from memoryd.domain.memory import MemoryRecord
    from memoryd.domain.tenancy import Tenant
    from memoryd.embeddings.hashing import HashingEmbedder
    from memoryd.storage.vectors.layout import to_payload

    store = tmp_path / "vectors"
    store.mkdir()
    model = HashingEmbedder(64).model_id
    (store / "memoryd.json").write_text(
        json.dumps({"layout": 2, "model_id": model, "dimension": 64})
    )
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=64, distance=qe.Distance.Cosine),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
    )
    shard = qe.EdgeShard.create(str(store / "shard"), config)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rec = MemoryRecord(
        id=str(uuid.uuid4()),
        tenant=Tenant("o", "p", "e"),
        content="Order ORD-1 shipped.",
        metadata={},
        agent_id="",
        thread_id="",
        source="",
        tags=(),
        create_time=at,
        update_time=at,
        expire_time=None,
        revision=1,
    )
    shard.update(
        qe.UpdateOperation.upsert_points([qe.Point(rec.id, [0.125] * 64, to_payload(rec))])
    )
    shard.flush()
    shard.close()

    result = run("upgrade-vectors", "--data-dir", str(tmp_path), *_HASHING, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    made = json.loads((store / "shard" / "edge_config.json").read_text())
    assert "bm25" in made["sparse_vectors"]
    again = run("upgrade-vectors", "--data-dir", str(tmp_path), *_HASHING, timeout=120)
    assert again.returncode == 0, again.stderr


def test_upgrade_vectors_on_an_unreachable_qdrant_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = run(
        "upgrade-vectors",
        "--data-dir",
        str(tmp_path),
        "--qdrant-url",
        f"http://127.0.0.1:{port}",
        *_HASHING,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "Qdrant server is unavailable" in result.stderr

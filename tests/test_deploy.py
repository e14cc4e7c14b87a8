"""The Dockerfile and the Kubernetes manifests agree with the service they run: ports, probe paths, the command,
the settings they set, and the security they promise (non-root, read-only model, keys from a Secret). No docker
daemon or cluster is needed: both are parsed."""

import json
import shlex

import pytest
import yaml

from flows.cli import build_parser
from tasks.runtime.settings import API_KEYS_ENV, ENV_PREFIX, ServeSettings, load_serve_settings
from tasks.serving.app import LIVE_PATH, READY_PATH, create_app
from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
KUBERNETES = REPO / "deploy" / "kubernetes"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    joined, lines = [], []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        lines.append(line.rstrip())
        if not line.rstrip().endswith("\\"):
            joined.append(" ".join(part.rstrip("\\").strip() for part in lines))
            lines = []
    return [(first.upper(), rest.strip()) for first, _, rest in (line.partition(" ") for line in joined)]


def exec_form(arguments: str) -> list[str]:
    """A JSON exec form (["tunegate", "serve"]) or a shell form split as the shell would."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


@pytest.fixture(scope="module")
def docker() -> dict[str, list[str]]:
    """Dockerfile arguments by instruction (every occurrence, in order)."""
    found: dict[str, list[str]] = {}
    for instruction, arguments in dockerfile_instructions(DOCKERFILE.read_text()):
        found.setdefault(instruction, []).append(arguments)
    return found


@pytest.fixture(scope="module")
def docker_env(docker) -> dict[str, str]:
    env = {}
    for arguments in docker["ENV"]:
        env.update(item.split("=", 1) for item in shlex.split(arguments))
    return env


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """deploy/kubernetes's objects by kind."""
    objects = [doc for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "kustomization.yaml"
               for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {obj["kind"]: obj for obj in objects}


@pytest.fixture(scope="module")
def container(manifests) -> dict:
    (only,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def container_env(container) -> dict[str, dict]:
    return {item["name"]: item for item in container["env"]}


@pytest.fixture(scope="module")
def app_paths() -> set[str]:
    """Route paths of the app `tunegate serve` runs, read without starting it (no model is loaded)."""
    settings = load_serve_settings(REPO / "params.yaml", {})
    return {route.path for route in create_app(settings, REPO).routes}


def container_port(container: dict, port) -> int:
    """A port as a number: a container port's name resolves to its number."""
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    return named[port] if isinstance(port, str) else port


def test_deploy_ports_agree_with_the_service_port(docker, docker_env, manifests, container, container_env):
    serve_port = yaml.safe_load((REPO / "params.yaml").read_text())["serve"]["port"]
    (service_port,) = manifests["Service"]["spec"]["ports"]
    (exposed,) = docker["EXPOSE"]
    ports = {
        "params.yaml serve.port": serve_port,
        "Dockerfile EXPOSE": int(exposed.split("/")[0]),
        "Dockerfile TUNEGATE_PORT": int(docker_env["TUNEGATE_PORT"]),
        "containerPort": container_port(container, "http"),
        "Deployment TUNEGATE_PORT": int(container_env["TUNEGATE_PORT"]["value"]),
        "Service targetPort": container_port(container, service_port["targetPort"]),
    }
    assert set(ports.values()) == {serve_port}, ports


def test_deploy_probes_and_healthcheck_call_the_app_health_routes(docker, container, app_paths):
    assert {LIVE_PATH, READY_PATH} <= app_paths
    # Ready gates traffic (model loaded and warm); live and startup only ask whether the process answers.
    assert container["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert container["livenessProbe"]["httpGet"]["path"] == LIVE_PATH
    assert container["startupProbe"]["httpGet"]["path"] == LIVE_PATH
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container_port(container, container[probe]["httpGet"]["port"]) == container_port(container, "http")
    (healthcheck,) = docker["HEALTHCHECK"]
    command = exec_form(healthcheck.partition(" CMD ")[2])
    assert command[:2] == ["python", "-c"] and LIVE_PATH in command[2]
    compile(command[2], "HEALTHCHECK", "exec")  # slim has no curl: the probe is python, and it must parse


def test_deploy_commands_run_tunegate_serve(docker, container):
    (entrypoint,) = docker["ENTRYPOINT"]
    image_command = exec_form(entrypoint) + (exec_form(docker["CMD"][-1]) if "CMD" in docker else [])
    for command in (image_command, container["command"] + container.get("args", [])):
        assert command[0] == "tunegate"
        assert build_parser().parse_args(command[1:]).command == "serve"


def test_deploy_sets_only_serve_settings(docker_env, container_env):
    fields = {ENV_PREFIX + name.upper() for name in ServeSettings.model_fields}
    set_here = {name for name in (*docker_env, *container_env) if name.startswith(ENV_PREFIX)}
    assert set_here - fields - {API_KEYS_ENV} == set()


def test_deploy_settings_load_with_the_image_and_pod_variables(docker_env, container_env, monkeypatch):
    for name, value in {**docker_env, **{k: v["value"] for k, v in container_env.items() if "value" in v}}.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    settings = load_serve_settings(REPO / "params.yaml", {})
    assert settings.host == "0.0.0.0"  # reachable through the published port
    assert settings.model.startswith("/models/") and settings.log_dir.startswith("/var/lib/tunegate/")


def test_deploy_threads_match_the_cpu_request(container, container_env):
    """A container sees the node's cores: workers x threads must be the CPUs it is given, never more."""
    cpu = container["resources"]["requests"]["cpu"]
    cores = int(cpu[:-1]) / 1000 if str(cpu).endswith("m") else float(cpu)
    threads = int(container_env["TUNEGATE_WORKERS"]["value"]) * int(container_env["TUNEGATE_THREADS"]["value"])
    assert threads == cores
    assert container["resources"]["limits"]["cpu"] == cpu and "memory" in container["resources"]["requests"]


def test_deploy_runs_as_a_non_root_user(docker, manifests, container):
    user = docker["USER"][-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()  # numeric: runAsNonRoot can check it without /etc/passwd
    pod = manifests["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and str(pod["runAsUser"]) == user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_deploy_mounts_the_model_read_only_and_the_log_writable(manifests, container, container_env, docker_env):
    volumes = {v["name"]: v for v in manifests["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    mounts = container["volumeMounts"]

    def mount_of(path: str) -> dict:
        return max((m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")),
                   key=lambda m: len(m["mountPath"]))

    model = mount_of(container_env["TUNEGATE_MODEL"]["value"])
    assert model["readOnly"] is True
    assert volumes[model["name"]]["persistentVolumeClaim"]["readOnly"] is True
    # With a read-only root, the prediction log and /tmp need volumes of their own.
    assert "emptyDir" in volumes[mount_of(container_env["TUNEGATE_LOG_DIR"]["value"])["name"]]
    assert "emptyDir" in volumes[mount_of("/tmp/x")["name"]]
    assert docker_env["TUNEGATE_MODEL"] == container_env["TUNEGATE_MODEL"]["value"]


def test_deploy_takes_api_keys_from_a_secret(container_env):
    source = container_env[API_KEYS_ENV]["valueFrom"]["secretKeyRef"]
    assert source["name"] and source["key"] and source.get("optional") is False  # no Secret: no unkeyed pod


def test_deploy_pods_get_no_service_link_variables(manifests):
    """A Service named `tunegate` would inject TUNEGATE_PORT=tcp://IP:PORT, which the service reads as its port."""
    assert manifests["Deployment"]["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_deploy_service_and_autoscaler_target_the_deployment(manifests):
    deployment = manifests["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert manifests["Service"]["spec"]["selector"].items() <= labels.items()
    hpa = manifests["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == \
        (deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_deploy_kustomization_applies_every_manifest():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_dockerfile_installs_the_serving_set_only(docker):
    assert docker["FROM"] == ["python:3.11-slim"]
    runs = " && ".join(docker["RUN"])
    # the serving lock, hash-checked, and the package without its (the whole pipeline's) dependencies
    assert "pip install --require-hashes --no-deps -r /tmp/src/requirements/lock/serve.txt" in runs
    assert "pip install --no-deps /tmp/src" in runs
    copies = [shlex.split(c) for c in docker["COPY"]]
    assert ["requirements/lock/serve.txt", "/tmp/src/requirements/lock/serve.txt"] in copies
    assert any(c[0] == "params.yaml" for c in copies)  # the serve defaults


def test_dockerignore_keeps_environments_models_and_history_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "artifacts", ".dvc/cache", ".git", ".tunegate"} <= ignored

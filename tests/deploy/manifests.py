"""Renders the kustomize trees under deploy/k8s and gives the tests typed views of them."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = ("base", "overlays/dev", "overlays/prod")
OVERLAYS = ("overlays/dev", "overlays/prod")

Manifest = dict[str, Any]

# name -> (gRPC port, metrics port, public gRPC service)
SERVICES: dict[str, tuple[int, int, str]] = {
    "auth": (50051, 9101, "conclave.auth.v1.AuthService"),
    "keys": (50052, 9102, "conclave.keys.v1.KeyService"),
    "messaging": (50053, 9103, "conclave.messaging.v1.MessagingService"),
    "media": (50054, 9104, "conclave.media.v1.MediaService"),
    "retention": (50055, 9105, "conclave.retention.v1.RetentionService"),
}
AUTOSCALED = ("messaging", "media")


def tool(name: str) -> str:
    """Path of a command-line tool: the project venv's copy first, then PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (run `make venv`)")
    return found


@functools.cache
def rendered_text(target: str) -> str:
    """``kubectl kustomize deploy/k8s/<target>`` output (cached per test session)."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize {target} failed:\n{result.stderr}")
    return result.stdout


@functools.cache
def _rendered(target: str) -> tuple[Manifest, ...]:
    docs = [doc for doc in yaml.safe_load_all(rendered_text(target)) if doc]
    assert all(isinstance(doc, dict) for doc in docs)
    return tuple(docs)


def render(target: str) -> list[Manifest]:
    """The objects of one kustomize target, in output order."""
    return list(_rendered(target))


def of_kind(objs: list[Manifest], kind: str) -> list[Manifest]:
    """Objects of one kind."""
    return [obj for obj in objs if obj["kind"] == kind]


def named(objs: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of ``kind`` called ``name`` (assertion error if absent)."""
    found = [obj for obj in of_kind(objs, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    """The pod template spec of a Deployment or StatefulSet."""
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def workloads(objs: list[Manifest]) -> list[Manifest]:
    """Deployments and StatefulSets."""
    return [obj for obj in objs if obj["kind"] in ("Deployment", "StatefulSet")]


def containers(objs: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """Every (workload, container) pair, init containers included."""
    for workload in workloads(objs):
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, container


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels + matchExpressions) selects labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def config_value(objs: list[Manifest], configmap_prefix: str, key: str) -> str:
    """A key of the (hash-suffixed) ConfigMap whose name starts with ``configmap_prefix-``."""
    for cm in of_kind(objs, "ConfigMap"):
        name: str = cm["metadata"]["name"]
        if name == configmap_prefix or name.rsplit("-", 1)[0] == configmap_prefix:
            data: dict[str, str] = cm.get("data", {})
            if key in data:
                return data[key]
    raise AssertionError(f"no ConfigMap {configmap_prefix}* with key {key}")

"""Policy checks over the rendered manifests: what every pod, service and overlay must do."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    AUTOSCALED,
    K8S,
    OVERLAYS,
    ROOT,
    SERVICES,
    TARGETS,
    Manifest,
    config_value,
    containers,
    labels_match,
    named,
    of_kind,
    pod_spec,
    render,
    workloads,
)

# Settings the services read (docs/operations.md) plus the signing-key files auth and keys
# will read; anything else in a Deployment's env is a typo.
PLANNED_ENV = {
    "CONCLAVE_TOKEN_SIGNING_KEY_FILE",
    "CONCLAVE_TOKEN_SIGNING_KEY_ID",
    "CONCLAVE_KEYS_TREE_SIGNING_KEY_FILE",
}


def _documented_env() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    names = set(re.findall(r"`(CONCLAVE_[A-Z_]+)`", text))
    for pattern in re.findall(r"`CONCLAVE_<SERVICE>_([A-Z_]+)`", text):
        names |= {f"CONCLAVE_{svc.upper()}_{pattern}" for svc in SERVICES}
    return names


def _service_deployments(objs: list[Manifest]) -> list[Manifest]:
    return [named(objs, "Deployment", f"conclave-{svc}") for svc in SERVICES]


def _pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_locked_down(target: str) -> None:
    """Restricted pod security: non-root, read-only root fs, no privilege escalation, drop ALL."""
    for workload, container in containers(render(target)):
        where = f"{workload['metadata']['name']}/{container['name']}"
        ctx: dict[str, Any] = container.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True, where
        assert ctx.get("readOnlyRootFilesystem") is True, where
        assert ctx.get("allowPrivilegeEscalation") is False, where
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
        assert "add" not in ctx.get("capabilities", {}), where
        assert ctx.get("privileged") in (None, False), where


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_locked_down(target: str) -> None:
    """Pods: seccomp RuntimeDefault, non-root uid, no API token, no host namespaces or paths."""
    for workload in workloads(render(target)):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        ctx = spec["securityContext"]
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        assert ctx["runAsNonRoot"] is True, name
        assert ctx["runAsUser"] > 10000, name
        assert spec["automountServiceAccountToken"] is False, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), name
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], name


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_probes_and_resources(target: str) -> None:
    """Readiness and liveness probes, CPU and memory requests and limits everywhere."""
    for workload, container in containers(render(target)):
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert "readinessProbe" in container, where
        assert "livenessProbe" in container, where
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where} {kind}"


@pytest.mark.parametrize("target", TARGETS)
def test_services_use_native_grpc_probes_on_their_port(target: str) -> None:
    """Startup, readiness and liveness probes are grpc.health.v1 checks on the gRPC port."""
    for deployment in _service_deployments(render(target)):
        (container,) = pod_spec(deployment)["containers"]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, probe
        startup = container["startupProbe"]
        # The service may wait CONCLAVE_STARTUP_TIMEOUT_SECONDS for Postgres and NATS.
        assert startup["periodSeconds"] * startup["failureThreshold"] > 60


@pytest.mark.parametrize("target", TARGETS)
def test_termination_grace_covers_the_drain(target: str) -> None:
    """SIGKILL never cuts the drain: grace > preStop sleep + CONCLAVE_SHUTDOWN_GRACE_SECONDS."""
    objs = render(target)
    drain = float(config_value(objs, "conclave-common", "CONCLAVE_SHUTDOWN_GRACE_SECONDS"))
    for deployment in _service_deployments(objs):
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert spec["terminationGracePeriodSeconds"] > pre_stop + drain + 5


@pytest.mark.parametrize("target", TARGETS)
def test_services_run_their_own_entrypoint_with_known_settings(target: str) -> None:
    """Each Deployment runs conclave-<name> from the one image, with only known settings."""
    objs = render(target)
    known = _documented_env() | PLANNED_ENV
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in of_kind(objs, "ConfigMap")}
    images = set()
    for svc, (grpc_port, metrics_port, _) in SERVICES.items():
        (container,) = pod_spec(named(objs, "Deployment", f"conclave-{svc}"))["containers"]
        images.add(container["image"])
        assert container["command"] == [f"conclave-{svc}"]
        env = {item["name"] for item in container.get("env", [])}
        settings: dict[str, str] = {}
        for source in container["envFrom"]:
            settings.update(configmaps[source["configMapRef"]["name"]])
        assert (env | set(settings)) <= known, (env | set(settings)) - known
        assert settings[f"CONCLAVE_{svc.upper()}_GRPC_PORT"] == str(grpc_port)
        assert settings[f"CONCLAVE_{svc.upper()}_METRICS_PORT"] == str(metrics_port)
        assert settings["CONCLAVE_GRPC_HOST"] == "0.0.0.0"
        assert settings["CONCLAVE_METRICS_HOST"] == "0.0.0.0"
        assert {"CONCLAVE_DATABASE_URL", "CONCLAVE_TOKEN_VERIFY_KEYS"} <= env
    assert len(images) == 1


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_referenced_never_defined(target: str) -> None:
    """No Secret object is rendered; the database URL comes from the CNPG app secret."""
    objs = render(target)
    assert of_kind(objs, "Secret") == []
    for deployment in _service_deployments(objs):
        (container,) = pod_spec(deployment)["containers"]
        env = {item["name"]: item for item in container["env"]}
        assert "value" not in env["CONCLAVE_DATABASE_URL"]
        ref = env["CONCLAVE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        cluster = named(objs, "Cluster", "conclave-pg")["metadata"]["name"]
        assert ref == {"name": f"{cluster}-app", "key": "uri"}


def _referenced_secrets(objs: list[Manifest]) -> set[tuple[str, str]]:
    refs: set[tuple[str, str]] = set()
    for workload in workloads(objs):
        spec = pod_spec(workload)
        for container in spec["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                for entry in volume["secret"]["items"]:
                    refs.add((volume["secret"]["secretName"], entry["key"]))
    for gateway in of_kind(objs, "Gateway"):
        for listener in gateway["spec"]["listeners"]:
            for cert in listener.get("tls", {}).get("certificateRefs", []):
                refs.add((cert["name"], "tls.crt"))
    return refs


def test_every_referenced_secret_is_documented() -> None:
    """docs/deploy.md names every Secret and key the manifests expect to exist."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    refs = _referenced_secrets(render("overlays/prod"))
    assert len(refs) >= 6
    for name, key in sorted(refs):
        assert f"`{name}`" in docs, name
        assert f"`{key}`" in docs, f"{name}/{key}"


def test_no_secret_with_data_in_the_repository() -> None:
    """No YAML under deploy/ defines a Secret (values come from the cluster, never git)."""
    for path in sorted((ROOT / "deploy").rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                pytest.fail(f"{path.relative_to(ROOT)} defines Secret {doc['metadata']['name']}")
    private_key = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
    for path in sorted((ROOT / "deploy").rglob("*")):
        if path.is_file():
            assert not private_key.search(path.read_text(errors="ignore")), path


def _services_selecting(objs: list[Manifest], labels: dict[str, str]) -> list[Manifest]:
    return [
        svc
        for svc in of_kind(objs, "Service")
        if svc["spec"].get("selector")
        and all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_every_metrics_port_is_scraped(target: str) -> None:
    """Each container port named "metrics" is a ServiceMonitor or PodMonitor endpoint."""
    objs = render(target)
    for workload, container in containers(objs):
        if not any(p["name"] == "metrics" for p in container.get("ports", [])):
            continue
        labels = _pod_labels(workload)
        scraped = False
        for service in _services_selecting(objs, labels):
            ports = {p["name"] for p in service["spec"]["ports"]}
            for monitor in of_kind(objs, "ServiceMonitor"):
                selected = labels_match(monitor["spec"]["selector"], service["metadata"]["labels"])
                endpoints = {e["port"] for e in monitor["spec"]["endpoints"]}
                scraped |= selected and "metrics" in ports & endpoints
        assert scraped, workload["metadata"]["name"]
    pods = [m["spec"]["selector"]["matchLabels"] for m in of_kind(objs, "PodMonitor")]
    assert pods == [{"cnpg.io/cluster": "conclave-pg"}]


@pytest.mark.parametrize("target", TARGETS)
def test_each_service_scraped_once(target: str) -> None:
    """The headless Services carry no metrics port, so no pod is scraped twice."""
    objs = render(target)
    for svc in SERVICES:
        headless = named(objs, "Service", f"conclave-{svc}-headless")
        assert headless["spec"]["clusterIP"] == "None"
        assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]


def _policies_for(objs: list[Manifest], labels: dict[str, str]) -> list[Manifest]:
    return [
        policy
        for policy in of_kind(objs, "NetworkPolicy")
        if labels_match(policy["spec"]["podSelector"], labels)
    ]


def _ingress_ports(policies: list[Manifest]) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                for peer in rule.get("from", []):
                    found.append((port["port"], peer))
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_default_deny_then_allow(target: str) -> None:
    """Default deny, DNS for all, and each service reachable on gRPC and metrics only."""
    objs = render(target)
    deny = named(objs, "NetworkPolicy", "default-deny-all")["spec"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    dns = named(objs, "NetworkPolicy", "allow-dns")["spec"]
    assert dns["podSelector"] == {}
    assert {p["port"] for rule in dns["egress"] for p in rule["ports"]} == {53}
    for svc, (grpc_port, metrics_port, _) in SERVICES.items():
        labels = _pod_labels(named(objs, "Deployment", f"conclave-{svc}"))
        policies = _policies_for(objs, labels)
        ingress = _ingress_ports(policies)
        assert {port for port, _ in ingress} == {grpc_port, metrics_port}, svc
        gateway_peers = [peer for port, peer in ingress if port == grpc_port]
        assert any("conclave.io/gateway" in str(peer) for peer in gateway_peers), svc
        prometheus = [peer for port, peer in ingress if port == metrics_port]
        assert prometheus
        assert all("prometheus" in str(peer) for peer in prometheus), svc
        egress_ports = {
            port["port"]
            for policy in policies
            for rule in policy["spec"].get("egress", [])
            for port in rule.get("ports", [])
        }
        assert {4222, 5432, 53} <= egress_ports, svc
    for name, selector in (
        ("nats", {"app.kubernetes.io/name": "nats"}),
        ("conclave-pg", {"cnpg.io/cluster": "conclave-pg"}),
    ):
        policy = named(objs, "NetworkPolicy", name)
        assert policy["spec"]["podSelector"]["matchLabels"] == selector


@pytest.mark.parametrize("target", TARGETS)
def test_one_external_address_routes_each_service(target: str) -> None:
    """One Gateway; one GRPCRoute per service matching its public gRPC service only."""
    objs = render(target)
    (gateway,) = of_kind(objs, "Gateway")
    listeners = {listener["name"] for listener in gateway["spec"]["listeners"]}
    routes = of_kind(objs, "GRPCRoute")
    assert len(routes) == len(SERVICES)
    for svc, (grpc_port, _, proto_service) in SERVICES.items():
        route = named(objs, "GRPCRoute", f"conclave-{svc}")
        (parent,) = route["spec"]["parentRefs"]
        assert parent["name"] == gateway["metadata"]["name"]
        assert parent["sectionName"] in listeners
        (rule,) = route["spec"]["rules"]
        assert [m["method"] for m in rule["matches"]] == [
            {"type": "Exact", "service": proto_service}
        ]
        (backend,) = rule["backendRefs"]
        service = named(objs, "Service", backend["name"])
        assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}
        assert backend["port"] == grpc_port


@pytest.mark.parametrize("target", TARGETS)
def test_disruption_budgets_and_autoscalers(target: str) -> None:
    """A PDB per service and for NATS; autoscaling/v2 HPAs for messaging and media only."""
    objs = render(target)
    for workload in workloads(objs):
        labels = _pod_labels(workload)
        budgets = [
            pdb
            for pdb in of_kind(objs, "PodDisruptionBudget")
            if labels_match(pdb["spec"]["selector"], labels)
        ]
        assert len(budgets) == 1, workload["metadata"]["name"]
    hpas = of_kind(objs, "HorizontalPodAutoscaler")
    assert sorted(h["spec"]["scaleTargetRef"]["name"] for h in hpas) == sorted(
        f"conclave-{svc}" for svc in AUTOSCALED
    )
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        deployment = named(objs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        # The HPA owns the replica count; a replicas field would be reset on every apply.
        assert "replicas" not in deployment["spec"]


def _nats_conf(objs: list[Manifest]) -> str:
    return config_value(objs, "nats-config", "nats.conf")


@pytest.mark.parametrize("target", TARGETS)
def test_nats_fsyncs_every_write(target: str) -> None:
    """JetStream fsyncs before acknowledging (sync_interval: always) in every overlay."""
    conf = _nats_conf(render(target))
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.MULTILINE)


def test_prod_is_highly_available() -> None:
    """Prod: >= 2 replicas per service, spread over nodes and zones, NATS R3, PG 3 sync."""
    objs = render("overlays/prod")
    for svc in SERVICES:
        deployment = named(objs, "Deployment", f"conclave-{svc}")
        if svc in AUTOSCALED:
            replicas = named(objs, "HorizontalPodAutoscaler", f"conclave-{svc}")["spec"][
                "minReplicas"
            ]
        else:
            replicas = deployment["spec"]["replicas"]
        assert replicas >= 2, svc
        spread = pod_spec(deployment)["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in spread}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        for constraint in spread:
            assert labels_match(constraint["labelSelector"], _pod_labels(deployment))
            if constraint["whenUnsatisfiable"] == "DoNotSchedule":
                # Otherwise tainted nodes count as empty domains and block scheduling.
                assert constraint["nodeTaintsPolicy"] == "Honor"
    assert config_value(objs, "conclave-common", "CONCLAVE_NATS_STREAM_REPLICAS") == "3"
    nats = named(objs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    anti = pod_spec(nats)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf = _nats_conf(objs)
    assert len(re.findall(r"nats://nats-\d\.nats-headless:6222", conf)) == 3
    cluster = named(objs, "Cluster", "conclave-pg")["spec"]
    assert cluster["instances"] == 3
    assert cluster["postgresql"]["synchronous"]["number"] >= 1
    assert cluster["postgresql"]["synchronous"]["dataDurability"] == "required"
    assert cluster["affinity"]["podAntiAffinityType"] == "required"
    (namespace,) = of_kind(objs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_dev_is_small() -> None:
    """Dev: one replica of everything, NATS R1 without a cluster block, PG one instance."""
    objs = render("overlays/dev")
    for svc in SERVICES:
        if svc not in AUTOSCALED:
            assert named(objs, "Deployment", f"conclave-{svc}")["spec"]["replicas"] == 1
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] == 1
    assert config_value(objs, "conclave-common", "CONCLAVE_NATS_STREAM_REPLICAS") == "1"
    assert named(objs, "StatefulSet", "nats")["spec"]["replicas"] == 1
    assert "cluster {" not in _nats_conf(objs)
    cluster = named(objs, "Cluster", "conclave-pg")["spec"]
    assert cluster["instances"] == 1
    assert "synchronous" not in cluster["postgresql"]


@pytest.mark.parametrize("target", OVERLAYS)
def test_overlays_set_namespace_and_image(target: str) -> None:
    """Every namespaced object lands in the overlay's namespace; the image is set."""
    objs = render(target)
    (namespace,) = of_kind(objs, "Namespace")
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], obj["kind"]
    for deployment in _service_deployments(objs):
        assert pod_spec(deployment)["containers"][0]["image"] != "conclave"


def test_stream_replicas_match_nats_size() -> None:
    """Streams never ask for more replicas than there are NATS servers."""
    for target in TARGETS:
        objs = render(target)
        replicas = int(config_value(objs, "conclave-common", "CONCLAVE_NATS_STREAM_REPLICAS"))
        assert replicas <= named(objs, "StatefulSet", "nats")["spec"]["replicas"], target


def test_kustomize_trees_list_every_file() -> None:
    """No manifest under deploy/k8s is orphaned (left out of every kustomization)."""
    referenced: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        for entry in data.get("resources", []):
            referenced.add((kustomization.parent / entry).resolve())
        for generator in data.get("configMapGenerator", []):
            for entry in generator.get("files", []):
                referenced.add((kustomization.parent / entry).resolve())
    for path in K8S.rglob("*"):
        if path.is_file() and path.name not in ("kustomization.yaml", "README.md"):
            assert path.resolve() in referenced, path.relative_to(ROOT)


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity (``500m``, ``1``, ``512Mi``, ``2Gi``) as a plain number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "MiB": 2**20}
    text = str(value)
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * units[suffix]
    return float(text)


@pytest.mark.parametrize("target", TARGETS)
def test_requests_fit_within_limits(target: str) -> None:
    """Requests never exceed limits, and the Go runtime's GOMEMLIMIT sits below NATS' limit."""
    for workload, container in containers(render(target)):
        where = f"{workload['metadata']['name']}/{container['name']}"
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind])
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        if "GOMEMLIMIT" in env:
            limit = _quantity(resources["limits"]["memory"])
            assert 0.8 * limit <= _quantity(env["GOMEMLIMIT"]) < limit, where

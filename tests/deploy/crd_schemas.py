"""Offline schemas for the custom resources in deploy/k8s.

kubernetes-validate ships schemas for built-in kinds only, and no CRD schema can be fetched
here, so these are hand-written subsets of the upstream CRDs (Gateway API v1.3,
prometheus-operator v0.8x, CloudNativePG 1.27): the required fields, the enums, and
``additionalProperties: false`` wherever we write the object, so a typo in a field name
fails here instead of being silently pruned by the API server.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_STR: Schema = {"type": "string", "minLength": 1}
_INT: Schema = {"type": "integer", "minimum": 0}
_PORT: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
_DURATION: Schema = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STR_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA: Schema = {
    "type": "object",
    "properties": {"name": _STR, "namespace": _STR, "labels": _STR_MAP, "annotations": _STR_MAP},
    "required": ["name"],
}
_LABEL_SELECTOR: Schema = _obj(
    {
        "matchLabels": _STR_MAP,
        "matchExpressions": {
            "type": "array",
            "items": _obj(
                {
                    "key": _STR,
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                ("key", "operator"),
            ),
        },
    }
)
_RESOURCES: Schema = _obj(
    {
        "requests": _STR_MAP,
        "limits": _STR_MAP,
    }
)


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return _obj(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


_PARENT_REF = _obj(
    {
        "group": {"type": "string"},
        "kind": _STR,
        "namespace": _STR,
        "name": _STR,
        "sectionName": _STR,
        "port": _PORT,
    },
    ("name",),
)
_BACKEND_REF = _obj(
    {
        "group": {"type": "string"},
        "kind": _STR,
        "name": _STR,
        "namespace": _STR,
        "port": _PORT,
        "weight": _INT,
    },
    ("name", "port"),
)

GRPC_ROUTE = _resource(
    "gateway.networking.k8s.io/v1",
    "GRPCRoute",
    _obj(
        {
            "parentRefs": {"type": "array", "minItems": 1, "items": _PARENT_REF},
            "hostnames": {"type": "array", "items": _STR},
            "rules": {
                "type": "array",
                "minItems": 1,
                "maxItems": 16,
                "items": _obj(
                    {
                        "name": _STR,
                        "matches": {
                            "type": "array",
                            "maxItems": 64,
                            "items": _obj(
                                {
                                    "method": _obj(
                                        {
                                            "type": {"enum": ["Exact", "RegularExpression"]},
                                            "service": _STR,
                                            "method": _STR,
                                        }
                                    ),
                                    "headers": {"type": "array"},
                                }
                            ),
                        },
                        "filters": {"type": "array"},
                        "backendRefs": {"type": "array", "minItems": 1, "items": _BACKEND_REF},
                    }
                ),
            },
        },
        ("parentRefs", "rules"),
    ),
)

GATEWAY = _resource(
    "gateway.networking.k8s.io/v1",
    "Gateway",
    _obj(
        {
            "gatewayClassName": _STR,
            "addresses": {"type": "array"},
            "infrastructure": {"type": "object"},
            "listeners": {
                "type": "array",
                "minItems": 1,
                "maxItems": 64,
                "items": _obj(
                    {
                        "name": _STR,
                        "hostname": _STR,
                        "port": _PORT,
                        "protocol": {"enum": ["HTTP", "HTTPS", "TLS", "TCP", "UDP"]},
                        "tls": _obj(
                            {
                                "mode": {"enum": ["Terminate", "Passthrough"]},
                                "certificateRefs": {
                                    "type": "array",
                                    "items": _obj(
                                        {
                                            "group": {"type": "string"},
                                            "kind": _STR,
                                            "name": _STR,
                                            "namespace": _STR,
                                        },
                                        ("name",),
                                    ),
                                },
                                "options": _STR_MAP,
                            }
                        ),
                        "allowedRoutes": _obj(
                            {
                                "namespaces": _obj(
                                    {
                                        "from": {"enum": ["All", "Same", "Selector"]},
                                        "selector": _LABEL_SELECTOR,
                                    }
                                ),
                                "kinds": {
                                    "type": "array",
                                    "items": _obj(
                                        {"group": {"type": "string"}, "kind": _STR}, ("kind",)
                                    ),
                                },
                            }
                        ),
                    },
                    ("name", "port", "protocol"),
                ),
            },
        },
        ("gatewayClassName", "listeners"),
    ),
)

_ENDPOINT_COMMON: dict[str, Schema] = {
    "port": _STR,
    "path": _STR,
    "scheme": {"enum": ["http", "https"]},
    "interval": _DURATION,
    "scrapeTimeout": _DURATION,
    "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array"},
    "metricRelabelings": {"type": "array"},
}

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _obj(
        {
            "jobLabel": _STR,
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {"type": "object"},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _obj(_ENDPOINT_COMMON, ("port",)),
            },
        },
        ("selector", "endpoints"),
    ),
)

POD_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    _obj(
        {
            "jobLabel": _STR,
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {"type": "object"},
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": _obj(_ENDPOINT_COMMON, ("port",)),
            },
        },
        ("selector", "podMetricsEndpoints"),
    ),
)

_RULE: Schema = {
    "type": "object",
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": _STR,
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    "required": ["expr"],
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _obj(
        {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "name": _STR,
                        "interval": _DURATION,
                        "rules": {"type": "array", "minItems": 1, "items": _RULE},
                    },
                    ("name", "rules"),
                ),
            }
        },
        ("groups",),
    ),
)

CNPG_CLUSTER = _resource(
    "postgresql.cnpg.io/v1",
    "Cluster",
    _obj(
        {
            "description": _STR,
            "instances": {"type": "integer", "minimum": 1},
            "imageName": _STR,
            "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
            "primaryUpdateMethod": {"enum": ["switchover", "restart"]},
            "postgresql": _obj(
                {
                    "parameters": _STR_MAP,
                    "synchronous": _obj(
                        {
                            "method": {"enum": ["any", "first"]},
                            "number": {"type": "integer", "minimum": 1},
                            "dataDurability": {"enum": ["required", "preferred"]},
                            "maxStandbyNamesFromCluster": _INT,
                            "standbyNamesPre": {"type": "array"},
                            "standbyNamesPost": {"type": "array"},
                        },
                        ("method", "number"),
                    ),
                    "pg_hba": {"type": "array"},
                }
            ),
            "bootstrap": _obj(
                {
                    "initdb": _obj(
                        {"database": _STR, "owner": _STR, "secret": _obj({"name": _STR})}
                    ),
                    "recovery": {"type": "object"},
                    "pg_basebackup": {"type": "object"},
                }
            ),
            "storage": _obj({"size": _STR, "storageClass": _STR}, ("size",)),
            "walStorage": _obj({"size": _STR, "storageClass": _STR}, ("size",)),
            "affinity": _obj(
                {
                    "enablePodAntiAffinity": {"type": "boolean"},
                    "podAntiAffinityType": {"enum": ["preferred", "required"]},
                    "topologyKey": _STR,
                    "nodeSelector": _STR_MAP,
                    "tolerations": {"type": "array"},
                }
            ),
            "resources": _RESOURCES,
            "monitoring": {"type": "object"},
            "backup": {"type": "object"},
            "plugins": {"type": "array"},
        },
        ("instances", "storage"),
    ),
)

CRD_SCHEMAS: dict[tuple[str, str], Schema] = {
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): GRPC_ROUTE,
    ("gateway.networking.k8s.io/v1", "Gateway"): GATEWAY,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("postgresql.cnpg.io/v1", "Cluster"): CNPG_CLUSTER,
}

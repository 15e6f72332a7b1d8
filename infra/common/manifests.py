"""The Kubernetes objects of the runner platform, as plain manifests from small pure functions.

Each function returns the dict one would write in YAML (camelCase keys), so tests validate them
against the official schemas and compare them with golden files without running Pulumi;
`platform.apply_manifest` turns one into a typed `pulumi_kubernetes` resource. Values may be
`pulumi.Input`s where noted (the queue password); everything else is plain data.

The pinned versions (the Redis image, the KEDA chart, the NVIDIA device plugin) are in `versions`.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi

from .versions import (
    DEVICE_PLUGIN_IMAGE,
    HTTP_ADDON_CHART,
    HTTP_ADDON_CHART_VERSION,
    KEDA_CHART,
    KEDA_CHART_VERSION,
    KEDA_REPO,
    REDIS_IMAGE,
)

__all__ = [
    "DEVICE_PLUGIN_IMAGE",
    "GPU_NODE_LABEL_KEYS",
    "KEDA_CHART",
    "KEDA_CHART_VERSION",
    "KEDA_REPO",
    "QUEUE_NAME",
    "QUEUE_PORT",
    "REDIS_IMAGE",
    "RUNNER_RULES",
    "device_plugin_daemonset",
    "http_addon_release_args",
    "keda_release_args",
    "namespace",
    "queue_endpoint",
    "queue_network_policy",
    "queue_secret",
    "queue_service",
    "queue_statefulset",
    "role",
    "role_binding",
    "service_account",
    "web_address",
    "web_domain",
    "web_service",
]

QUEUE_NAME = "runner-queue"
QUEUE_PORT = 6379
# uid and gid of the `redis` user in the official alpine images.
_REDIS_UID, _REDIS_GID = 999, 1000

# Node labels that mark a GPU node on some cluster: NVIDIA GPU feature discovery, GKE, EKS, AKS,
# node feature discovery (PCI vendor 10de is NVIDIA). The device plugin runs on nodes with any.
GPU_NODE_LABEL_KEYS = (
    "nvidia.com/gpu.present",
    "cloud.google.com/gke-accelerator",
    "k8s.amazonaws.com/accelerator",
    "kubernetes.azure.com/accelerator",
    "feature.node.kubernetes.io/pci-10de.present",
)

_CRUD = ["get", "list", "watch", "create", "update", "patch", "delete"]
# What the runner does in its namespace, and nothing more: run function containers as pods,
# deployments, jobs and cronjobs; expose web functions as services; keep named secrets, config
# maps and volumes (PVCs); isolate sandboxes with network policies; scale through KEDA (a
# ScaledObject reads the queue with a TriggerAuthentication for its password; an HTTPScaledObject
# routes a deployed web function's host through the HTTP add-on). Port-forwards carry the client
# to the queue and to a run's web pods. Secrets are applied (created or patched) and listed by
# label to remove an app's old ones, never watched. Events are read only, to say why a pod is pending.
RUNNER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods", "services", "configmaps", "persistentvolumeclaims"], "verbs": _CRUD},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods/exec", "pods/attach", "pods/portforward"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": _CRUD},
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": _CRUD},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": _CRUD},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects", "triggerauthentications"], "verbs": _CRUD},
    {"apiGroups": ["http.keda.sh"], "resources": ["httpscaledobjects"], "verbs": _CRUD},
]


def _labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "runner",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def _meta(name: str, ns: str | None, component: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels(name, component)}
    if ns is not None:
        meta["namespace"] = ns
    meta.update({k: v for k, v in extra.items() if v})
    return meta


def namespace(name: str) -> dict[str, Any]:
    """The runner's namespace; Pod Security `baseline` is enforced (no privileged or host pods)."""
    meta = _meta(name, None, "namespace")
    meta["labels"]["pod-security.kubernetes.io/enforce"] = "baseline"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def service_account(name: str, ns: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The ServiceAccount runner pods use; `annotations` bind it to a cloud identity."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(name, ns, "identity", annotations=dict(annotations or {}))}


def role(name: str, ns: str) -> dict[str, Any]:
    """The namespaced Role holding `RUNNER_RULES`."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(name, ns, "rbac"), "rules": [dict(r) for r in RUNNER_RULES]}


def role_binding(name: str, ns: str, service_account_name: str) -> dict[str, Any]:
    """Binds `role(name, ns)` to the service account, in the namespace only."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": _meta(name, ns, "rbac"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account_name, "namespace": ns}]}


def queue_secret(name: str, ns: str, password: pulumi.Input[str]) -> dict[str, Any]:
    """The Secret with key `password` for the queue; `password` should be a Pulumi secret."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, ns, "queue"), "type": "Opaque",
            "stringData": {"password": pulumi.Output.secret(password)}}


def queue_service(ns: str) -> dict[str, Any]:
    """The queue's ClusterIP Service: reachable inside the cluster only."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(QUEUE_NAME, ns, "queue"),
            "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": QUEUE_NAME},
                     "ports": [{"name": "redis", "port": QUEUE_PORT, "targetPort": "redis", "protocol": "TCP"}]}}


def queue_endpoint(ns: str) -> str:
    """The URL runner pods reach the queue at (database 0)."""
    return f"redis://{QUEUE_NAME}.{ns}.svc.cluster.local:{QUEUE_PORT}/0"


_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")
_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _maxmemory(memory: str) -> int:
    """Redis' maxmemory: 80% of the container's memory, so Redis refuses writes before the OOM killer."""
    m = _QUANTITY.match(memory)
    if not m:
        raise ValueError(f"queue memory {memory!r} must be a binary quantity such as '512Mi' or '2Gi'")
    return int(m.group(1)) * _UNITS[m.group(2)] * 4 // 5


def queue_statefulset(ns: str, secret_name: str, memory: str, storage: str,
                      storage_class: str | None = None) -> dict[str, Any]:
    """One Redis with append-only persistence on a PVC, the password from `secret_name`."""
    labels = _labels(QUEUE_NAME, "queue")
    args = ["--requirepass", "$(REDIS_PASSWORD)", "--appendonly", "yes", "--dir", "/data",
            "--maxmemory", str(_maxmemory(memory)), "--maxmemory-policy", "noeviction"]
    container = {
        "name": "redis",
        "image": REDIS_IMAGE,
        "args": args,
        "env": [{"name": "REDIS_PASSWORD",
                 "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "password"}}}],
        "ports": [{"name": "redis", "containerPort": QUEUE_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": memory}, "limits": {"memory": memory}},
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "initialDelaySeconds": 15, "periodSeconds": 20},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}
    if storage_class:
        claim_spec["storageClassName"] = storage_class
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(QUEUE_NAME, ns, "queue"),
        "spec": {
            "serviceName": QUEUE_NAME,
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": QUEUE_NAME}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": _REDIS_UID, "runAsGroup": _REDIS_GID,
                                        "fsGroup": _REDIS_GID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                },
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim_spec}],
        },
    }


def queue_network_policy(ns: str, keda_namespace: str | None) -> dict[str, Any]:
    """Ingress to the queue only from pods of `ns` (and KEDA's operator, to read queue lengths)."""
    sources: list[dict[str, Any]] = [{"podSelector": {}}]
    if keda_namespace:
        sources.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": keda_namespace}},
                        "podSelector": {"matchLabels": {"app": "keda-operator"}}})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(QUEUE_NAME, ns, "queue"),
        "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": QUEUE_NAME}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"from": sources, "ports": [{"protocol": "TCP", "port": QUEUE_PORT}]}]},
    }


def device_plugin_daemonset(ns: str = "kube-system",
                            node_label_keys: tuple[str, ...] = GPU_NODE_LABEL_KEYS) -> dict[str, Any]:
    """NVIDIA's device plugin on GPU nodes only (nodes with any of `node_label_keys`).

    It tolerates every taint (`operator: Exists`, no key): which nodes it runs on is decided by the
    node affinity alone, and GPU nodes carry taints beyond `nvidia.com/gpu` (AKS puts
    `kubernetes.azure.com/scalesetpriority=spot:NoSchedule` on every Spot node, other clouds and
    operators add their own). A DaemonSet that does not start on a GPU node means no pod there
    ever gets a GPU.
    """
    name = "nvidia-device-plugin"
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(name, ns, "gpu"),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": _labels(name, "gpu")},
                "spec": {
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"operator": "Exists"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{"key": k, "operator": "Exists"}]}
                                              for k in node_label_keys]}}},
                    "containers": [{
                        "name": "nvidia-device-plugin-ctr",
                        "image": DEVICE_PLUGIN_IMAGE,
                        "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}],
                    }],
                    "volumes": [{"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}],
                },
            },
        },
    }


def keda_release_args(ns: str = "keda") -> dict[str, Any]:
    """Keyword arguments of the `pulumi_kubernetes.helm.v3.Release` that installs KEDA."""
    return {"name": "keda", "chart": KEDA_CHART, "version": KEDA_CHART_VERSION, "namespace": ns,
            "create_namespace": True, "repository_opts": {"repo": KEDA_REPO}}


# The KEDA HTTP add-on, the front door of deployed web endpoints. Its interceptor holds a request
# while the function's Deployment wakes from zero (waitTimeout; a new GPU node can take minutes,
# and stays under the 4 minute idle timeout of Azure's load balancer) and then waits up to
# responseHeaderTimeout for the function to answer: Modal's own limit for a web request, 150 s
# (the chart's default, 500 ms, would fail any handler slower than that).
HTTP_ADDON_RELEASE = "keda-add-ons-http"
WEB_SERVICE = "runner-web"
HTTP_ADDON_VALUES: dict[str, Any] = {
    "interceptor": {"replicas": {"min": 1, "max": 10, "waitTimeout": "180s"}, "responseHeaderTimeout": "150s"},
}


def http_addon_release_args(ns: str = "keda") -> dict[str, Any]:
    """Keyword arguments of the `pulumi_kubernetes.helm.v3.Release` that installs the HTTP add-on."""
    return {"name": HTTP_ADDON_RELEASE, "chart": HTTP_ADDON_CHART, "version": HTTP_ADDON_CHART_VERSION,
            "namespace": ns, "create_namespace": True, "repository_opts": {"repo": KEDA_REPO},
            "values": HTTP_ADDON_VALUES}


def web_service(ns: str, annotations: dict[str, str] | None = None,
                source_ranges: list[str] | None = None) -> dict[str, Any]:
    """The front door: a LoadBalancer Service in front of the HTTP add-on's interceptor pods (in
    the add-on's namespace `ns`), port 80 to their `proxy` port. `annotations` choose the cloud's
    kind of load balancer; `source_ranges` (CIDRs) limit who may connect, else anyone can."""
    meta = _meta(WEB_SERVICE, ns, "web")
    if annotations:
        meta["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "selector": {"app.kubernetes.io/component": "interceptor", "app.kubernetes.io/name": "http-add-on",
                     "app.kubernetes.io/instance": HTTP_ADDON_RELEASE},
        "ports": [{"name": "http", "port": 80, "targetPort": "proxy", "protocol": "TCP"}],
    }
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def web_address(status: Any) -> str:
    """The front door's address, `http://IP` or `http://HOST`, from its Service's status (a dict
    or the typed status); "" until the cloud has assigned one."""
    def field(obj: Any, *names: str) -> Any:
        for name in names:
            if obj is None:
                return None
            obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        return obj

    for ingress in field(status, "load_balancer", "ingress") or field(status, "loadBalancer", "ingress") or []:
        address = field(ingress, "ip") or field(ingress, "hostname")
        if address:
            return f"http://{address}"
    return ""


def web_domain(configured: str | None, address: str) -> str:
    """The domain deployed endpoints get hosts under: `configured` (a wildcard DNS name pointed at
    the front door) when set, else `IP.sslip.io` when the front door has an IP (a public DNS
    service answering every NAME.IP.sslip.io with IP, as Knative's default domain does), else ""
    (a load balancer known by host name only, as on AWS: set runner:webDomain)."""
    if configured:
        return configured.strip().rstrip(".").lower()
    host = address.removeprefix("http://")
    parts = host.split(".")
    if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts):
        return f"{host}.sslip.io"
    return ""

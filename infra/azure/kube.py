"""The Kubernetes side of the AKS program, as pure functions: the kubeconfig, the GPU placement
the contract exports, and the priority expander's ConfigMap (the one manifest AKS needs beyond
`RunnerPlatform`).

Kept free of Pulumi resources so tests check them directly, and so the cluster module only wires
them up.

Why a kubeconfig of our own: the cluster uses Microsoft Entra ID with Azure RBAC and no local
accounts, so AKS's "user" kubeconfig carries no key; by default its exec block runs `kubelogin`
with `--login devicecode`, which would stop `pulumi up` to wait for a browser. We keep the server
and CA from it and exec `kubelogin get-token --login azurecli`, which reuses the `az login`
session (a person's, or a service principal's in CI) without a prompt.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import yaml

__all__ = [
    "AKS_SERVER_ID",
    "GPU_LABEL",
    "GPU_TAINT",
    "SPOT_TAINT",
    "gpu_placement",
    "kubelogin_kubeconfig",
    "priority_expander",
]

# The Entra ID application of the AKS API server (the same for every AKS cluster); the token
# kubelogin fetches is for this audience.
AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
# Our own node label on every GPU pool (value: the Modal GPU name, lower case), so one selector
# matches a GPU type's spot pool and its on-demand fallback pool alike.
GPU_LABEL = "runner.dev/gpu"
# What we taint GPU pools with, so only pods that ask for a GPU land there.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
# What AKS itself puts on every node of a Spot pool (it cannot be turned off).
SPOT_TAINT = {"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"}


def taint_string(taint: dict[str, str]) -> str:
    """`key=value:Effect`, the form AKS takes in `nodeTaints`."""
    return f"{taint['key']}={taint['value']}:{taint['effect']}"


def _toleration(taint: dict[str, str]) -> dict[str, str]:
    return {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": taint["effect"]}


def gpu_label_value(gpu: str) -> str:
    """The `runner.dev/gpu` value of a Modal GPU name: "A100-80GB" -> "a100-80gb"."""
    return gpu.lower()


def gpu_placement(gpu: str, spot: bool) -> dict[str, Any]:
    """The contract's `gpu_types[gpu]`: the node selector of its pools and the tolerations of
    their taints (the spot one too when the pool is Spot; harmless on an on-demand fallback)."""
    tolerations = [_toleration(GPU_TAINT)] + ([_toleration(SPOT_TAINT)] if spot else [])
    return {"node_selector": {GPU_LABEL: gpu_label_value(gpu)}, "tolerations": tolerations}


def priority_expander(spot_pattern: str = ".*spot.*") -> dict[str, Any]:
    """The ConfigMap of the cluster autoscaler's `priority` expander: Spot pools first, everything
    else (the on-demand fallbacks) when a Spot pool cannot grow (no capacity, quota, evictions).

    The autoscaler matches these regexes against node group names, which on AKS are the scale
    sets `aks-<pool>-<n>-vmss`; Spot pools are named `<gpu>spot` and no other pool has "spot" in
    its name. A higher number wins.
    """
    priorities = f"10:\n  - .*\n50:\n  - {spot_pattern}\n"
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cluster-autoscaler-priority-expander", "namespace": "kube-system",
                         "labels": {"app.kubernetes.io/part-of": "runner", "app.kubernetes.io/managed-by": "pulumi"}},
            "data": {"priorities": priorities}}


def kubelogin_kubeconfig(encoded: str) -> str:
    """A kubeconfig (YAML) for the cluster from AKS's base64 user kubeconfig, authenticating with
    `kubelogin get-token --login azurecli` (see the module docstring).

    Raises ValueError when the decoded document has no cluster with a server.
    """
    try:
        raw = yaml.safe_load(base64.b64decode(encoded))
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"AKS returned a kubeconfig that is not base64 YAML: {e}") from None
    clusters = (raw or {}).get("clusters") or []
    if not clusters or not (clusters[0].get("cluster") or {}).get("server"):
        raise ValueError("AKS returned a kubeconfig without a cluster server")
    name = clusters[0]["name"]
    cluster = {k: v for k, v in clusters[0]["cluster"].items() if k in ("server", "certificate-authority-data")}
    user = f"clusterUser_{name}"
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
        "users": [{"name": user, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "kubelogin",
            "args": ["get-token", "--login", "azurecli", "--server-id", _server_id(raw)],
            "installHint": "install kubelogin (`az aks install-cli`) and run `az login`",
        }}}],
    }, sort_keys=False)


def _server_id(raw: dict[str, Any]) -> str:
    """The `--server-id` AKS put in its own exec block (sovereign clouds differ), else the public one."""
    for entry in raw.get("users") or []:
        args = (((entry or {}).get("user") or {}).get("exec") or {}).get("args") or []
        for i, arg in enumerate(args[:-1]):
            if arg == "--server-id" and re.fullmatch(r"[0-9a-fA-F-]{36}", str(args[i + 1])):
                return str(args[i + 1])
    return AKS_SERVER_ID

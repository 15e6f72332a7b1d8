"""The GCP program: stack config -> `GcpClusterArgs` -> `GcpCluster` -> the stack-outputs contract.

Config keys (README.md lists them with defaults): `gcp:project` (required), `runner:region` (else
`gcp:region`), `runner:zones`, `runner:name`, `runner:cpuMachineType`, `runner:cpuMinNodes`,
`runner:cpuMaxNodes`, `runner:gpuTypes`, `runner:gpuMaxNodes`, `runner:gpuZones`, `runner:spot`,
`runner:onDemandFallback`, `runner:gpuDriverVersion`, `runner:bucketName`, `runner:forceDestroy`,
and the secret `runner:queuePassword`, `runner:webDomain` and `runner:webAllowedCidrs` (read by
`infra.common.RunnerPlatform`).

A missing or bad value stops the program before anything is declared, with one line naming the
key and what to set (`pulumi.RunError`), instead of a provider error halfway through `pulumi up`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pulumi

from infra.common import export_cluster

from .cluster import GcpArgsError, GcpCluster, GcpClusterArgs

__all__ = ["CONFIG_KEYS", "GcpCluster", "GcpClusterArgs", "args_from_config", "program"]

# GcpClusterArgs field -> the stack config key that sets it.
CONFIG_KEYS = {
    "project": "gcp:project",
    "region": "runner:region",
    "zones": "runner:zones",
    "name": "runner:name",
    "cpu_machine_type": "runner:cpuMachineType",
    "cpu_min_nodes": "runner:cpuMinNodes",
    "cpu_max_nodes": "runner:cpuMaxNodes",
    "gpu_types": "runner:gpuTypes",
    "gpu_max_nodes": "runner:gpuMaxNodes",
    "gpu_zones": "runner:gpuZones",
    "spot": "runner:spot",
    "on_demand_fallback": "runner:onDemandFallback",
    "gpu_driver_version": "runner:gpuDriverVersion",
    "bucket_name": "runner:bucketName",
    "force_destroy": "runner:forceDestroy",
}


def _fail(key: str, message: str) -> pulumi.RunError:
    return pulumi.RunError(f"stack config {key} {message}")


def _raw(key: str) -> str | None:
    namespace, name = key.split(":", 1)
    return pulumi.Config(namespace).get(name)


def _int(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _fail(key, f"is {text!r}, not a whole number: `pulumi config set {key} 4`") from None


def _bool(key: str, text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise _fail(key, f"is {text!r}; set true or false: `pulumi config set {key} true`")


def _names(key: str, text: str) -> tuple[str, ...]:
    """A JSON list of strings (`--path` or `'["a","b"]'`), or a comma-separated string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, f"is {text!r}; give a list of names: `pulumi config set {key} a,b`")
    return tuple(value)


def _zone_map(key: str, text: str) -> dict[str, tuple[str, ...]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(z, str) for z in v) for v in value.values()):
        raise _fail(key, f"is {text!r}; give GPU type -> zones as JSON: "
                         f"`pulumi config set {key} '{{\"H100\": [\"us-central1-a\"]}}'`")
    return {k: tuple(v) for k, v in value.items()}


_PARSE: dict[str, Callable[[str, str], Any]] = {
    "zones": _names, "gpu_types": _names, "gpu_zones": _zone_map,
    "cpu_min_nodes": _int, "cpu_max_nodes": _int, "gpu_max_nodes": _int,
    "spot": _bool, "on_demand_fallback": _bool, "force_destroy": _bool,
}


def args_from_config() -> GcpClusterArgs:
    """The component's arguments from the stack config; pulumi.RunError naming the key when one is bad."""
    project = _raw("gcp:project")
    if not project:
        raise _fail("gcp:project", "is not set; set the Google Cloud project to deploy into: "
                                   "`pulumi config set gcp:project MY_PROJECT`")
    values: dict[str, Any] = {"project": project}
    region = _raw("runner:region") or _raw("gcp:region")
    if region:
        values["region"] = region
    for field, key in CONFIG_KEYS.items():
        if field in values:
            continue
        text = _raw(key)
        if text is None:
            continue
        parse = _PARSE.get(field)
        values[field] = parse(key, text) if parse else text
    try:
        return GcpClusterArgs(**values)
    except GcpArgsError as e:
        raise _fail(CONFIG_KEYS.get(e.field, e.field), e.message) from None


def program() -> None:
    """The whole GCP stack: `GcpCluster` named "runner", then the contract's exports."""
    args = args_from_config()
    cluster = GcpCluster("runner", args)
    export_cluster("gcp", cluster, cluster.platform)

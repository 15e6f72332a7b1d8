"""The Azure program: AKS with GPU pools from zero, ACR, a Blob container, workload identity.

`program()` reads the stack config (`runner:<camelCase of an AzureClusterArgs field>`, e.g.
`runner:gpuTypes`, `runner:spot`; the region from `runner:location`, else `azure-native:location`,
else eastus2), builds one `AzureCluster` and exports the contract of `runner._stack`. A bad value
stops the program with one line naming the key and what it must be. See infra/azure/README.md.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pulumi

from infra.common import export_cluster

from .cluster import GPU_VM_SIZES, ArgsError, AzureCluster, AzureClusterArgs

__all__ = ["GPU_VM_SIZES", "AzureCluster", "AzureClusterArgs", "args_from_config", "config_key", "program"]


def config_key(field: str) -> str:
    """The stack config key of an `AzureClusterArgs` field: gpu_max_nodes -> runner:gpuMaxNodes."""
    head, *rest = field.split("_")
    return "runner:" + head + "".join(part.capitalize() for part in rest)


def _read(config: pulumi.Config, field: dataclasses.Field, default: object) -> object:
    key = config_key(field.name).split(":", 1)[1]
    raw = config.get(key)
    if raw is None:
        return default
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false"):
            raise ArgsError(field.name, f"must be true or false, got {raw!r}")
        return raw.lower() == "true"
    if isinstance(default, int):
        if not re.fullmatch(r"-?\d+", raw.strip()):
            raise ArgsError(field.name, f"must be a whole number, got {raw!r}")
        return int(raw)
    if isinstance(default, (tuple, dict)):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = None
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ArgsError(field.name, f'must be a JSON list of names such as ["T4", "H100"], got {raw!r}')
            return tuple(value)
        if not isinstance(value, dict):
            raise ArgsError(field.name, f'must be a JSON object such as {{"H100": "Standard_ND96isr_H100_v5"}}, '
                                        f"got {raw!r}")
        return value
    return raw


def args_from_config() -> AzureClusterArgs:
    """`AzureClusterArgs` from the stack config; pulumi.RunError naming the key when a value is bad."""
    config = pulumi.Config("runner")
    defaults = AzureClusterArgs()
    values = {}
    try:
        for field in dataclasses.fields(AzureClusterArgs):
            values[field.name] = _read(config, field, getattr(defaults, field.name))
        if config.get("location") is None:
            values["location"] = pulumi.Config("azure-native").get("location") or defaults.location
        return AzureClusterArgs(**values)
    except ArgsError as e:
        key = config_key(e.field)
        if e.field == "location" and config.get("location") is None:
            key = "azure-native:location"
        raise pulumi.RunError(f"stack config {key} {e.reason}: fix it with `pulumi config set {key} ...` "
                              f"(see infra/azure/README.md)") from None


def program() -> None:
    """Declare the Azure environment and export the stack outputs the runner reads."""
    args = args_from_config()
    cluster = AzureCluster("runner", args)
    export_cluster("azure", cluster, cluster.platform)

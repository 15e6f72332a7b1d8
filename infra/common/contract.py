"""Export the stack outputs the runner reads, exactly as `runner._stack` defines them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from runner._stack import OUTPUT_KEYS, SECRET_KEYS

__all__ = ["export_cluster", "export_contract"]


def export_contract(outputs: Mapping[str, pulumi.Input]) -> None:
    """`pulumi.export` every key of `runner._stack.OUTPUT_KEYS`, the secret ones as Pulumi secrets.

    A missing or unknown key is a programming error in the cloud program: ValueError, naming them.
    """
    missing = [k for k in OUTPUT_KEYS if k not in outputs]
    extra = sorted(k for k in outputs if k not in OUTPUT_KEYS)
    if missing or extra:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(extra)}"] if extra else []
        raise ValueError(f"export_contract: {'; '.join(parts)} (the keys are runner._stack.OUTPUT_KEYS)")
    for key in OUTPUT_KEYS:
        value = outputs[key]
        pulumi.export(key, pulumi.Output.secret(value) if key in SECRET_KEYS else value)


def export_cluster(cloud: str, cluster: Any, platform: Any) -> None:
    """`export_contract` for a cloud cluster: what the cloud's component decides (its `kubeconfig`,
    `registry_url`, `bucket_url`, `gpu_types`) and what its `RunnerPlatform` decides."""
    export_contract({
        "cloud": cloud,
        "kubeconfig": cluster.kubeconfig,
        "registry_url": cluster.registry_url,
        "bucket_url": cluster.bucket_url,
        "gpu_types": cluster.gpu_types,
        **platform.contract_outputs(),
    })

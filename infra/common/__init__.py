"""What every cloud's program shares.

A cloud program builds its cluster, registry and bucket, makes a `pulumi_kubernetes.Provider` for
the cluster, puts `RunnerPlatform` on it (namespace, service account, RBAC, queue, KEDA, device
plugin), and ends with `export_cluster(cloud, cluster, platform)`, which exports exactly the keys
of `runner._stack.OUTPUT_KEYS` through `export_contract` (`RunnerPlatform.contract_outputs()`
gives the in-cluster ones).

`PlatformArgs`, `RunnerPlatform` and `apply_manifest` are imported on first use, so infra/local,
which has no cluster, uses `export_contract`, `queue_password` and the pinned versions without
`pulumi_kubernetes` installed.
"""

from __future__ import annotations

from typing import Any

from .contract import export_cluster, export_contract
from .password import queue_password
from .versions import DEVICE_PLUGIN_IMAGE, KEDA_CHART, KEDA_CHART_VERSION, KEDA_REPO, REDIS_IMAGE

__all__ = [
    "DEVICE_PLUGIN_IMAGE",
    "KEDA_CHART",
    "KEDA_CHART_VERSION",
    "KEDA_REPO",
    "REDIS_IMAGE",
    "PlatformArgs",
    "RunnerPlatform",
    "apply_manifest",
    "export_cluster",
    "export_contract",
    "queue_password",
]

_PLATFORM = ("PlatformArgs", "RunnerPlatform", "apply_manifest")


def __getattr__(name: str) -> Any:
    if name in _PLATFORM:
        from . import platform

        return getattr(platform, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

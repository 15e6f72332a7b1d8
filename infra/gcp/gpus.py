"""Which Compute Engine machine carries each Modal GPU name on GKE, and how runner pods reach it.

GKE labels every GPU node `cloud.google.com/gke-accelerator: <accelerator type>` and every Spot
node `cloud.google.com/gke-spot: "true"` by itself, so those labels (not labels of our own) are
the node selectors the stack outputs hand the runner. GPU pools here also carry the taint
`nvidia.com/gpu=present:NoSchedule`, the one GKE itself puts on GPU nodes, so CPU work never lands
on a GPU node and GPU pods need the toleration `gpu_placement` returns.

The machine for each GPU is the smallest that holds one such GPU, except where Google sells none:
A3 High with fewer than 8 H100s is a Spot (or flex-start) only shape, so an on-demand H100 pool
uses a3-highgpu-8g; H200 (A3 Ultra) and B200 (A4) come only as 8-GPU machines, which boot from
Hyperdisk only. L40S and A10G are not Google Cloud GPUs. The table reflects Google's machine
families as of 2025; check `gcloud compute accelerator-types list --filter=zone:ZONE` for what a
zone offers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ACCELERATOR_LABEL", "GPU_MACHINES", "GPU_TAINT", "SPOT_LABEL", "GpuMachine", "gpu_placement"]

ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
SPOT_LABEL = "cloud.google.com/gke-spot"
# As the GKE node pool API spells the effect; Kubernetes spells it NoSchedule.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}


@dataclasses.dataclass(frozen=True)
class GpuMachine:
    """One GPU type on GKE: the accelerator type, and the machine shape holding `count` of them."""

    accelerator: str
    machine_type: str
    count: int = 1
    disk_type: str = "pd-balanced"
    # The shape an on-demand pool uses where Google sells `machine_type` only as Spot.
    on_demand_machine_type: str | None = None
    on_demand_count: int | None = None

    def shape(self, spot: bool) -> tuple[str, int]:
        """(machine type, GPUs per node) for a Spot or an on-demand pool."""
        if spot or self.on_demand_machine_type is None:
            return self.machine_type, self.count
        return self.on_demand_machine_type, self.on_demand_count or self.count


GPU_MACHINES: dict[str, GpuMachine] = {
    "T4": GpuMachine("nvidia-tesla-t4", "n1-standard-8"),
    "L4": GpuMachine("nvidia-l4", "g2-standard-8"),
    "A100-40GB": GpuMachine("nvidia-tesla-a100", "a2-highgpu-1g"),
    "A100-80GB": GpuMachine("nvidia-a100-80gb", "a2-ultragpu-1g"),
    "H100": GpuMachine("nvidia-h100-80gb", "a3-highgpu-1g", on_demand_machine_type="a3-highgpu-8g",
                       on_demand_count=8),
    "H200": GpuMachine("nvidia-h200-141gb", "a3-ultragpu-8g", 8, disk_type="hyperdisk-balanced"),
    "B200": GpuMachine("nvidia-b200", "a4-highgpu-8g", 8, disk_type="hyperdisk-balanced"),
}


def gpu_placement(gpu: str, spot_only: bool) -> dict[str, Any]:
    """The contract's entry for `gpu`: node selector and toleration of its pools.

    `spot_only` (Spot pools and no on-demand fallback) adds the Spot label, so a pod can never
    wait on a pool that does not exist; with a fallback pool the selector leaves the choice to
    the cluster autoscaler.
    """
    selector = {ACCELERATOR_LABEL: GPU_MACHINES[gpu].accelerator}
    if spot_only:
        selector[SPOT_LABEL] = "true"
    toleration = {"key": GPU_TAINT["key"], "operator": "Equal", "value": GPU_TAINT["value"], "effect": "NoSchedule"}
    return {"node_selector": selector, "tolerations": [toleration]}

"""GPU requests as scheduling constraints, from the stack's `gpu_types`.

    one type        nodeSelector = the type's node_selector; its tolerations;
                    limits nvidia.com/gpu = count
    a fallback      ["H100", "A100-80GB"]: requiredDuringScheduling node affinity with one
    list            nodeSelectorTerm per type (terms are ORed, so a node of any listed type
                    fits), plus a preferredDuringScheduling term per type weighted in list order
                    (100, 90, 80, ..., at least 1) so the scheduler picks the earlier type when
                    nodes of several types are free; tolerations are the union, in list order,
                    without duplicates
    "ANY"           every type the stack offers, as a fallback list in the stack's order

Preferences steer the scheduler among nodes that exist; which pool a scale-from-zero adds a node
to is the cluster autoscaler's choice (its expander, which infra/ configures per cloud).

A type the stack does not offer is an InvalidError naming it and the offered types, raised before
anything is rendered. "H100!" (Modal: exactly H100, never upgraded) looks up "H100!" and then
"H100". One pod spec carries one `nvidia.com/gpu` limit, so every type of a fallback list must ask
for the same count; a list that does not is an InvalidError.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from .._resources import GPU
from .._stack import StackOutputs
from ..exception import InvalidError

__all__ = ["GPU_RESOURCE", "Placement", "gpu_placement"]

GPU_RESOURCE = "nvidia.com/gpu"


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a pod may run: merged into the pod spec by the pod builder."""

    gpu_count: int = 0
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    affinity: dict[str, Any] | None = None
    tolerations: tuple[dict[str, Any], ...] = ()


def _lookup(stack: StackOutputs, name: str) -> dict[str, Any] | None:
    found = stack.gpu_types.get(name)
    if found is None and name.endswith("!"):
        found = stack.gpu_types.get(name[:-1])
    return found


def gpu_placement(stack: StackOutputs, gpus: tuple[GPU, ...]) -> Placement:
    """The placement for `gpus` (FunctionOptions.gpu: one GPU, or a fallback list); see the module
    docstring. No GPUs: an empty Placement."""
    if not gpus:
        return Placement()
    if any(g.type == "ANY" for g in gpus):
        if not stack.gpu_types:
            raise InvalidError("gpu='any' needs a GPU pool, and this stack's cluster offers no GPUs "
                               "(add one in infra/ and run `pulumi up`)")
        count = gpus[0].count
        gpus = tuple(GPU(name, count) for name in stack.gpu_types)
    offered = ", ".join(sorted(stack.gpu_types)) or "none"
    missing = [g.type for g in gpus if _lookup(stack, g.type) is None]
    if missing:
        names = ", ".join(missing)
        raise InvalidError(f"gpu {names} is not offered by this stack's cluster (it offers: {offered}); "
                           "choose one of those or add a pool in infra/")
    counts = sorted({g.count for g in gpus})
    if len(counts) > 1:
        raise InvalidError(f"gpu fallback list {[str(g) for g in gpus]} asks for different counts; on Kubernetes "
                           "every type of a fallback list must ask for the same count")
    placements = [_lookup(stack, g.type) for g in gpus]
    bare = [g.type for g, p in zip(gpus, placements) if not p["node_selector"]]
    if len(placements) > 1 and bare:
        raise InvalidError(f"gpu fallback list {[str(g) for g in gpus]}: the stack gives {', '.join(bare)} no "
                           "node_selector, so its nodes cannot be told apart from the others'")
    tolerations: list[dict[str, Any]] = []
    seen: set[str] = set()
    for p in placements:
        for t in p["tolerations"]:
            key = json.dumps(t, sort_keys=True)
            if key not in seen:
                seen.add(key)
                tolerations.append(dict(t))
    if len(placements) == 1:
        return Placement(counts[0], dict(placements[0]["node_selector"]), None, tuple(tolerations))
    terms = [{"matchExpressions": [{"key": k, "operator": "In", "values": [v]}
                                   for k, v in sorted(p["node_selector"].items())]} for p in placements]
    preferred = [{"weight": max(1, 100 - 10 * i), "preference": copy.deepcopy(term)} for i, term in enumerate(terms)]
    affinity = {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
        "preferredDuringSchedulingIgnoredDuringExecution": preferred,
    }}
    return Placement(counts[0], {}, affinity, tuple(tolerations))

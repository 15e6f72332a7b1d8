"""KEDA objects (keda.sh/v1alpha1) that scale a worker Deployment on its queue.

One input stream per function (`stream_name`: the queue plane's `rq:f:APP/FUNCTION/RUN:in`, or
`rq:f:APP/FUNCTION:in` when deployed) read by one consumer group (`workers`). The ScaledObject has two redis-streams triggers on it:

- `lagCount`: entries added but not yet delivered to the group (XINFO GROUPS lag, Redis 7+). This
  is the only redis-streams metric that moves while no worker runs, so it is what wakes the
  Deployment from zero. A trigger on pending entries alone never would: pending entries exist only
  once a worker has read them (the mistake of a trigger that counts its own pods).
- `pendingEntriesCount`: entries delivered but not acknowledged, i.e. inputs in progress, so the
  workers running long inputs are not scaled away when the backlog is empty.

Each targets 1 per replica (one input at a time per container); KEDA scales to the larger of the
two. minReplicaCount = min_containers, maxReplicaCount = max_containers (KEDA's own default, 100,
when unset), cooldownPeriod = scaledown_window (the wait before 1 -> 0), and the HPA's scale-down
stabilization window is the same scaledown_window (capped at the HPA's 3600 s), so N -> M waits as
long as 1 -> 0 does. The queue's address comes from the stack's `queue_endpoint`
(redis://HOST:PORT/DB); its password from the stack's queue Secret through a TriggerAuthentication
(`secretTargetRef`), never in the ScaledObject.

A deployed web function is scaled by the KEDA HTTP add-on instead (`http_scaled_object`), when the
stack has a front door (`web_domain`): its interceptor receives every request for the function's
host, `APP-FUNCTION.WEB_DOMAIN`, holds it while the Deployment wakes from zero, and forwards it to
the function's Service; its scaler counts the requests in flight. replicas.min = min_containers,
max = max_containers, scaledownPeriod = scaledown_window, and the concurrency target is the
function's `max_inputs` (requests one container takes at once: 1 unless it allows concurrent
inputs), so the add-on adds a container for every `max_inputs` requests in flight.
"""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

from .._stack import StackOutputs
from ..exception import InvalidError
from ._meta import labels
from ._pod import Workload

__all__ = ["KEDA_DEFAULT_MAX", "consumer_group", "http_scaled_object", "scaled_object", "stream_name",
           "trigger_authentication", "web_host"]

KEDA_DEFAULT_MAX = 100
HPA_MAX_WINDOW = 3600


def stream_name(w: Workload) -> str:
    """The function's input stream: the queue plane's (runner._plane.Keys) for `w.queue_key`."""
    from .._plane._wire import Keys

    return Keys(w.queue_key).inputs


def consumer_group(w: Workload) -> str:
    from .._plane._wire import GROUP

    return GROUP


def _address(stack: StackOutputs) -> tuple[str, str, bool]:
    url = urllib.parse.urlsplit(stack.queue_endpoint)
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        raise InvalidError(f"queue_endpoint {stack.queue_endpoint!r} is not a redis://HOST:PORT/DB URL")
    db = url.path.strip("/") or "0"
    return f"{url.hostname}:{url.port or 6379}", db, url.scheme == "rediss"


def _object(api_version: str, kind: str, stack: StackOutputs, w: Workload, component: str,
            spec: dict[str, Any]) -> dict[str, Any]:
    """A KEDA object named after `w`'s Deployment, labelled as its `component` ("worker", "web")."""
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": w.name, "namespace": stack.namespace,
                         "labels": labels(w.app, w.function, w.run_id, component)},
            "spec": spec}


def _max(w: Workload) -> int:
    return w.options.max_containers if w.options.max_containers is not None else KEDA_DEFAULT_MAX


def trigger_authentication(stack: StackOutputs, w: Workload) -> dict[str, Any]:
    """The TriggerAuthentication giving KEDA the queue password from the stack's queue Secret."""
    return _object("keda.sh/v1alpha1", "TriggerAuthentication", stack, w, "worker", {
        "secretTargetRef": [{"parameter": "password", "name": stack.queue_secret_name, "key": "password"}]})


def scaled_object(stack: StackOutputs, w: Workload, *, polling_interval: int = 5) -> dict[str, Any]:
    """The ScaledObject scaling `deployment(stack, w)` on its input stream; see the module docstring."""
    address, db, tls = _address(stack)
    opts = w.options
    window = max(0, math.ceil(opts.scaledown_window))
    common = {"address": address, "databaseIndex": db, "stream": stream_name(w), "consumerGroup": consumer_group(w)}
    if tls:
        common["enableTLS"] = "true"
    triggers = [
        {"type": "redis-streams", "name": "backlog", "authenticationRef": {"name": w.name},
         "metadata": {**common, "lagCount": "1", "activationLagCount": "0"}},
        {"type": "redis-streams", "name": "in-progress", "authenticationRef": {"name": w.name},
         "metadata": {**common, "pendingEntriesCount": "1"}},
    ]
    return _object("keda.sh/v1alpha1", "ScaledObject", stack, w, "worker", {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": w.name},
        "minReplicaCount": opts.min_containers,
        "maxReplicaCount": _max(w),
        "cooldownPeriod": window,
        "pollingInterval": polling_interval,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
            "stabilizationWindowSeconds": min(window, HPA_MAX_WINDOW)}}}},
        "triggers": triggers,
    })


def web_host(stack: StackOutputs, w: Workload) -> str | None:
    """The host a deployed web function answers on through the stack's front door
    (`NAME.WEB_DOMAIN`, NAME the Deployment's), or None when the stack has none (no `web_domain`)."""
    return f"{w.name}.{stack.web_domain}" if stack.web_domain else None


def http_scaled_object(stack: StackOutputs, w: Workload, host: str, *, port: int = 80,
                       concurrency: int = 1) -> dict[str, Any]:
    """The HTTPScaledObject (http.keda.sh/v1alpha1) routing `host` to `w`'s web Service (`port`)
    and scaling its web Deployment on requests in flight; see the module docstring."""
    return _object("http.keda.sh/v1alpha1", "HTTPScaledObject", stack, w, "web", {
        "hosts": [host],
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": w.name, "service": w.name,
                           "port": port},
        "replicas": {"min": w.options.min_containers, "max": _max(w)},
        "scaledownPeriod": max(0, math.ceil(w.options.scaledown_window)),
        "scalingMetric": {"concurrency": {"targetValue": max(1, concurrency)}},
    })

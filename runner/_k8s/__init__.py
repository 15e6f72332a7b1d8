"""The Kubernetes manifests the kubernetes provider submits, as plain dicts.

Pure functions of the stack's outputs (`runner._stack.StackOutputs`) and a `Workload` (app,
function, run id, image, FunctionOptions): no kubernetes client, no I/O, standard library only,
deterministic (the same input renders the same dicts, byte for byte once dumped with sorted
keys). Fields are the API's camelCase. Everything is rendered into the stack's namespace.

    function_manifests(stack, w)       Secrets, TriggerAuthentication, worker Deployment, ScaledObject
    web_manifests(stack, w)            Secrets, web Deployment, Service (and, deployed behind the
                                       stack's front door, an HTTPScaledObject)
    schedule_manifests(stack, w, s)    Secrets, CronJob
    job_manifests(stack, w)            Secrets, Job
    sandbox_manifests(stack, w, id, block_network=...)
                                       Secrets, Pod, NetworkPolicy (when blocked)
    run_owner(stack, app, run_id)      the ConfigMap owning an ephemeral run
    owned(manifests, owner, uid)       ownerReferences to it on everything else of the run

Each bundle lists objects in the order to apply them (Secrets before the pods that read them).
The pieces (`deployment`, `scaled_object`, `pod_template`, ...) are public too; see each module's
docstring for the choices they make: `_meta` (names, labels, ownership), `_placement` (GPUs),
`_pod` (the one pod builder, volumes, secrets), `_workloads`, `_keda`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from .._schedule import Schedule
from .._stack import StackOutputs
from ._keda import consumer_group, http_scaled_object, scaled_object, stream_name, trigger_authentication, web_host
from ._meta import cpu_quantity, dns_name, labels, memory_quantity, owned, run_owner, secret
from ._placement import GPU_RESOURCE, Placement, gpu_placement
from ._pod import (
    DEFAULT_CPU,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MEMORY_MIB,
    SYNC_TOOLS,
    WORKER_COMMAND,
    SyncTool,
    Workload,
    image_ref,
    pod_template,
    secret_names,
    sidecar_script,
)
from ._workloads import WEB_PORT, cronjob, deployment, job, network_policy, period_to_cron, sandbox_pod, service

__all__ = ["DEFAULT_CPU", "DEFAULT_GRACE_SECONDS", "DEFAULT_MEMORY_MIB", "GPU_RESOURCE", "SYNC_TOOLS", "WEB_PORT",
           "WORKER_COMMAND", "Placement", "SyncTool", "Workload", "consumer_group", "cpu_quantity", "cronjob",
           "deployment", "dns_name", "function_manifests", "gpu_placement", "http_scaled_object", "image_ref", "job", "job_manifests",
           "labels", "memory_quantity", "network_policy", "owned", "period_to_cron", "pod_template", "run_owner",
           "sandbox_manifests", "sandbox_pod", "scaled_object", "schedule_manifests", "secret", "secret_manifests",
           "secret_names", "service", "sidecar_script", "stream_name", "trigger_authentication", "web_host",
           "web_manifests"]


def secret_manifests(stack: StackOutputs, w: Workload) -> list[dict[str, Any]]:
    """One Kubernetes Secret per runner Secret of `w`, named as the pod's envFrom refers to them."""
    return [secret(stack, name, s.env(), app=w.app, run_id=w.run_id, function=w.function)
            for name, s in zip(secret_names(w), w.options.secrets)]


def function_manifests(stack: StackOutputs, w: Workload, *, command: Sequence[str] = WORKER_COMMAND,
                       grace_seconds: int = DEFAULT_GRACE_SECONDS) -> list[dict[str, Any]]:
    """A queue-fed function: its Secrets, TriggerAuthentication, worker Deployment and ScaledObject.
    Raises InvalidError (e.g. a GPU the stack does not offer) before rendering anything."""
    dep = deployment(stack, w, command=command, grace_seconds=grace_seconds)
    return [*secret_manifests(stack, w), trigger_authentication(stack, w), dep, scaled_object(stack, w)]


def web_manifests(stack: StackOutputs, w: Workload, *, command: Sequence[str] = WORKER_COMMAND,
                  grace_seconds: int = DEFAULT_GRACE_SECONDS, web_port: int = WEB_PORT,
                  replicas: int | None = None, host: str | None = None,
                  concurrency: int = 1) -> list[dict[str, Any]]:
    """A web function: its Secrets, web Deployment (serving on `web_port`, 8000 unless the function
    is a web_server on a port of its own) and ClusterIP Service (80). `replicas`: the Deployment's
    first count, when its front door scales it (a run's starts at 0 and wakes on a request).
    `host` (see `web_host`): deployed behind the stack's front door, answering on that host, with
    the HTTPScaledObject that routes it and scales the Deployment from `min_containers` (0 too)."""
    dep = deployment(stack, w, command=command, web_port=web_port, grace_seconds=grace_seconds)
    if host is not None:
        replicas = w.options.min_containers if replicas is None else replicas
    if replicas is not None:
        dep["spec"]["replicas"] = replicas
    svc = service(stack, w)
    front = [http_scaled_object(stack, w, host, port=svc["spec"]["ports"][0]["port"], concurrency=concurrency)
             ] if host is not None else []
    return [*secret_manifests(stack, w), dep, svc, *front]


def schedule_manifests(stack: StackOutputs, w: Workload, schedule: Schedule, *, start: _dt.datetime | None = None,
                       command: Sequence[str] = WORKER_COMMAND) -> list[dict[str, Any]]:
    """A scheduled function: its Secrets and CronJob."""
    cj = cronjob(stack, w, schedule, start=start, command=command)
    return [*secret_manifests(stack, w), cj]


def job_manifests(stack: StackOutputs, w: Workload, *, command: Sequence[str] = WORKER_COMMAND) -> list[dict[str, Any]]:
    """A one-off run: its Secrets and Job."""
    j = job(stack, w, command=command)
    return [*secret_manifests(stack, w), j]


def sandbox_manifests(stack: StackOutputs, w: Workload, sandbox_id: str, *, command: Sequence[str] | None = None,
                      block_network: bool = False) -> list[dict[str, Any]]:
    """A sandbox: its Secrets, the NetworkPolicy when `block_network` (applied before the Pod, so
    the pod never runs unpoliced), and its Pod."""
    policy = [network_policy(stack, w, sandbox_id)] if block_network else []
    pod = sandbox_pod(stack, w, sandbox_id, command=command)
    return [*secret_manifests(stack, w), *policy, pod]

"""Deployments, Services, Jobs, CronJobs and sandbox Pods, each around `pod_template`.

- `deployment`: the workers of a deployed or long-running function. They pull inputs from the
  queue (RUNNER_WORKER_MODE=queue), so KEDA's ScaledObject owns the replica count: `replicas`
  is rendered as `min_containers` for the first apply; an update of a running Deployment should
  leave `replicas` out (or apply it under a field manager KEDA's HPA does not fight). A web
  function's Deployment (`web_port`) also serves HTTP on that port (mode "web",
  RUNNER_WEB_PORT), with a TCP readiness probe, and starts with `max(1, min_containers)` replicas:
  only a front door wakes it from zero (`web_manifests` sets the count when there is one).
  Rolling updates add a new pod before removing an old one (maxSurge 1, maxUnavailable 0), so
  deploying again never drops a request.
- `service`: ClusterIP, port 80 to the container's named port `http` (8000).
- `job`: one run of the function (mode "once"); `cronjob`: the same pod on a schedule (mode
  "schedule"), `concurrencyPolicy: Allow` as Modal does. Both run with `restartPolicy: Never`,
  `backoffLimit` = retries, and a `podFailurePolicy` that ignores pods lost to node disruption
  (spot preemption, drain), so retries count real failures only. The per-input `timeout` is the
  worker's to enforce, as on every provider; no `activeDeadlineSeconds` on Jobs.
- `sandbox_pod`: a bare Pod (`restartPolicy: Never`) with `activeDeadlineSeconds` = timeout and
  cpu/memory/gpu as limits; `network_policy` denies all ingress and egress for `block_network`.

Schedules: a `Cron` maps as is (`schedule` plus `timeZone`; Kubernetes evaluates it, and its
handling of DST gaps can differ from runner's own daemon). A `Period` maps only where cron can say
it (`period_to_cron`); the first fire is one period after `start`, as Modal's Period does.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from .._schedule import Cron, Period, Schedule
from .._stack import StackOutputs
from ..exception import InvalidError
from ._meta import dns_name, label_value, labels, selector
from ._pod import DEFAULT_GRACE_SECONDS, ENV_WEB_PORT, WORKER_COMMAND, Workload, pod_template, seconds

__all__ = ["WEB_PORT", "cronjob", "deployment", "job", "network_policy", "period_to_cron", "sandbox_pod",
           "service"]

WEB_PORT = 8000
LABEL_SANDBOX = "runner/sandbox"
SANDBOX_IDLE = ("sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait")


def _meta(stack: StackOutputs, w: Workload, name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "namespace": stack.namespace, "labels": labels(w.app, w.function, w.run_id, kind)}


def deployment(stack: StackOutputs, w: Workload, *, command: Sequence[str] = WORKER_COMMAND,
               web_port: int | None = None, grace_seconds: int = DEFAULT_GRACE_SECONDS) -> dict[str, Any]:
    """The worker Deployment of `w` (apps/v1), or its web Deployment when `web_port` is given."""
    kind = "web" if web_port else "worker"
    ports = [{"name": "http", "containerPort": web_port, "protocol": "TCP"}] if web_port else []
    readiness = {"tcpSocket": {"port": "http"}, "periodSeconds": 2} if web_port else None
    template = pod_template(stack, w, kind, command=command, mode=kind if web_port else "queue",
                            grace_seconds=grace_seconds, ports=ports, readiness=readiness,
                            extra_env={ENV_WEB_PORT: str(web_port)} if web_port else None)
    replicas = max(1, w.options.min_containers) if web_port else w.options.min_containers
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(stack, w, w.name, kind),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(w.app, w.function, kind)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": template,
        },
    }


def service(stack: StackOutputs, w: Workload, *, port: int = 80) -> dict[str, Any]:
    """The ClusterIP Service in front of `w`'s web Deployment: `port` to the pods' `http` port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(stack, w, w.name, "web"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(w.app, w.function, "web"),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _job_spec(stack: StackOutputs, w: Workload, kind: str, mode: str, command: Sequence[str],
              grace_seconds: int) -> dict[str, Any]:
    retries = w.options.retries.max_retries if w.options.retries else 0
    return {
        "backoffLimit": retries,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
        "template": pod_template(stack, w, kind, command=command, mode=mode, restart_policy="Never",
                                 grace_seconds=grace_seconds),
    }


def job(stack: StackOutputs, w: Workload, *, command: Sequence[str] = WORKER_COMMAND,
        grace_seconds: int = DEFAULT_GRACE_SECONDS, ttl_seconds: int = 3600) -> dict[str, Any]:
    """A Job (batch/v1) running `w` once; kept `ttl_seconds` after it finished, for its logs."""
    spec = _job_spec(stack, w, "job", "once", command, grace_seconds)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(stack, w, w.name, "job"),
            "spec": {"ttlSecondsAfterFinished": ttl_seconds, **spec}}


def period_to_cron(period: Period, start: _dt.datetime | None = None) -> str:
    """The cron expression (UTC) that fires every `period`, in phase with `start` (an aware
    datetime, e.g. the deploy time; None: on the unit's boundaries).

    Cron can repeat every N minutes with N dividing 60, every N hours with N dividing 24, daily,
    weekly, every N months with N dividing 12 (on a day 1 to 28, so no month is skipped) and
    yearly (not on Feb 29). Any other period is an InvalidError saying so."""
    t = (start or _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    months = period._months
    delta = period._delta
    why = (f"{period!r} cannot be a Kubernetes CronJob: cron repeats only every N minutes (N dividing 60), "
           "N hours (N dividing 24), 1 day, 1 week, N months (N dividing 12) or 1 year; "
           "use one of those or modal.Cron(...)")
    if months:
        if delta or (months != 12 and 12 % months):
            raise InvalidError(why)
        if months == 12:
            if (t.month, t.day) == (2, 29):
                raise InvalidError(f"{period!r} from Feb 29 cannot be a CronJob (cron would fire only in leap years)")
            return f"{t.minute} {t.hour} {t.day} {t.month} *"
        if t.day > 28:
            raise InvalidError(f"{period!r} from day {t.day} of a month cannot be a CronJob "
                               "(cron skips months without that day; Period clamps to the month's end)")
        return f"{t.minute} {t.hour} {t.day} {(t.month - 1) % months + 1}-12/{months} *"
    total = delta.total_seconds()
    if total % 60:
        raise InvalidError(why)
    minutes = int(total // 60)
    if minutes < 60 and 60 % minutes == 0:
        return "* * * * *" if minutes == 1 else f"{t.minute % minutes}-59/{minutes} * * * *"
    if minutes % 60 == 0:
        hours = minutes // 60
        if hours < 24 and 24 % hours == 0:
            return f"{t.minute} {t.hour % hours}-23/{hours} * * *"
        if hours == 24:
            return f"{t.minute} {t.hour} * * *"
        if hours == 24 * 7:
            return f"{t.minute} {t.hour} * * {t.isoweekday() % 7}"
    raise InvalidError(why)


def cronjob(stack: StackOutputs, w: Workload, schedule: Schedule, *, start: _dt.datetime | None = None,
            command: Sequence[str] = WORKER_COMMAND, grace_seconds: int = DEFAULT_GRACE_SECONDS) -> dict[str, Any]:
    """A CronJob (batch/v1) running `w` on `schedule` (a Cron, or a Period cron can express)."""
    if isinstance(schedule, Cron):
        expr, zone = schedule.cron_string, schedule.timezone
    elif isinstance(schedule, Period):
        expr, zone = period_to_cron(schedule, start), "UTC"
    else:
        raise InvalidError(f"schedule must be modal.Cron(...) or modal.Period(...), got {type(schedule).__name__}")
    name = dns_name(*((w.app, w.function) if w.deployed else (w.app, w.function, w.run_id)), max_len=52)
    spec = _job_spec(stack, w, "cron", "schedule", command, grace_seconds)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _meta(stack, w, name, "cron"),
        "spec": {
            "schedule": expr,
            "timeZone": zone,
            "concurrencyPolicy": "Allow",
            "startingDeadlineSeconds": 300,
            "jobTemplate": {"metadata": {"labels": labels(w.app, w.function, w.run_id, "cron")}, "spec": spec},
        },
    }


def _sandbox_name(w: Workload, sandbox_id: str) -> str:
    return dns_name(sandbox_id)


def sandbox_pod(stack: StackOutputs, w: Workload, sandbox_id: str, *, command: Sequence[str] | None = None,
                grace_seconds: int = DEFAULT_GRACE_SECONDS) -> dict[str, Any]:
    """The Pod (v1) of sandbox `sandbox_id`: `command` (or an idle shell that exits on SIGTERM),
    `activeDeadlineSeconds` = `w.options.timeout`, the 0.25 CPU / 256 MiB default requests, and the
    cpu, memory and gpu it asked for as limits. `w.function` is the sandbox's app-level tag. The
    pod gets no queue address or password: a sandbox runs code that is not the app's."""
    extra = {LABEL_SANDBOX: label_value(sandbox_id)}
    template = pod_template(stack, w, "sandbox", command=command or SANDBOX_IDLE, restart_policy="Never",
                            grace_seconds=grace_seconds, enforce_limits=True, extra_labels=extra, queue=False)
    template["spec"]["activeDeadlineSeconds"] = seconds(w.options.timeout)
    meta = {"name": _sandbox_name(w, sandbox_id), "namespace": stack.namespace, **template["metadata"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def network_policy(stack: StackOutputs, w: Workload, sandbox_id: str) -> dict[str, Any]:
    """For `block_network`: a NetworkPolicy selecting the sandbox's pod by its runner/sandbox label,
    with both policy types and no rules, which denies all ingress and egress (DNS too). Only
    enforced where the cluster's network plugin implements NetworkPolicy.

    The policy covers the whole pod, so a volume's sync containers could not reach a cloud bucket
    either: block_network with volumes is an InvalidError except on the local stack, whose bucket
    is a hostPath."""
    if w.options.volumes and stack.cloud != "local":
        raise InvalidError(f"block_network=True with volumes is not supported on a {stack.cloud} cluster: the "
                           "policy that blocks the sandbox's network would also block its volume sync "
                           f"to {stack.bucket_url}; drop one of them")
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": _sandbox_name(w, sandbox_id), "namespace": stack.namespace,
                     "labels": {**labels(w.app, w.function, w.run_id, "sandbox"),
                                LABEL_SANDBOX: label_value(sandbox_id)}},
        "spec": {"podSelector": {"matchLabels": {LABEL_SANDBOX: label_value(sandbox_id)}},
                 "policyTypes": ["Ingress", "Egress"]},
    }


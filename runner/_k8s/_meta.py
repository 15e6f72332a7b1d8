"""Names, labels, quantities and ownership: the metadata every rendered object shares.

Names. Every object name is a DNS-1035 label (lowercase letters, digits and '-', starting with a
letter, at most 63 characters): that is the strictest rule among the kinds rendered here (a
Service's name must be one), so one rule serves all. A name that had to be changed to fit (case,
'_' or '.', length) gets an 8-hex-digit hash of the original parts appended, so `my_fn` and
`my-fn` never collide. CronJob names are kept to 52 characters because the controller appends an
11-character suffix to the Jobs it creates.

Labels (on every object; pod templates also carry the stack's `pod_labels`):

    app.kubernetes.io/managed-by: runner
    runner/app        the app's name
    runner/function   the function's tag (or the sandbox's id)
    runner/run-id     the run (ephemeral) or deployment that rendered it
    runner/kind       worker | web | cron | job | sandbox | secret | run

Selectors (Deployment, Service, NetworkPolicy) use app, function and kind only: a redeploy renders
a new run id, and a Deployment's selector cannot change.

Ownership. An ephemeral `runner run` is owned by one ConfigMap (`run_owner`); `owned` adds an
ownerReference to it on every other object of the run, so deleting that ConfigMap (on exit,
Ctrl-C, or when a heartbeat times out) lets the garbage collector delete everything else.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .._stack import StackOutputs

__all__ = ["LABEL_APP", "LABEL_FUNCTION", "LABEL_KIND", "LABEL_RUN", "MANAGED_BY", "cpu_quantity", "dns_name",
           "label_value", "labels", "memory_quantity", "owned", "run_owner", "secret", "selector"]

MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_APP = "runner/app"
LABEL_FUNCTION = "runner/function"
LABEL_RUN = "runner/run-id"
LABEL_KIND = "runner/kind"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")


def _digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def dns_name(*parts: str, max_len: int = 63) -> str:
    """`parts` joined with '-' as a DNS-1035 label of at most `max_len` characters (see the module
    docstring); deterministic, and a hash suffix whenever the text had to change."""
    raw = "-".join(parts)
    name = _NOT_DNS.sub("-", raw.lower()).strip("-")
    name = re.sub("-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = "r-" + name
    if name == raw and len(name) <= max_len:
        return name
    suffix = "-" + _digest(parts)
    return name[: max_len - len(suffix)].rstrip("-") + suffix


def label_value(text: str) -> str:
    """`text` as a label value (at most 63 of [A-Za-z0-9._-], alphanumeric at both ends), with a hash
    suffix when it had to change."""
    value = _NOT_LABEL.sub("-", text).strip("-._")
    if value == text and len(value) <= 63:
        return value
    suffix = "-" + _digest([text])
    return (value[: 63 - len(suffix)].rstrip("-._") + suffix).lstrip("-._")


def selector(app: str, function: str, kind: str) -> dict[str, str]:
    """The labels that select one function's pods of one kind (no run id: see the module docstring)."""
    return {LABEL_APP: label_value(app), LABEL_FUNCTION: label_value(function), LABEL_KIND: kind}


def labels(app: str, function: str, run_id: str, kind: str) -> dict[str, str]:
    """Every object's labels: `selector(...)` plus the managed-by and run-id labels."""
    return {MANAGED_BY: "runner", **selector(app, function, kind), LABEL_RUN: label_value(run_id)}


def cpu_quantity(cores: float) -> str:
    """Modal's `cpu=` (float cores) as a Kubernetes quantity: whole cores as "2", else millicores
    ("250m"), rounded up to a whole millicore."""
    milli = max(1, math.ceil(round(cores * 1000, 6)))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(mib: float) -> str:
    """Modal's `memory=` (MiB) as a Kubernetes quantity in Mi, rounded up."""
    return f"{max(1, math.ceil(mib))}Mi"


def secret(stack: StackOutputs, name: str, values: Mapping[str, str], *, app: str, run_id: str,
           function: str = "") -> dict[str, Any]:
    """A Kubernetes Secret (type Opaque) holding `values` base64-encoded in `data`.

    The only manifest a secret value ever appears in: pods reference it by name (`envFrom`), so
    `kubectl get pod -o yaml` never shows a value. `data` (base64) rather than `stringData`, so the
    applied object and its golden file look the same as what the API server stores."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": stack.namespace,
                     "labels": labels(app, function or app, run_id, "secret")},
        "type": "Opaque",
        "data": data,
    }


def run_owner(stack: StackOutputs, app: str, run_id: str) -> dict[str, Any]:
    """The ConfigMap that owns everything of the ephemeral run `run_id`; create it first, read its
    `metadata.uid` from the API's answer, then pass that to `owned`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": dns_name("runner-run", run_id), "namespace": stack.namespace,
                     "labels": labels(app, app, run_id, "run")},
        "data": {"app": app, "run-id": run_id},
    }


def owned(manifests: Iterable[Mapping[str, Any]], owner: Mapping[str, Any], uid: str) -> list[dict[str, Any]]:
    """Copies of `manifests` with an ownerReference to `owner` (a rendered object, e.g. `run_owner`'s
    ConfigMap) whose server-assigned uid is `uid`, added to any they already have.

    `blockOwnerDeletion` is true, so a foreground delete of the owner waits for its dependents.
    The owner itself, if among `manifests`, is returned unchanged. Owner and dependents must share
    a namespace, which they do: everything is rendered into the stack's namespace."""
    meta = owner["metadata"]
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": uid,
           "blockOwnerDeletion": True, "controller": False}
    out = []
    for m in manifests:
        m = copy.deepcopy(dict(m))
        same = m.get("kind") == owner["kind"] and m.get("metadata", {}).get("name") == meta["name"]
        if not same:
            refs = m["metadata"].setdefault("ownerReferences", [])
            if not any(r.get("uid") == uid for r in refs):
                refs.append(dict(ref))
        out.append(m)
    return out

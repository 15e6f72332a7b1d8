"""`runner deploy` and `runner app list | stop | logs` on the kubernetes provider: apps that live in
the cluster, callable from any machine that reaches the stack.

A deployed app is one ConfigMap, `runner-app-NAME` (label runner/kind=app), holding its state (the
same shape as a local deploy's state.json, see runner._deploy) and owning every other object of
the app through ownerReferences, so `runner app stop` is one delete and the garbage collector
removes the rest. Per function (and per class, its default instance):

- a worker Deployment, KEDA ScaledObject, TriggerAuthentication and Secrets (`runner._k8s`), named
  after app and function only, so a redeploy updates them in place: a rolling update (a new pod
  before an old one goes; the old one finishes what it holds);
- its spec on the queue under a key that stays the same across versions (APP/FUNCTION), so inputs
  queued during a redeploy are taken by whichever version's pods are up, and none is stranded;
- a CronJob for a schedule, whose pod queues one call (runner._plane.worker, mode "schedule");
- for a web function, a web Deployment (at least one pod: nothing wakes it from zero) and Service.

`Function.from_name` / `Cls.from_name` on any machine read the state and call through the queue
(`lookup_pool`), with the client scaling the Deployment up when it queues work, as in a run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import secrets
import sys
import time
import types
from typing import Any

from ._output import output
from .exception import InvalidError, NotFoundError

__all__ = ["create_empty", "deploy", "deployed_apps", "follow_logs", "lookup_pool", "read_state", "stop"]

STATE_KEY = "state"


def _cluster():
    from ._providers._kubernetes import cluster

    return cluster()


def _owner_name(name: str) -> str:
    from ._k8s import dns_name

    return dns_name("runner-app", name)


def _owner(stack: Any, name: str, state: dict) -> dict:
    from ._k8s import labels

    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": _owner_name(name), "namespace": stack.namespace, "labels": labels(name, name, name, "app")},
            "data": {STATE_KEY: json.dumps(state, sort_keys=True)}}


def read_state(name: str) -> dict | None:
    """The deployed app's state from the cluster, or None."""
    got = _cluster().kube.get("ConfigMap", _owner_name(name))
    if got is None:
        return None
    try:
        return json.loads((got.get("data") or {})[STATE_KEY])
    except (KeyError, TypeError, ValueError):
        return None


def create_empty(name: str) -> dict:
    """An app with nothing deployed (App.lookup(create_if_missing=True))."""
    c = _cluster()
    state = {"name": name, "id": f"ap-{secrets.token_hex(6)}", "version": 0, "provider": "kubernetes",
             "deployed_at": _now(), "url": None, "web": {}, "functions": {}, "classes": {}}
    from ._providers._kube_api import KubeError

    try:
        c.kube.create(_owner(c.stack, name, state))
    except KubeError as exc:
        if exc.status != 409:
            raise
        return read_state(name) or state
    return state


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---- deploy -------------------------------------------------------------------------------------
def deploy(target: str, as_module: bool, name: str | None) -> dict:
    """Apply the app's objects to the cluster (a new version if it is deployed already); its state."""
    from ._home import check_name
    from ._k8s import function_manifests, owned, schedule_manifests, web_manifests
    from ._plane import _wire as W
    from ._plane._client import _redis_client, register
    from ._providers._kube_pools import LEASE
    from ._providers._kubernetes import APP_ROOT, KubernetesProvider
    from ._serialization import serialize_args
    from ._serve import load_app

    app, _ = load_app(target, as_module)  # a broken file fails here, with its own error
    name = name or app.name
    if not name:
        raise InvalidError(f"{target}: the App has no name; give it one (modal.App('name')) or pass --name")
    check_name(name, "app")
    provider = KubernetesProvider()
    c, kube, stack = provider.cluster, provider.kube, provider.stack
    app._validate(provider)
    old = read_state(name) or {}
    version = int(old.get("version") or 0) + 1
    run_id = f"v{version}"
    state = {"name": name, "id": old.get("id") or f"ap-{secrets.token_hex(6)}", "version": version,
             "provider": "kubernetes", "deployed_at": _now(), "url": None, "web": {}, "functions": {}, "classes": {}}
    made = kube.get("ConfigMap", _owner_name(name)) or kube.create(_owner(stack, name, state))
    owner, uid = _owner(stack, name, state), made["metadata"]["uid"]
    session = types.SimpleNamespace(app_name=name, id=run_id)
    r = _redis_client(c.queue_url())
    keep: set[str] = set()
    try:
        targets = [(fname, f, f._target()) for fname, f in app._functions.items()]
        for cname, cls in app._classes.items():
            if any(decl.required for decl in cls._params.values()):
                output().notice(f"runner: {cname} has parameters without defaults; instances with parameters are "
                                "not deployed to a cluster yet, so it is left out")
                continue
            targets.append((cname, None, cls()._target()))
        for label, f, t in targets:
            w = dataclasses.replace(provider.workload(session, t), function=label, deployed=True)
            keep.add(w.name)
            info = {"key": w.queue_key, "max_inputs": t.max_inputs, "timeout": t.options.timeout,
                    "retries": t.options.retries is not None, "deployment": w.name}
            if t.web is not None:
                register(r, W.Keys(w.queue_key), t, APP_ROOT, LEASE, secrets_in_spec=False, web=provider)
                manifests = web_manifests(stack, w, web_port=t.web_listen(provider)[1])
                url = f"http://{w.name}.{stack.namespace}.svc.cluster.local"
                state["web"][label] = url
            else:
                register(r, W.Keys(w.queue_key), t, APP_ROOT, LEASE, secrets_in_spec=False)
                manifests = function_manifests(stack, w)
            schedule = getattr(f, "_schedule", None) if f is not None else None
            if schedule is not None:
                r.hset(W.Keys(w.queue_key).spec, "schedule_args", serialize_args(label, f._raw, (), {}))
                enqueuer = dataclasses.replace(w, options=dataclasses.replace(
                    w.options, gpu=(), volumes=(), cpu=None, memory=None))
                manifests += schedule_manifests(stack, enqueuer, schedule,
                                                start=_dt.datetime.now(_dt.timezone.utc))[-1:]
            for obj in owned(manifests, owner, uid):
                if obj["kind"] == "Deployment" and kube.get("Deployment", obj["metadata"]["name"]) is not None:
                    obj["spec"].pop("replicas", None)  # KEDA (or the front door) owns it once it runs
                kube.apply(obj)
            if f is not None:
                state["functions"][label] = {**info, "gen": f._is_gen(), "web": t.web is not None,
                                             "schedule": schedule.describe() if schedule is not None else None}
            else:
                from ._function import is_generator

                cls = app._classes[label]
                state["classes"][label] = {**info, "params": list(cls._params),
                                           "methods": {m: {"gen": is_generator(raw)} for m, raw in cls._methods.items()}}
    finally:
        r.close()
    _remove_stale(kube, name, keep)
    kube.apply(_owner(stack, name, state))
    provider._closed.set()
    return state


def _remove_stale(kube: Any, name: str, keep: set[str]) -> None:
    """Objects of functions the new version no longer has."""
    from ._k8s._meta import LABEL_APP, label_value

    for kind in ("CronJob", "ScaledObject", "TriggerAuthentication", "Deployment", "Service", "Secret"):
        for obj in kube.list(kind, {LABEL_APP: label_value(name)}):
            n = obj["metadata"]["name"]
            if not any(n == k or n.startswith(k + "-") for k in keep):
                kube.delete(kind, n)


# ---- lookups from any machine -----------------------------------------------------------------
_pools: dict[tuple, Any] = {}


def lookup_pool(app_name: str, info: dict, name: str) -> Any:
    """A pool calling the deployed function (or class) described by `info` through the queue."""
    from ._providers._kube_pools import KubePool

    key = (app_name, info["key"])
    pool = _pools.get(key)
    if pool is None or pool.session.closed:
        from ._resources import Retries

        options = types.SimpleNamespace(retries=Retries(max_retries=0) if info.get("retries") else None,
                                        timeout=info.get("timeout"), max_containers=None, min_containers=0)
        target = types.SimpleNamespace(name=name, options=options, max_inputs=int(info.get("max_inputs") or 1),
                                       web=None)
        pool = _pools[key] = KubePool.lookup(_cluster(), target, info["key"], info["deployment"], app_name)
    return pool


# ---- runner app list | stop | logs -----------------------------------------------------------------
def deployed_apps() -> dict[str, dict]:
    from ._k8s._meta import LABEL_KIND, MANAGED_BY

    out = {}
    for cm in _cluster().kube.list("ConfigMap", {MANAGED_BY: "runner", LABEL_KIND: "app"}):
        try:
            state = json.loads(cm["data"][STATE_KEY])
        except (KeyError, TypeError, ValueError):
            continue
        out[state["name"]] = {**state, "alive": bool(state.get("version"))}
    return dict(sorted(out.items()))


def stop(name: str) -> None:
    """Delete the app's owner (the garbage collector removes the rest) and its queue keys."""
    from ._plane import remove_function

    c = _cluster()
    state = read_state(name)
    if state is None:
        raise NotFoundError(f"no app {name!r} is deployed on the {c.stack.cloud} stack's cluster; "
                            "see `runner app list`")
    c.kube.delete("ConfigMap", _owner_name(name), propagation="Foreground")
    for info in [*state["functions"].values(), *state["classes"].values()]:
        remove_function(c.queue_url(), info["key"])


def follow_logs(name: str, follow: bool, out=None) -> None:
    """The main container's log of every pod of the app, each line after its pod's name."""
    from ._k8s._meta import LABEL_APP, label_value

    out = out or sys.stdout
    c = _cluster()
    if read_state(name) is None:
        raise NotFoundError(f"no app {name!r} is deployed on the {c.stack.cloud} stack's cluster; "
                            "see `runner app list`")
    seen: dict[str, int] = {}
    while True:
        for pod in c.kube.pods({LABEL_APP: label_value(name)}):
            pname = pod["metadata"]["name"]
            lines = c.kube.log(pname).splitlines()
            for line in lines[seen.get(pname, 0):]:
                out.write(f"{pname}: {line}\n")
            seen[pname] = len(lines)
        out.flush()
        if not follow or read_state(name) is None:
            return
        time.sleep(2)

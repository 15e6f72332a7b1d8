"""`runner deploy` and `runner app list | stop | logs` on the kubernetes provider: apps that live in
the cluster, callable from any machine that reaches the stack.

A deployed app is one ConfigMap, `runner-app-NAME` (label runner/kind=app), holding its state (the
same shape as a local deploy's state.json, see runner._deploy) and owning every other object of
the app through ownerReferences, so `runner app stop` is one delete and the garbage collector
removes the rest. Per function (and per class: its default instance, or with required parameters
a template with no replicas; `instance_pool` makes other instances from it on first use):

- a worker Deployment, KEDA ScaledObject, TriggerAuthentication and Secrets (`runner._k8s`), named
  after app and function only, so a redeploy updates them in place: a rolling update (a new pod
  before an old one goes; the old one finishes what it holds);
- its spec on the queue under a key that stays the same across versions (APP/FUNCTION), so inputs
  queued during a redeploy are taken by whichever version's pods are up, and none is stranded;
- a CronJob for a schedule, whose pod queues one call (runner._plane.worker, mode "schedule");
- for a web function, a web Deployment and Service. Behind the stack's front door (its
  `web_domain`, see runner._stack), also an HTTPScaledObject: the KEDA HTTP add-on routes
  `http://NAME.WEB_DOMAIN` to the Service and scales the Deployment from `min_containers` (zero
  too) on requests in flight, waking it on the first. Without one, the Deployment keeps at least
  one pod and the endpoint is reachable in-cluster only (`http://NAME.NAMESPACE.svc.cluster.local`).

`Function.from_name` / `Cls.from_name` on any machine read the state and call through the queue
(`lookup_pool`), with the client scaling the Deployment up when it queues work, as in a run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import pickle
import secrets
import sys
import time
import types
from typing import Any

from .exception import InvalidError, NotFoundError

__all__ = ["create_empty", "deploy", "deployed_apps", "follow_logs", "instance_pool", "lookup_pool", "read_state",
           "stop"]

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
    from ._k8s import function_manifests, owned, schedule_manifests, web_host, web_manifests
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
            # The default instance (its parameters' defaults); with required parameters, a template
            # that never runs (no replicas), from which clients make the instances they call.
            from ._cls import Obj

            required = [p for p, decl in cls._params.items() if decl.required]
            defaults = {p: decl.default for p, decl in cls._params.items() if not decl.required}
            t = Obj(cls, defaults)._target()
            if required:
                t.options = dataclasses.replace(t.options, min_containers=0)
            targets.append((cname, None, t))
        for label, f, t in targets:
            w = dataclasses.replace(provider.workload(session, t), function=label, deployed=True)
            keep.add(w.name)
            info = {"key": w.queue_key, "max_inputs": t.max_inputs, "timeout": t.options.timeout,
                    "retries": t.options.retries is not None, "deployment": w.name}
            host = None
            if t.web is not None:
                register(r, W.Keys(w.queue_key), t, APP_ROOT, LEASE, secrets_in_spec=False, web=provider)
                host = web_host(stack, w)
                manifests = web_manifests(stack, w, web_port=t.web_listen(provider)[1], host=host,
                                          concurrency=t.concurrency)
                state["web"][label] = f"http://{host or f'{w.name}.{stack.namespace}.svc.cluster.local'}"
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
            # KEDA (or the front door) owns a running Deployment's replicas; a web function on a
            # stack without a front door has neither, so its count is the deploy's, and a front
            # door's route from an earlier deploy (the stack had one then) goes.
            scaled = t.web is None or host is not None
            if not scaled:
                kube.delete("HTTPScaledObject", w.name)
            for obj in owned(manifests, owner, uid):
                if scaled and obj["kind"] == "Deployment" and kube.get("Deployment", obj["metadata"]["name"]) is not None:
                    obj["spec"].pop("replicas", None)
                kube.apply(obj)
            if f is not None:
                state["functions"][label] = {**info, "gen": f._is_gen(), "web": t.web is not None,
                                             "schedule": schedule.describe() if schedule is not None else None}
            else:
                from ._function import is_generator

                cls = app._classes[label]
                state["classes"][label] = {**info, "params": list(cls._params),
                                           "required": [p for p, d in cls._params.items() if d.required],
                                           "min_containers": cls._options.min_containers,
                                           "methods": {m: {"gen": is_generator(raw)} for m, raw in cls._methods.items()}}
        for cname, info in state["classes"].items():  # instances made from the old default: made again
            spec = r.hgetall(W.Keys(info["key"]).spec)
            for key, blob in _instances(r, name, cname):
                import cloudpickle

                tag = key.split("/", 1)[1]
                _materialize(c, r, info, spec, key, tag, cloudpickle.loads(blob))
                keep.add(_instance_name(name, tag))
    finally:
        r.close()
    _remove_stale(kube, name, keep)
    kube.apply(_owner(stack, name, state))
    provider.close()  # no run of its own to end: its objects belong to the app
    return state


def _remove_stale(kube: Any, name: str, keep: set[str]) -> None:
    """Objects of functions the new version no longer has."""
    from ._k8s._meta import LABEL_APP, label_value
    from ._providers._kube_api import KubeError

    for kind in ("CronJob", "HTTPScaledObject", "ScaledObject", "TriggerAuthentication", "Deployment", "Service",
                 "Secret"):
        try:
            found = kube.list(kind, {LABEL_APP: label_value(name)})
        except KubeError as exc:
            if exc.status != 404:
                raise
            continue  # a kind the cluster does not serve (no HTTP add-on on the stack): none of it to remove
        for obj in found:
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


# ---- class instances with parameters ---------------------------------------------------------------
def instance_pool(app_name: str, cls_name: str, info: dict, params: dict, name: str) -> Any:
    """A pool for `cls_name(**params)` of a deployed app. The deploy made the default instance;
    another instance is made from it on first use (its spec with these parameters, its Deployment,
    ScaledObject and TriggerAuthentication copied under its own name and stream, owned by the app),
    by whichever client calls it first, and kept until the app is stopped or deployed again."""
    import cloudpickle

    from ._plane import _wire as W
    from ._plane._client import _redis_client
    from ._providers._kubernetes import params_tag

    c = _cluster()
    r = _redis_client(c.queue_url())
    try:
        spec = r.hgetall(W.Keys(info["key"]).spec)
        if not spec.get(b"blobs"):
            raise NotFoundError(f"deployed app {app_name!r} has no class {cls_name!r} on the queue; deploy it again")
        missing = [p for p in info.get("required") or [] if p not in params]
        if missing:
            raise InvalidError(f"{cls_name} needs parameter {', '.join(map(repr, missing))}")
        defaults = cloudpickle.loads(pickle.loads(spec[b"blobs"])[1])
        values = {**defaults, **params}
        if values == defaults and not info.get("required"):
            return lookup_pool(app_name, info, name)
        tag = params_tag(cls_name, values)
        key, deployment = f"{app_name}/{tag}", _instance_name(app_name, tag)
        if not r.exists(W.Keys(key).spec) or c.kube.get("Deployment", deployment) is None:
            _materialize(c, r, info, spec, key, tag, values)
    finally:
        r.close()
    return lookup_pool(app_name, {**info, "key": key, "deployment": deployment}, name)


def _instance_name(app_name: str, tag: str) -> str:
    from ._k8s import dns_name

    return dns_name(app_name, tag)


def _materialize(c: Any, r: Any, info: dict, spec: dict, key: str, tag: str, values: dict) -> None:
    """Make (or bring up to date with the default instance) the instance `tag` with `values`."""
    import cloudpickle

    from ._plane import _wire as W

    blobs = pickle.loads(spec[b"blobs"])
    inner = pickle.loads(spec[b"spec"])
    inner["name"] = f"{inner['name'].split('(')[0]}({', '.join(f'{k}={v!r}' for k, v in values.items())})"
    blob = cloudpickle.dumps(values)
    mapping = {**{k.decode(): v for k, v in spec.items()}, "spec": pickle.dumps(inner),
               "blobs": pickle.dumps([blobs[0], blob]), "params": blob}
    r.hset(W.Keys(key).spec, mapping=mapping)
    try:
        r.xgroup_create(W.Keys(key).inputs, W.GROUP, id="0", mkstream=True)
    except Exception as exc:  # noqa: BLE001 - BUSYGROUP: it exists
        if "BUSYGROUP" not in str(exc):
            raise
    name = _instance_name(key.split("/")[0], tag)
    for kind in ("TriggerAuthentication", "Deployment", "ScaledObject"):
        default = c.kube.get(kind, info["deployment"])
        if default is None:
            raise NotFoundError(f"the {kind} of {info['deployment']} is not in the cluster; deploy the app again")
        obj = _retarget(default, name, tag, key, int(info.get("min_containers") or 0))
        if kind == "Deployment" and c.kube.get(kind, name) is not None:
            obj["spec"].pop("replicas", None)  # KEDA's once it runs
        c.kube.apply(obj)


def _retarget(obj: dict, name: str, tag: str, key: str, min_containers: int) -> dict:
    """A copy of the default instance's object `obj` for the instance `tag` (queue key `key`)."""
    from ._k8s._meta import LABEL_FUNCTION, label_value
    from ._plane import _wire as W

    meta = obj["metadata"]
    labels = {**(meta.get("labels") or {}), LABEL_FUNCTION: label_value(tag)}
    out = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "spec": json.loads(json.dumps(obj["spec"])),
           "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                        "ownerReferences": meta.get("ownerReferences") or []}}
    spec = out["spec"]
    if obj["kind"] == "Deployment":
        spec["replicas"] = min_containers
        spec["selector"]["matchLabels"][LABEL_FUNCTION] = label_value(tag)
        template = spec["template"]
        template["metadata"]["labels"][LABEL_FUNCTION] = label_value(tag)
        for container in template["spec"]["containers"]:
            for env in container.get("env") or []:
                if env["name"] == "RUNNER_PLANE_FUNCTION":
                    env["value"] = key
                elif env["name"] == "RUNNER_FUNCTION":
                    env["value"] = tag
    elif obj["kind"] == "ScaledObject":
        spec["scaleTargetRef"]["name"] = name
        spec["minReplicaCount"] = min_containers  # the template of a class with required parameters has 0
        for trigger in spec.get("triggers") or []:
            trigger["metadata"]["stream"] = W.Keys(key).inputs
            if "authenticationRef" in trigger:
                trigger["authenticationRef"]["name"] = name
    return out


def _instances(r: Any, app_name: str, cls_name: str) -> list[tuple[str, bytes]]:
    """(queue key, parameters blob) of every instance of the class made so far."""
    found = []
    for k in r.scan_iter(match=f"rq:f:{app_name}/{cls_name}-*:spec"):
        blob = r.hget(k, "params")
        if blob is not None:
            found.append((k.decode()[len("rq:f:"):-len(":spec")], blob))
    return found


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
    from ._plane._client import _redis_client

    c.kube.delete("ConfigMap", _owner_name(name), propagation="Foreground")
    r = _redis_client(c.queue_url())
    try:  # its functions, classes and the class instances clients made
        keys = {k.decode()[len("rq:f:"):-len(":spec")] for k in r.scan_iter(match=f"rq:f:{name}/*:spec")}
    finally:
        r.close()
    for key in keys | {info["key"] for info in [*state["functions"].values(), *state["classes"].values()]}:
        remove_function(c.queue_url(), key)


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

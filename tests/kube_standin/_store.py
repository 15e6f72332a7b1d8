"""The object store behind the stand-in: typed resources, versions, selectors, watches, deletion and GC.

Everything the API server itself decides lives here, apart from HTTP: server-set metadata (uid,
resourceVersion, creationTimestamp, generation), defaults, validation (422), AlreadyExists (409),
NotFound (404), optimistic concurrency on replace (409 Conflict), finalizers, graceful deletion
and ownerReferences garbage collection with the three propagation policies.

It is thread-safe (one lock): HTTP handlers call it from the server's event loop, the Docker pod
runner and the controllers from their own threads. Watchers and listeners are told of every
change as (type, resource, object) while the lock is held, in resourceVersion order; listeners
must only hand work off (set an event, start a thread), never call back into the store inline.
"""

from __future__ import annotations

import copy
import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

from ._patches import json_patch, merge_patch, strategic_merge_patch
from ._selectors import label_selector_matches, parse_field_selector, parse_label_selector
from ._types import RESOURCES, ApiError, Resource, details_for, now
from ._validation import apply_defaults, immutable_changes, pod_qos, validate

__all__ = ["RESOURCES", "ApiError", "Resource", "Store", "label_selector_matches", "now"]

HISTORY = 20000  # watch events kept for resuming from a resourceVersion


Key = tuple[Resource, str, str]  # (resource, namespace or "", name)
Listener = Callable[[str, Resource, dict], None]


class Store:
    def __init__(self, namespaces: tuple[str, ...] = ("default", "kube-system", "runner")):
        self.lock = threading.RLock()
        self._objects: dict[Key, dict] = {}
        self._rv = 0
        self._history: list[tuple[int, str, Resource, dict]] = []  # (rv, type, resource, object)
        self._listeners: list[Listener] = []
        self._orphaning: set[str] = set()  # uids deleted with propagationPolicy=Orphan
        self._held: set[Key] = set()  # pods whose containers are still stopping (the "kubelet" holds them)
        # Pods are held until the runner confirms their containers are gone; it sets this hook.
        self.on_pod_delete: Callable[[dict, int], bool] | None = None
        self._by_name = {(r.group, r.plural): r for r in RESOURCES}
        ns_res = self.resource("", "namespaces")
        for ns in namespaces:
            self.create(ns_res, "", {"metadata": {"name": ns}})

    # lookups

    def resource(self, group: str, plural: str) -> Resource | None:
        return self._by_name.get((group, plural))

    def resource_of_kind(self, api_version: str, kind: str) -> Resource | None:
        group = api_version.rpartition("/")[0]
        return next((r for r in RESOURCES if r.group == group and r.kind == kind), None)

    def add_listener(self, listener: Listener) -> None:
        with self.lock:
            self._listeners.append(listener)

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, res: Resource, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self._objects.get((res, namespace if res.namespaced else "", name))
            if obj is None:
                raise ApiError.not_found(res, name)
            return copy.deepcopy(obj)

    def find(self, res: Resource, namespace: str, name: str) -> dict | None:
        try:
            return self.get(res, namespace, name)
        except ApiError:
            return None

    def list(self, res: Resource, namespace: str | None = None, label_selector: str = "",
             field_selector: str = "") -> list[dict]:
        return self.list_at(res, namespace, label_selector, field_selector)[0]

    def list_at(self, res: Resource, namespace: str | None = None, label_selector: str = "",
                field_selector: str = "") -> tuple[list[dict], str]:
        """The matching objects and the resourceVersion they are current at (to start a watch from)."""
        labels_ok, fields_ok = self._selectors(label_selector, field_selector)
        with self.lock:
            return [copy.deepcopy(o) for (r, ns, _), o in sorted(self._objects.items(), key=lambda kv: kv[0][1:])
                    if r == res and (namespace is None or ns == namespace)
                    and labels_ok(o["metadata"].get("labels")) and fields_ok(o)], str(self._rv)

    @staticmethod
    def _selectors(label_selector: str, field_selector: str):
        try:
            return parse_label_selector(label_selector), parse_field_selector(field_selector)
        except ValueError as e:
            raise ApiError(400, "BadRequest", str(e)) from None

    # watching

    def watch(self, res: Resource, namespace: str | None, resource_version: str, label_selector: str,
              field_selector: str, deliver: Callable[[dict], None]) -> Callable[[], None]:
        """Replays what the client has not seen, then calls deliver(event) for every later change.

        No resourceVersion (or "0"): synthetic ADDED events for the current state first, as the API
        does. A version older than the kept history: one ERROR event with 410 Expired. Returns the
        function that stops the watch.
        """
        labels_ok, fields_ok = self._selectors(label_selector, field_selector)

        def matches(r: Resource, obj: dict) -> bool:
            return r == res and (namespace is None or obj["metadata"].get("namespace", "") == namespace) and \
                labels_ok(obj["metadata"].get("labels")) and fields_ok(obj)

        def listener(kind: str, r: Resource, obj: dict) -> None:
            if matches(r, obj):
                deliver({"type": kind, "object": obj})

        with self.lock:
            if resource_version in ("", "0"):
                for obj in self.list(res, namespace, label_selector, field_selector):
                    deliver({"type": "ADDED", "object": obj})
            else:
                try:
                    since = int(resource_version)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resource version: {resource_version}") from None
                if self._history and since < self._history[0][0] - 1:
                    deliver({"type": "ERROR", "object": ApiError(
                        410, "Expired", f"too old resource version: {since} ({self._history[0][0]})").status()})
                    return lambda: None
                for rv, kind, r, obj in self._history:
                    if rv > since and matches(r, obj):
                        deliver({"type": kind, "object": copy.deepcopy(obj)})
            self._listeners.append(listener)

        def stop() -> None:
            with self.lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return stop

    def _emit(self, kind: str, res: Resource, obj: dict) -> None:
        self._history.append((self._rv, kind, res, copy.deepcopy(obj)))
        del self._history[:-HISTORY]
        for listener in list(self._listeners):
            listener(kind, res, copy.deepcopy(obj))

    def _bump(self, obj: dict) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    # writes

    def create(self, res: Resource, namespace: str, body: dict, dry_run: bool = False) -> dict:
        obj = copy.deepcopy(body)
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the body of the request was not a JSON object")
        meta = obj.setdefault("metadata", {})
        if meta.get("generateName") and not meta.get("name"):
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        name = meta.get("name") or ""
        with self.lock:
            if res.namespaced:
                namespace = namespace or meta.get("namespace") or "default"
                if meta.get("namespace", namespace) != namespace:
                    raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                   "namespace sent on the request")
                if (self.resource("", "namespaces"), "", namespace) not in self._objects:
                    raise ApiError.not_found(self.resource("", "namespaces"), namespace)
                meta["namespace"] = namespace
            else:
                namespace = ""
                meta.pop("namespace", None)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            apply_defaults(res, obj)
            causes = validate(res, obj)
            if causes:
                raise ApiError.invalid(res, name, causes)
            if (res, namespace, name) in self._objects:
                raise ApiError.already_exists(res, name)
            for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(key, None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            if res.status_subresource and res.plural != "namespaces":
                obj["status"] = {"phase": "Pending", "qosClass": pod_qos(obj)} if res.plural == "pods" else {}
            if dry_run:
                return obj
            self._bump(obj)
            self._objects[(res, namespace, name)] = obj
            self._emit("ADDED", res, obj)
            owners = [ref.get("uid") for ref in meta.get("ownerReferences") or []]
            if owners and not any(self._by_uid(uid) for uid in owners):
                # The GC deletes dependents whose owners are all gone (or never existed).
                threading.Thread(target=self._delete_quietly, args=(res, namespace, name), daemon=True).start()
            return copy.deepcopy(obj)

    def replace(self, res: Resource, namespace: str, name: str, body: dict, subresource: str = "",
                dry_run: bool = False) -> dict:
        with self.lock:
            old = self.get(res, namespace, name)
            new = copy.deepcopy(body)
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError.conflict(res, name)
            for key in ("uid", "creationTimestamp", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds",
                        "generation", "name"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
                else:
                    meta.pop(key, None)
            new["apiVersion"], new["kind"] = res.api_version, res.kind
            if subresource == "status":
                new = old | {"status": new.get("status", {})}
            elif res.status_subresource:
                new["status"] = old.get("status", {})
            apply_defaults(res, new)
            causes = validate(res, new) + immutable_changes(res, old, new)
            if causes:
                raise ApiError.invalid(res, name, causes)
            if new.get("spec") != old.get("spec"):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            if dry_run:
                return new
            return self._store(res, new)

    def patch(self, res: Resource, namespace: str, name: str, content_type: str, patch: Any,
              subresource: str = "", dry_run: bool = False) -> dict:
        with self.lock:
            if content_type.startswith("application/apply-patch"):
                current = self.find(res, namespace, name)
                if current is None:
                    return self.create(res, namespace, patch, dry_run=dry_run)
                merged = merge_patch(current, patch)
            else:
                current = self.get(res, namespace, name)
                if content_type.startswith("application/json-patch+json"):
                    if not isinstance(patch, list):
                        raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type "
                                       "jsonpatch.Patch")
                    merged = json_patch(current, patch)
                elif content_type.startswith("application/merge-patch+json"):
                    merged = merge_patch(current, patch)
                elif content_type.startswith("application/strategic-merge-patch+json"):
                    merged = strategic_merge_patch(current, patch)
                else:
                    raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                                   "format - accepted media types include: application/json-patch+json, "
                                   "application/merge-patch+json, application/apply-patch+yaml")
            merged.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            return self.replace(res, namespace, name, merged, subresource=subresource, dry_run=dry_run)

    def update_status(self, res: Resource, namespace: str, name: str, status: dict) -> dict | None:
        """For controllers and the pod runner: set status, no validation; None if the object is gone."""
        with self.lock:
            obj = self._objects.get((res, namespace, name))
            if obj is None:
                return None
            if obj.get("status") == status:
                return copy.deepcopy(obj)
            obj["status"] = copy.deepcopy(status)
            self._bump(obj)
            self._emit("MODIFIED", res, obj)
            return copy.deepcopy(obj)

    def bind_pod(self, namespace: str, name: str, node: str) -> None:
        """The scheduler's write: spec.nodeName (pod specs are otherwise immutable through the API)."""
        with self.lock:
            obj = self._objects.get((self.resource("", "pods"), namespace, name))
            if obj is not None and not obj["spec"].get("nodeName"):
                obj["spec"]["nodeName"] = node
                self._store(self.resource("", "pods"), obj)

    def _store(self, res: Resource, obj: dict) -> dict:
        meta = obj["metadata"]
        key = (res, meta.get("namespace", ""), meta["name"])
        self._bump(obj)
        self._objects[key] = obj
        self._emit("MODIFIED", res, obj)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and key not in self._held:
            self._remove(key)
        return copy.deepcopy(obj)

    # deletion

    def delete(self, res: Resource, namespace: str, name: str, grace: int | None = None,
               propagation: str | None = None, preconditions: dict | None = None, dry_run: bool = False) -> dict:
        """Returns the object as it stands after the call (it may still be terminating)."""
        with self.lock:
            namespace = namespace if res.namespaced else ""
            key = (res, namespace, name)
            obj = self._objects.get(key)
            if obj is None:
                raise ApiError.not_found(res, name)
            meta = obj["metadata"]
            for field in ("uid", "resourceVersion"):
                want = (preconditions or {}).get(field)
                if want and want != meta.get(field):
                    raise ApiError(409, "Conflict", f"Precondition failed: {field}: {want}, "
                                   f"object {field}: {meta.get(field)}", details_for(res, name))
            if dry_run:
                return copy.deepcopy(obj)
            propagation = propagation or "Background"
            if propagation not in ("Background", "Foreground", "Orphan"):
                raise ApiError(400, "BadRequest", f"unsupported propagation policy: {propagation}")
            if res.plural == "namespaces":
                for other in list(self._objects):
                    if other[0].namespaced and other[1] == name:
                        self.delete(other[0], other[1], other[2], grace=grace)
            if propagation == "Orphan":
                self._orphaning.add(meta["uid"])
            if meta.get("deletionTimestamp"):  # already terminating: only a shorter grace changes anything
                if res.plural == "pods" and grace is not None and self.on_pod_delete:
                    self.on_pod_delete(copy.deepcopy(obj), grace)
                return copy.deepcopy(obj)
            if propagation == "Foreground" and self._dependents(meta["uid"]):
                meta.setdefault("finalizers", []).append("foregroundDeletion")
            if res.plural == "pods":
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace
                meta["deletionGracePeriodSeconds"] = grace
                if self.on_pod_delete and self.on_pod_delete(copy.deepcopy(obj), grace):
                    self._held.add(key)
            if not meta.get("finalizers") and key not in self._held:  # gone at once: one DELETED event
                result = copy.deepcopy(obj)
                self._remove(key)
                return result
            meta["deletionTimestamp"] = now()
            result = self._store(res, obj)
            if "foregroundDeletion" in meta["finalizers"] if meta.get("finalizers") else False:
                for dep_res, dep in self._dependents(meta["uid"]):
                    self._delete_dependent(dep_res, dep, "Foreground")
            return result

    def release_pod(self, namespace: str, name: str) -> None:
        """The pod runner is done with a terminating pod: its containers are gone."""
        with self.lock:
            key = (self.resource("", "pods"), namespace, name)
            self._held.discard(key)
            obj = self._objects.get(key)
            if obj is not None and not obj["metadata"].get("finalizers"):
                self._remove(key)

    def _remove(self, key: Key) -> None:
        obj = self._objects.pop(key, None)
        if obj is None:
            return
        self._bump(obj)
        self._emit("DELETED", key[0], obj)
        uid = obj["metadata"]["uid"]
        orphan = uid in self._orphaning
        self._orphaning.discard(uid)
        for dep_res, dep in self._dependents(uid):
            if orphan:
                dep["metadata"]["ownerReferences"] = [r for r in dep["metadata"]["ownerReferences"]
                                                      if r.get("uid") != uid]
                self._store(dep_res, dep)
            else:
                self._delete_dependent(dep_res, dep, "Background")
        for ref in obj["metadata"].get("ownerReferences") or []:  # a foreground deletion waiting on this one
            owner = self._by_uid(ref.get("uid"))
            if owner and "foregroundDeletion" in (owner[1]["metadata"].get("finalizers") or []) \
                    and not self._dependents(ref["uid"]):
                owner[1]["metadata"]["finalizers"].remove("foregroundDeletion")
                self._store(*owner)

    def _delete_dependent(self, res: Resource, obj: dict, propagation: str) -> None:
        meta = obj["metadata"]
        remaining = [r for r in meta.get("ownerReferences") or [] if self._by_uid(r.get("uid"))
                     and not self._by_uid(r.get("uid"))[1]["metadata"].get("deletionTimestamp")]
        if not remaining:
            self.delete(res, meta.get("namespace", ""), meta["name"], propagation=propagation)

    def _delete_quietly(self, res: Resource, namespace: str, name: str) -> None:
        try:
            self.delete(res, namespace, name)
        except ApiError:
            pass

    def _by_uid(self, uid: str | None) -> tuple[Resource, dict] | None:
        for (res, _, _), obj in self._objects.items():
            if obj["metadata"]["uid"] == uid:
                return res, obj
        return None

    def _dependents(self, uid: str) -> list[tuple[Resource, dict]]:
        return [(res, obj) for (res, _, _), obj in list(self._objects.items())
                if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])]

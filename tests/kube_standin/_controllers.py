"""The stand-in's controller manager: Deployments own ReplicaSets own Pods, Jobs own Pods.

Deliberately small. A Deployment gets one ReplicaSet per pod-template hash (`<name>-<hash>`, the
pod-template-hash label, controller ownerReferences) and older ReplicaSets are scaled to 0 at once
(a Recreate, not a rolling update). A ReplicaSet keeps `replicas` live pods (not terminating, not
Succeeded/Failed). A Job keeps `parallelism` pods running until `completions` succeed, or fails
after `backoffLimit` failed pods; `activeDeadlineSeconds` and `ttlSecondsAfterFinished` are
honoured. Status (replicas, readyReplicas, availableReplicas, conditions) is written back.
StatefulSets and CronJobs are only stored.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

from ._store import ApiError, Store, now

__all__ = ["Controllers"]

WATCHED = {"deployments", "replicasets", "jobs", "pods"}


class Controllers:
    def __init__(self, store: Store):
        self.store = store
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._job_started: dict[str, float] = {}  # job uid -> when this controller first saw it
        self._job_done: dict[str, float] = {}  # job uid -> when it finished (for ttlSecondsAfterFinished)
        store.add_listener(lambda kind, res, obj: self._wake.set() if res.plural in WATCHED else None)
        self.thread = threading.Thread(target=self._loop, name="kube-standin-controllers", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            for step in (self._deployments, self._replicasets, self._jobs):
                try:
                    step()
                except ApiError:
                    self._wake.set()  # raced with a client write; look again
                    time.sleep(0.05)

    def _res(self, plural: str):
        group = {"deployments": "apps", "replicasets": "apps", "jobs": "batch"}.get(plural, "")
        return self.store.resource(group, plural)

    def _owned(self, plural: str, owner: dict) -> list[dict]:
        uid = owner["metadata"]["uid"]
        return [o for o in self.store.list(self._res(plural), owner["metadata"]["namespace"])
                if any(r.get("uid") == uid and r.get("controller") for r in o["metadata"].get("ownerReferences") or [])]

    @staticmethod
    def _ref(owner: dict) -> dict:
        return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}

    def _live_pods(self, owner: dict) -> tuple[list[dict], list[dict]]:
        pods = self._owned("pods", owner)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")
                and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        return pods, live

    # Deployments

    def _deployments(self) -> None:
        rs_res = self._res("replicasets")
        for d in self.store.list(self._res("deployments")):
            if d["metadata"].get("deletionTimestamp"):
                continue
            ns, spec = d["metadata"]["namespace"], d["spec"]
            template = spec["template"]
            digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
            digest = "".join("bcdfghjklmnpqrstvwxz2456789"[int(c, 16)] for c in digest)
            name = f"{d['metadata']['name']}-{digest}"[:253]
            owned = self._owned("replicasets", d)
            current = next((r for r in owned if r["metadata"]["name"] == name), None)
            replicas = spec.get("replicas", 1)
            if current is None:
                labels = dict(template.get("metadata", {}).get("labels") or {}) | {"pod-template-hash": digest}
                selector = json.loads(json.dumps(spec["selector"]))
                selector.setdefault("matchLabels", {})["pod-template-hash"] = digest
                tmpl = json.loads(json.dumps(template))
                tmpl.setdefault("metadata", {})["labels"] = labels
                self.store.create(rs_res, ns, {"metadata": {"name": name, "labels": labels,
                                                            "ownerReferences": [self._ref(d)]},
                                               "spec": {"replicas": replicas, "selector": selector,
                                                        "template": tmpl}})
            elif current["spec"].get("replicas") != replicas:
                current["spec"]["replicas"] = replicas
                self.store.replace(rs_res, ns, name, current)
            for old in owned:
                if old["metadata"]["name"] != name and old["spec"].get("replicas"):
                    old["spec"]["replicas"] = 0
                    self.store.replace(rs_res, ns, old["metadata"]["name"], old)
            owned = self._owned("replicasets", d)
            total = sum(r.get("status", {}).get("replicas", 0) for r in owned)
            ready = sum(r.get("status", {}).get("readyReplicas", 0) for r in owned)
            updated = next((r.get("status", {}).get("replicas", 0) for r in owned if r["metadata"]["name"] == name), 0)
            available = ready >= replicas
            status = {"observedGeneration": d["metadata"].get("generation", 1), "replicas": total,
                      "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
                      "unavailableReplicas": max(0, replicas - ready),
                      "conditions": [_cond(d, "Available", available, "MinimumReplicasAvailable" if available else
                                           "MinimumReplicasUnavailable"),
                                     _cond(d, "Progressing", True, "NewReplicaSetAvailable" if available else
                                           "ReplicaSetUpdated")]}
            status = {k: v for k, v in status.items() if v != 0 or k == "observedGeneration"}
            self.store.update_status(self._res("deployments"), ns, d["metadata"]["name"], status)

    # ReplicaSets

    def _replicasets(self) -> None:
        pod_res = self._res("pods")
        for rs in self.store.list(self._res("replicasets")):
            if rs["metadata"].get("deletionTimestamp"):
                continue
            ns, spec = rs["metadata"]["namespace"], rs["spec"]
            _, live = self._live_pods(rs)
            want = spec.get("replicas", 1)
            for _ in range(want - len(live)):
                self._create_pod(rs, spec["template"], f"{rs['metadata']['name']}-")
            if len(live) > want:
                not_ready = sorted(live, key=lambda p: (_ready(p), p["metadata"]["creationTimestamp"]))
                for pod in not_ready[:len(live) - want]:
                    self.store.delete(pod_res, ns, pod["metadata"]["name"])
            _, live = self._live_pods(rs)
            ready = sum(_ready(p) for p in live)
            status = {"replicas": len(live), "fullyLabeledReplicas": len(live), "readyReplicas": ready,
                      "availableReplicas": ready, "observedGeneration": rs["metadata"].get("generation", 1)}
            self.store.update_status(self._res("replicasets"), ns, rs["metadata"]["name"],
                                     {k: v for k, v in status.items() if v or k in ("replicas", "observedGeneration")})

    def _create_pod(self, owner: dict, template: dict, prefix: str) -> None:
        meta = json.loads(json.dumps(template.get("metadata") or {}))
        meta.update(generateName=prefix, ownerReferences=[self._ref(owner)])
        meta.pop("name", None)
        self.store.create(self._res("pods"), owner["metadata"]["namespace"],
                          {"metadata": meta, "spec": json.loads(json.dumps(template["spec"]))})

    # Jobs

    def _jobs(self) -> None:
        job_res, pod_res = self._res("jobs"), self._res("pods")
        for job in self.store.list(job_res):
            meta, spec, status = job["metadata"], job["spec"], dict(job.get("status") or {})
            if meta.get("deletionTimestamp"):
                continue
            ns, uid = meta["namespace"], meta["uid"]
            pods, live = self._live_pods(job)
            succeeded = sum(p.get("status", {}).get("phase") == "Succeeded" for p in pods)
            failed = sum(p.get("status", {}).get("phase") == "Failed" for p in pods)
            finished = next((c["type"] for c in status.get("conditions", []) if c["type"] in ("Complete", "Failed")
                             and c["status"] == "True"), None)
            if finished:
                done_at = self._job_done.setdefault(uid, time.time())
                ttl = spec.get("ttlSecondsAfterFinished")
                if ttl is not None and time.time() - done_at >= ttl:
                    self.store.delete(job_res, ns, meta["name"], propagation="Background")
                continue
            started = self._job_started.setdefault(uid, time.time())
            status.setdefault("startTime", now())
            completions, parallelism = spec.get("completions", 1), spec.get("parallelism", 1)
            outcome = None
            if succeeded >= completions:
                outcome = ("Complete", None, None)
            elif failed > spec.get("backoffLimit", 6):
                outcome = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            elif spec.get("activeDeadlineSeconds") and time.time() - started > spec["activeDeadlineSeconds"]:
                outcome = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            if outcome:
                for pod in live:
                    self.store.delete(pod_res, ns, pod["metadata"]["name"])
                kind, reason, message = outcome
                status["conditions"] = [_cond(job, kind, True, reason, message)]
                if kind == "Complete":
                    status["completionTime"] = now()
                self._job_done[uid] = time.time()
                live = []
            else:
                for _ in range(min(parallelism, completions - succeeded) - len(live)):
                    self._create_pod(job, spec["template"], f"{meta['name']}-")
                live = self._live_pods(job)[1]
            status.update(active=len(live), succeeded=succeeded, failed=failed, ready=sum(_ready(p) for p in live))
            self.store.update_status(job_res, ns, meta["name"], {k: v for k, v in status.items() if v != 0})


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _cond(obj: dict, kind: str, ok: bool, reason: str | None = None, message: str | None = None) -> dict:
    old = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)
    status = "True" if ok else "False"
    stamp = old["lastTransitionTime"] if old and old["status"] == status else now()
    cond = {"type": kind, "status": status, "lastTransitionTime": stamp, "lastUpdateTime": stamp}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond

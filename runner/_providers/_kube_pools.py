"""The pools of a kubernetes run: what the call API and the front door use, over Deployments.

- `KubePool`: a queue-fed function. Its Deployment, ScaledObject and Secrets are applied (owned by
  the run), its spec registered on the queue, and its calls go through `QueuePool`. The pool adds
  the client's share of scaling: when more inputs are outstanding than the pods asked for can
  take, it raises the Deployment's replicas at once (within `max_containers`), so a cold start does
  not wait for KEDA's next poll; KEDA then keeps or lowers that count from the queue's depth. While
  inputs wait and no pod is running, a watchdog reads the pods' status, so an image that cannot be
  pulled, a container that keeps crashing or a GPU no node has fails the waiting inputs with the
  reason instead of leaving them queued for ever.
- `KubeWebPool`: a web function. The front door's slots are pods: a request with no free slot
  raises the web Deployment's replicas and waits for a ready pod, reached through a port-forward;
  a pod idle past `scaledown_window` is scaled away, down to `min_containers`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .._output import output
from .._plane import QueuePool
from .._plane._client import _redis_client, register
from .._plane import _wire as W
from .._session import LOCAL_ERR
from .._webpool import WebContainer, WebPool
from ..exception import ExecutionError, ProviderError
from ._kubernetes import APP_ROOT, START_PATIENCE, pod_problem

__all__ = ["KubePool", "KubeWebPool"]

LEASE = 10.0
LIST_EVERY = 1.0  # seconds between a web pool's looks at its pods


class KubePool(QueuePool):
    def __init__(self, cluster: Any, session: Any, target: Any, *, key: str, deployment: str,
                 selector: dict[str, str], max_containers: int, min_containers: int = 0,
                 apply: Any = None, registered: bool = False):
        self.kube, self.deployment, self.selector = cluster.kube, deployment, selector
        self.max_containers, self.min_containers = max_containers, min_containers
        super().__init__(target, cluster.queue_url(), key=key, app_root=APP_ROOT, lease=LEASE,
                         secrets_in_spec=False, registered=registered)
        if session is not None:
            self.session = session  # FunctionCall keeps spawned calls on the run's session
        try:
            if apply is not None:
                apply()
        except BaseException:
            super().close()
            raise
        self._asked = min_containers
        self._wake = threading.Event()
        self._closed = False
        threading.Thread(target=self._scaler, name=f"runner-kube-scale-{deployment}", daemon=True).start()

    @classmethod
    def for_run(cls, provider: Any, session: Any, target: Any, w: Any) -> KubePool:
        """The pool of a function of this run: its objects applied (owned by the run), its spec registered."""
        from .._k8s import function_manifests, labels

        return cls(provider.cluster, session, target, key=w.queue_key, deployment=w.name,
                   selector=labels(w.app, w.function, w.run_id, "worker"), max_containers=w.options.max_containers,
                   min_containers=w.options.min_containers,
                   apply=lambda: provider.apply_owned(session, function_manifests(provider.stack, w)))

    @classmethod
    def lookup(cls, cluster: Any, target: Any, key: str, deployment: str, app: str) -> KubePool:
        """A deployed function's pool, from any process: its spec is on the queue already."""
        from .._k8s._meta import selector

        dep = cluster.kube.get("Deployment", deployment) or {}
        function = ((dep.get("metadata") or {}).get("labels") or {}).get("runner/function", "")
        maximum = next((o["spec"].get("maxReplicaCount", 1) for o in [cluster.kube.get("ScaledObject", deployment)]
                        if o), 1)
        return cls(cluster, None, target, key=key, deployment=deployment, selector=selector(app, function, "worker"),
                   max_containers=maximum, registered=True)

    # ---- the call API ------------------------------------------------------------------------
    def submit(self, inputs: list) -> None:
        super().submit(inputs)
        self._wake.set()

    def tick(self, now: float) -> float | None:
        return None

    def warm(self) -> bool | None:
        return sum(map(_ready, self.kube.pods(self.selector))) >= self.min_containers

    def close(self) -> list:
        self._closed = True
        self._wake.set()
        super().close()
        return []

    # ---- scaling and the watchdog --------------------------------------------------------------
    def _wanted(self) -> int:
        with self.lock:
            load = sum(i.weight if i.kind != "chunk" else 1 for i in self.live.values())
        per = max(1, self.target.max_inputs)
        return min(self.max_containers, -(-load // per))

    def _scaler(self) -> None:
        stuck_since: float | None = None
        last_scale = 0.0
        while not self._closed:
            self._wake.wait(1.0)
            self._wake.clear()
            if self._closed:
                return
            try:
                wanted = self._wanted()
                now = time.monotonic()
                if wanted > self._asked or (wanted and now - last_scale > 15):
                    dep = self.kube.get("Deployment", self.deployment) or {}
                    current = (dep.get("spec") or {}).get("replicas") or 0
                    if wanted > current:
                        self.kube.scale(self.deployment, wanted)
                    self._asked, last_scale = max(wanted, current), now
                if not wanted:
                    self._asked = min(self._asked, self.min_containers)
                    stuck_since = None
                    continue
                pods = self.kube.pods(self.selector)
                problems = [pr for pr in map(pod_problem, pods) if pr]
                if not problems or any((p.get("status") or {}).get("phase") == "Running" and not pod_problem(p)
                                       for p in pods):
                    stuck_since = None
                    continue
                stuck_since = stuck_since or now
                if now - stuck_since > min(START_PATIENCE, 10.0 if _fatal(problems) else START_PATIENCE):
                    log = self.kube.log(pods[0]["metadata"]["name"], tail=20).strip()
                    self._fail_waiting(f"no pod of {self.name} could start: {problems[0]}"
                                       + (f"; its log ends:\n{log}" if log else ""))
                    stuck_since = None
            except ProviderError as exc:
                output().notice(f"runner: {self.name}: {exc}")
                time.sleep(2)

    def _fail_waiting(self, why: str) -> None:
        with self.lock:
            waiting = list(self.live.values())
            self.live.clear()
        err = ExecutionError(why)
        for inp in waiting:
            inp.sink.deliver(inp, LOCAL_ERR, err, None)


def _fatal(problems: list[str]) -> bool:
    """Problems that do not go away by waiting (as opposed to, say, a node being added)."""
    return any(k in p for p in problems for k in ("ErrImage", "InvalidImageName", "CrashLoopBackOff",
                                                    "CreateContainer", "failed"))


class KubeWebPool(WebPool):
    def __init__(self, provider: Any, session: Any, target: Any, label: str, w: Any):
        from .._k8s import labels, web_manifests

        self.provider, self.kube, self.w = provider, provider.kube, w
        self.selector = labels(w.app, w.function, w.run_id, "web")
        self.port = target.web_listen(provider)[1]
        self.keys = W.Keys(w.queue_key)
        self.r = _redis_client(provider.cluster.queue_url())
        register(self.r, self.keys, target, APP_ROOT, LEASE, secrets_in_spec=False, web=provider)
        provider.apply_owned(session, web_manifests(provider.stack, w, web_port=self.port, replicas=0))
        self.replicas = 0
        self.forwards: dict[str, Any] = {}
        self._listed = 0.0  # when the pods were last listed (tick)
        super().__init__(session, target, label)

    def _container(self, number: int) -> WebContainer:
        """One more pod: the Deployment's replicas raised by one, then a ready pod not yet in use,
        reached through a port-forward of its own."""
        with self.cond:
            self.replicas += 1
            replicas = self.replicas
        self.kube.scale(self.w.name, replicas)
        end = time.monotonic() + START_PATIENCE
        while True:
            if self.session.closed:
                raise ExecutionError("the app has stopped")
            pods = self.kube.pods(self.selector)
            serving = {k.decode() for k in self.r.hkeys(self.keys.ready)}  # their web server is up
            with self.cond:
                taken = {c.handle for c in self.containers} | set(self.forwards)
                ready = [p for p in pods if p["metadata"]["name"] not in taken and _ready(p)
                         and p["metadata"]["name"] in serving]
                if ready:
                    name = ready[0]["metadata"]["name"]
                    self.forwards[name] = self.kube.port_forward(name, self.port)
                    break
            problems = [pr for pr in map(pod_problem, pods) if pr]
            if problems and _fatal(problems) or time.monotonic() > end:
                with self.cond:
                    self.replicas -= 1
                why = problems[0] if problems else f"no pod became ready within {START_PATIENCE:g}s"
                raise ExecutionError(f"{self.name}: {why}")
            time.sleep(0.1)
        return WebContainer(name, None, self.forwards[name].address, number)

    def _retire(self, c: WebContainer) -> None:
        pf = self.forwards.pop(c.handle, None)
        if pf is not None:
            pf.close()

    def tick(self, now: float) -> float | None:
        """Drop pods that went away (listed at most every LIST_EVERY seconds, not at every one of
        the session's ticks); scale away pods idle past scaledown_window, down to min_containers."""
        due = None
        gone, idle = [], []
        live = None
        if now - self._listed >= LIST_EVERY:
            self._listed = now
            try:
                live = {p["metadata"]["name"] for p in self.kube.pods(self.selector) if _ready(p)}
            except ProviderError:
                pass
        with self.cond:
            for c in list(self.containers) if live is not None else []:
                if c.handle not in live:
                    self.containers.remove(c)
                    gone.append(c)
            spare = len(self.containers) - self.opts.min_containers
            for c in sorted((c for c in self.containers if c.inflight == 0), key=lambda c: c.idle_since)[:max(0, spare)]:
                when = c.idle_since + self.opts.scaledown_window
                if when <= now:
                    self.containers.remove(c)
                    idle.append(c)
                else:
                    due = when if due is None else min(due, when)
            self.replicas = max(0, self.replicas - len(gone) - len(idle))
            replicas = self.replicas
        for c in gone + idle:
            self._retire(c)
        if idle:
            for c in idle:  # the idle pod is the one to go, not a busy one
                self.kube.patch("Pod", c.handle, {"metadata": {"annotations": {
                    "controller.kubernetes.io/pod-deletion-cost": "-1000"}}})
            self.kube.scale(self.w.name, replicas)
            for c in idle:
                self.kube.delete("Pod", c.handle)
        return due

    def close(self) -> list:
        with self.cond:
            self.containers.clear()
            forwards, self.forwards = self.forwards, {}
            self.cond.notify_all()
        for pf in forwards.values():
            pf.close()
        self.r.close()
        return []


def _ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
        return False
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return conds.get("Ready", "True") == "True"

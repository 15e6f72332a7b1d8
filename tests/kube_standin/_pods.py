"""The stand-in's kubelet: each Pod in the store runs as Docker containers on the local daemon.

One thread per pod walks the pod's life: schedule (nodeSelector and extended resources against the
one fake node), volumes, a pause container that owns the pod's network namespace (so the pod's
containers share localhost and /etc/hosts, as in Kubernetes; with loopback services it also runs
their relay, see _loopback), init containers in order, native sidecars
(initContainers with restartPolicy: Always) left running, then the main containers, whose state
is polled into status (phase, conditions, init/containerStatuses) until the pod ends. Deletion
runs preStop hooks, stops the main containers with `docker stop -t <grace>` (SIGTERM, then
SIGKILL when the grace period is over), then the sidecars, then releases the pod in the store.

Every container and volume carries the label `runner.kube-standin=<instance>`, and shutdown()
removes them all. Nothing here ever reads or reports a container's bridge IP: the pod IP is not
set, so callers reach containers only through the API (exec, logs, port-forward into the pause
container's namespace).
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from typing import Any

import docker
import docker.errors
from docker.types import Mount

from ._loopback import READY, LoopbackServices
from ._podrefs import ConfigError, PodRefs, expand, parse_quantity
from ._store import ApiError, Store, label_selector_matches, now

__all__ = ["LABEL", "PodRunner", "remove_labelled"]

LABEL = "runner.kube-standin"
PAUSE_COMMAND = ["sleep", "infinity"]
STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage", "hugepages-2Mi", "hugepages-1Gi"}


def _docker_time(text: str | None) -> str | None:
    if not text or text.startswith("0001-"):
        return None
    return text.split(".")[0].rstrip("Z") + "Z"


class PodRunner:
    def __init__(self, store: Store, instance: str, node: dict, client: docker.DockerClient | None = None,
                 pause_image: str = "python:3.11-slim-bookworm", services: LoopbackServices | None = None):
        self.store, self.instance, self.node, self.pause_image = store, instance, node, pause_image
        self.services = services or LoopbackServices({}, "")
        self.docker = client or docker.from_env()
        self._lives: dict[tuple[str, str], _PodLife] = {}
        self._lock = threading.Lock()
        self._closed = False
        store.on_pod_delete = self._on_delete
        store.add_listener(self._on_event)

    # store hooks: hand off only

    def _on_event(self, kind: str, res, obj: dict) -> None:
        if res.plural != "pods" or kind != "ADDED" or self._closed:
            return
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        life = _PodLife(self, obj)
        with self._lock:
            self._lives[key] = life
        life.thread.start()

    def _on_delete(self, pod: dict, grace: int) -> bool:
        with self._lock:
            life = self._lives.get((pod["metadata"]["namespace"], pod["metadata"]["name"]))
        if life is None:
            return False
        life.terminate(grace)
        return True

    def forget(self, life: _PodLife) -> None:
        with self._lock:
            if self._lives.get(life.key) is life:
                del self._lives[life.key]

    # for the server's logs and exec

    def container(self, namespace: str, pod: str, container: str | None, *, running: bool) -> tuple[str, str]:
        """(docker id, container name) of a pod's container; ApiError 400 as the API words it when there is none."""
        pod_obj = self.store.get(self.store.resource("", "pods"), namespace, pod)
        spec = pod_obj["spec"]
        names = [c["name"] for c in spec["containers"]]
        all_names = names + [c["name"] for c in spec.get("initContainers") or []]
        if not container:
            default = (pod_obj["metadata"].get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
            if default or len(names) == 1:
                container = default or names[0]
            else:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {pod}, "
                               f"choose one of: [{' '.join(names)}]")
        if container not in all_names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod}")
        with self._lock:
            life = self._lives.get((namespace, pod))
        cid = life.ids.get(container) if life else None
        if cid is None:
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{pod}" is waiting to start: '
                           "ContainerCreating")
        if running:
            state = self.docker.api.inspect_container(cid)["State"]
            if not state.get("Running"):
                raise ApiError(400, "BadRequest", f"unable to upgrade connection: container not found "
                               f'("{container}")')
        return cid, container

    def sandbox(self, namespace: str, pod: str) -> str:
        """The docker id of a Running pod's pause container, whose network namespace a port-forward enters."""
        phase = (self.store.get(self.store.resource("", "pods"), namespace, pod).get("status") or {}).get("phase")
        with self._lock:
            life = self._lives.get((namespace, pod))
        if phase != "Running" or life is None or life.pause_id is None:
            raise ApiError(400, "BadRequest", f"unable to upgrade connection: pod {pod} is not running "
                           f"(phase {phase or 'Pending'})")
        return life.pause_id

    # shutdown

    def shutdown(self) -> None:
        """Stop every pod now and remove every container and volume this instance made."""
        self._closed = True
        with self._lock:
            lives = list(self._lives.values())
        for life in lives:
            life.terminate(0)
        for life in lives:
            life.thread.join(timeout=15)
        remove_labelled(self.docker, f"{LABEL}={self.instance}")


def remove_labelled(client: docker.DockerClient, label: str) -> None:
    for c in client.containers.list(all=True, filters={"label": label}):
        try:
            c.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
    for v in client.volumes.list(filters={"label": label}):
        try:
            v.remove(force=True)
        except docker.errors.APIError:
            pass


class _Deleted(Exception):
    pass


class _PodLife:
    """One pod, from scheduling to the removal of its containers."""

    def __init__(self, runner: PodRunner, pod: dict):
        self.runner, self.pod = runner, pod
        self.docker = runner.docker
        meta = pod["metadata"]
        self.key = (meta["namespace"], meta["name"])
        self.spec = pod["spec"]
        self.refs = PodRefs(runner.store, pod, runner.node["metadata"]["name"])
        self.ids: dict[str, str] = {}  # container name -> docker id
        self.volumes: dict[str, dict] = {}  # pod volume name -> docker mount spec
        self.pause_id: str | None = None
        self.status: dict = dict(pod.get("status") or {})
        self.waiting: dict[str, dict] = {}  # container name -> waiting state while not created
        self.deleting = threading.Event()
        self.grace = 30
        self.started_at: float | None = None
        self._restarts: dict[str, int] = {}  # init container name -> restarts done by this runner
        self.thread = threading.Thread(target=self._run, name=f"pod-{meta['name']}", daemon=True)
        self.labels = {LABEL: runner.instance, f"{LABEL}.pod": f"{meta['namespace']}/{meta['name']}",
                       f"{LABEL}.uid": meta["uid"]}

    def terminate(self, grace: int) -> None:
        self.grace = min(self.grace, max(0, int(grace))) if self.deleting.is_set() else max(0, int(grace))
        self.deleting.set()

    def _sleep(self, seconds: float) -> None:
        if self.deleting.wait(seconds):
            raise _Deleted()

    # the life

    def _run(self) -> None:
        try:
            self._schedule()
            self._prepare_volumes()
            self._start_pause()
            self._run_init_containers()
            self._start_main_containers()
            self._monitor()
            self.deleting.wait()
        except _Deleted:
            pass
        except Exception as e:  # a stand-in bug or a daemon error: show it on the pod, as a kubelet would
            self._set_status(phase="Failed", reason="StandinError", message=f"{type(e).__name__}: {e}")
            self.deleting.wait()
        finally:
            self._stop_all()
            self._cleanup()
            self.runner.forget(self)
            self.runner.store.release_pod(*self.key)

    def _publish(self) -> None:
        res = self.runner.store.resource("", "pods")
        self.runner.store.update_status(res, self.key[0], self.key[1], self.status)

    def _set_status(self, **fields: Any) -> None:
        self.status.update(fields)
        self._publish()

    def _condition(self, kind: str, ok: bool, reason: str | None = None, message: str | None = None) -> None:
        conditions = [c for c in self.status.get("conditions", []) if c["type"] != kind]
        cond = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None,
                "lastTransitionTime": now()}
        old = next((c for c in self.status.get("conditions", []) if c["type"] == kind), None)
        if old and old["status"] == cond["status"]:
            cond["lastTransitionTime"] = old["lastTransitionTime"]
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        order = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        self.status["conditions"] = sorted(conditions + [cond], key=lambda c: order.index(c["type"])
                                           if c["type"] in order else 99)

    def _schedule(self) -> None:
        node = self.runner.node
        labels = node["metadata"].get("labels", {})
        allocatable = node["status"]["allocatable"]
        missing = [k for k, v in (self.spec.get("nodeSelector") or {}).items() if labels.get(k) != v]
        wanted = set()
        for c in self.spec["containers"] + (self.spec.get("initContainers") or []):
            res = c.get("resources") or {}
            wanted |= {k for k in list(res.get("limits") or {}) + list(res.get("requests") or {})
                       if k not in STANDARD_RESOURCES}
        lacking = [k for k in sorted(wanted) if parse_quantity(allocatable.get(k, 0)) <= 0]
        if missing or lacking:
            why = "1 node(s) didn't match Pod's node affinity/selector" if missing else \
                ", ".join(f"1 Insufficient {k}" for k in lacking)
            self._condition("PodScheduled", False, "Unschedulable", f"0/1 nodes are available: {why}.")
            self._publish()
            self.deleting.wait()
            raise _Deleted()
        self.runner.store.bind_pod(*self.key, node["metadata"]["name"])
        self._condition("PodScheduled", True)
        self.status["startTime"] = now()
        self.started_at = time.monotonic()
        names = [c["name"] for c in self.spec.get("initContainers") or []]
        self._condition("Initialized", not names, "ContainersNotInitialized" if names else None)
        self._condition("Ready", False, "ContainersNotReady")
        self._condition("ContainersReady", False, "ContainersNotReady")
        for c in self.spec.get("initContainers") or []:
            self.waiting[c["name"]] = {"reason": "PodInitializing"}
        for c in self.spec["containers"]:
            self.waiting[c["name"]] = {"reason": "PodInitializing" if names else "ContainerCreating"}
        self._refresh()

    # volumes

    def _prepare_volumes(self) -> None:
        ns = self.key[0]
        for vol in self.spec.get("volumes") or []:
            name = vol["name"]
            if "emptyDir" in vol:
                opts = {"type": "tmpfs", "device": "tmpfs"} if (vol["emptyDir"] or {}).get("medium") == "Memory" \
                    else {}
                v = self.docker.volumes.create(labels=self.labels, driver_opts=opts or None)
                self.volumes[name] = {"type": "volume", "source": v.name, "no_copy": True}
            elif "secret" in vol or "configMap" in vol:
                files = self._wait_for_config(lambda vol=vol: self.refs.projected_files(vol))
                v = self.docker.volumes.create(labels=self.labels)
                self._fill_volume(v.name, files)
                self.volumes[name] = {"type": "volume", "source": v.name, "read_only": True}
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                vname = f"kube-standin-{self.runner.instance}-{ns}-{claim}"
                try:
                    self.docker.volumes.get(vname)
                except docker.errors.NotFound:
                    self.docker.volumes.create(vname, labels={LABEL: self.runner.instance})
                self.volumes[name] = {"type": "volume", "source": vname,
                                      "read_only": bool(vol["persistentVolumeClaim"].get("readOnly"))}
            elif "hostPath" in vol:
                self.volumes[name] = {"type": "bind", "source": vol["hostPath"]["path"]}
            else:
                raise RuntimeError(f"volume {name}: only emptyDir, secret, configMap, persistentVolumeClaim and "
                                   "hostPath volumes are implemented by the stand-in")

    def _fill_volume(self, volume: str, files: dict[str, tuple[bytes, int]]) -> None:
        """Writes files into a docker volume through a created (never started) helper container."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, (content, mode) in files.items():
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(content), mode
                tar.addfile(info, io.BytesIO(content))
        helper = self.docker.containers.create(self.runner.pause_image, PAUSE_COMMAND, labels=self.labels,
                                               mounts=[Mount("/v", volume, type="volume")], network_mode="none")
        try:
            helper.put_archive("/v", buf.getvalue())
        finally:
            helper.remove(force=True)

    def _wait_for_config(self, fn, container: str | None = None):
        """Retries fn while it raises ConfigError, showing CreateContainerConfigError as the kubelet does."""
        while True:
            try:
                return fn()
            except ConfigError as e:
                for name in [container] if container else list(self.waiting):
                    self.waiting[name] = {"reason": "CreateContainerConfigError", "message": str(e)}
                self._refresh()
                self._sleep(1)

    # env

    def _start_pause(self) -> None:
        meta = self.pod["metadata"]
        hostname = self.spec.get("hostname") or meta["name"][:63]
        isolated = self._no_network()
        services = self.runner.services if not isolated else None  # deny-all egress: no Service either
        c = self.docker.containers.run(self.runner.pause_image,
                                       services.pause_command() if services else PAUSE_COMMAND, detach=True,
                                       hostname=hostname, name=self._name("POD"),
                                       labels=self.labels | {f"{LABEL}.container": "POD"}, entrypoint=[],
                                       stop_signal="SIGKILL", network_mode="none" if isolated else None,
                                       extra_hosts=services.extra_hosts(self.key[0]) if services else None,
                                       mounts=services.mounts() if services else None)
        self.pause_id = c.id
        if services:
            self._wait_for_relays()

    def _wait_for_relays(self) -> None:
        """The loopback services' relay listens before any container starts, so a client's first connect works."""
        end = time.monotonic() + 20
        while READY.encode() not in self.docker.api.logs(self.pause_id):
            if not self.docker.api.inspect_container(self.pause_id)["State"]["Running"] or time.monotonic() > end:
                tail = self.docker.api.logs(self.pause_id, tail=5).decode(errors="replace").strip()
                raise RuntimeError(f"the loopback services' relay in the pause container did not start: {tail}")
            self._sleep(0.05)

    def _no_network(self) -> bool:
        """True when a NetworkPolicy selecting this pod denies all egress (Egress in policyTypes, no rules).

        The one policy shape that Docker can enforce faithfully, with network mode "none"; it is
        looked at when the pod starts. Every other policy is stored and not enforced.
        """
        store = self.runner.store
        labels = self.pod["metadata"].get("labels") or {}
        for policy in store.list(store.resource("networking.k8s.io", "networkpolicies"), self.key[0]):
            spec = policy.get("spec") or {}
            if "Egress" in (spec.get("policyTypes") or []) and not spec.get("egress") and \
                    label_selector_matches(spec.get("podSelector"), labels):
                return True
        return False

    def _name(self, container: str) -> str:
        meta = self.pod["metadata"]
        return f"k8s_{container}_{meta['name']}_{meta['namespace']}_{meta['uid'][:8]}_{self.runner.instance}"

    def _ensure_image(self, c: dict) -> None:
        image, policy = c["image"], c.get("imagePullPolicy", "IfNotPresent")
        while True:
            try:
                present = True
                self.docker.images.get(image)
            except docker.errors.ImageNotFound:
                present = False
            if present and policy != "Always":
                return
            if policy == "Never":
                self.waiting[c["name"]] = {"reason": "ErrImageNeverPull", "message": f'Container image "{image}" '
                                           'is not present with pull policy of Never'}
            else:
                try:
                    self.docker.images.pull(image, auth_config=self.refs.pull_auth(image))
                    return
                except docker.errors.APIError as e:
                    self.waiting[c["name"]] = {"reason": "ErrImagePull",
                                               "message": f'failed to pull image "{image}": {e.explanation or e}'}
            self._refresh()
            self._sleep(2)

    def _create(self, c: dict, restart: str | None) -> str:
        self._ensure_image(c)
        env = self._wait_for_config(lambda: self.refs.env(c), c["name"])
        limits = (c.get("resources") or {}).get("limits") or {}
        requests = (c.get("resources") or {}).get("requests") or {}
        kwargs: dict[str, Any] = {}
        if "cpu" in limits:
            kwargs["nano_cpus"] = int(parse_quantity(limits["cpu"]) * 1e9)
        if "memory" in limits:
            kwargs["mem_limit"] = int(parse_quantity(limits["memory"]))
        if "cpu" in requests:
            kwargs["cpu_shares"] = max(2, int(parse_quantity(requests["cpu"]) * 1024))
        if restart:
            kwargs["restart_policy"] = {"Name": restart}
        sc = c.get("securityContext") or {}
        user = sc.get("runAsUser", (self.spec.get("securityContext") or {}).get("runAsUser"))
        if user is not None:
            group = sc.get("runAsGroup", (self.spec.get("securityContext") or {}).get("runAsGroup"))
            kwargs["user"] = f"{user}:{group}" if group is not None else str(user)
        if sc.get("privileged"):
            kwargs["privileged"] = True
        user = kwargs.pop("user", None)
        if any(m.get("subPath") or m.get("subPathExpr") for m in c.get("volumeMounts") or []):
            raise RuntimeError(f"container {c['name']}: subPath mounts are not implemented by the stand-in")
        mounts = [Mount(m["mountPath"], read_only=bool(m.get("readOnly")) or self.volumes[m["name"]].get(
            "read_only", False), **{k: v for k, v in self.volumes[m["name"]].items() if k != "read_only"})
            for m in c.get("volumeMounts") or []]
        command = [expand(x, env) for x in c.get("command") or []] or None
        args = [expand(x, env) for x in c.get("args") or []] or None
        container = self.docker.api.create_container(
            c["image"], command=args, entrypoint=command, environment=[f"{k}={v}" for k, v in env.items()],
            working_dir=c.get("workingDir"), stdin_open=bool(c.get("stdin")), tty=bool(c.get("tty")),
            name=self._name(c["name"]), labels=self.labels | {f"{LABEL}.container": c["name"]},
            host_config=self.docker.api.create_host_config(
                network_mode=f"container:{self.pause_id}", mounts=mounts, **kwargs),
            user=user)
        cid = container["Id"]
        self.ids[c["name"]] = cid
        self.waiting.pop(c["name"], None)
        return cid

    def _run_init_containers(self) -> None:
        inits = self.spec.get("initContainers") or []
        for c in inits:
            if c.get("restartPolicy") == "Always":  # a native sidecar: start it and go on
                self.docker.api.start(self._create(c, "always"))
                self._refresh()
                continue
            while True:
                cid = self._create(c, None)
                self.docker.api.start(cid)
                self._refresh()
                while self.docker.api.inspect_container(cid)["State"]["Running"]:
                    self._sleep(0.1)
                code = self.docker.api.inspect_container(cid)["State"]["ExitCode"]
                self._refresh()
                if code == 0:
                    break
                if self.spec["restartPolicy"] == "Never":
                    self._condition("Initialized", False, "ContainersNotInitialized",
                                    f"containers with incomplete status: [{c['name']}]")
                    self._set_status(phase="Failed")
                    self._stop_sidecars(0)
                    self.deleting.wait()
                    raise _Deleted()
                self._sleep(min(10.0, 1.0 * (self._restarts.setdefault(c["name"], 0) + 1)))
                self._restarts[c["name"]] += 1
                self.docker.api.remove_container(cid, force=True)
        self._condition("Initialized", True)
        self._refresh()

    def _start_main_containers(self) -> None:
        restart = {"Always": "always", "OnFailure": "on-failure", "Never": None}[self.spec["restartPolicy"]]
        ids = [self._create(c, restart) for c in self.spec["containers"]]
        for cid in ids:
            self.docker.api.start(cid)
        self._refresh()

    def _monitor(self) -> None:
        deadline = self.spec.get("activeDeadlineSeconds")
        while True:
            self._sleep(0.2)
            if deadline and time.monotonic() - self.started_at > deadline:
                self._set_status(phase="Failed", reason="DeadlineExceeded",
                                 message="Pod was active on the node longer than the specified deadline")
                grace = self.spec.get("terminationGracePeriodSeconds", 30)
                self._stop_containers(self._main_names(), grace)
                self._stop_sidecars(grace)
                self._refresh()
                return
            if self._refresh() in ("Succeeded", "Failed"):
                self._stop_sidecars(self.spec.get("terminationGracePeriodSeconds", 30))
                self._refresh()
                return

    def _main_names(self) -> list[str]:
        return [c["name"] for c in self.spec["containers"]]

    def _sidecar_names(self) -> list[str]:
        return [c["name"] for c in self.spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]

    # status

    def _container_status(self, c: dict, init: bool) -> dict:
        name = c["name"]
        st: dict[str, Any] = {"name": name, "image": c["image"], "imageID": "", "ready": False,
                              "restartCount": self._restarts.get(name, 0),
                              "started": False, "state": {"waiting": self.waiting.get(name) or
                                                          {"reason": "PodInitializing"}}, "lastState": {}}
        cid = self.ids.get(name)
        if cid is None:
            return st
        try:
            info = self.docker.api.inspect_container(cid)
        except docker.errors.NotFound:
            return st
        state = info["State"]
        st["containerID"] = f"docker://{cid}"
        st["imageID"] = f"docker-pullable://{info['Image']}"
        st["restartCount"] += info.get("RestartCount", 0)
        terminated = {"exitCode": state["ExitCode"], "reason": "OOMKilled" if state.get("OOMKilled") else
                      "Completed" if state["ExitCode"] == 0 else "Error", "startedAt": _docker_time(state["StartedAt"]),
                      "finishedAt": _docker_time(state["FinishedAt"]), "containerID": f"docker://{cid}"}
        if state.get("Restarting"):
            st["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off restarting failed "
                                       f"container {name} in pod {self.key[1]}"}}
            st["lastState"] = {"terminated": terminated}
        elif state.get("Running"):
            st["state"] = {"running": {"startedAt": _docker_time(state["StartedAt"])}}
            st["ready"] = not init or c.get("restartPolicy") == "Always"
            st["started"] = True
        elif state["Status"] == "created":
            st["state"] = {"waiting": {"reason": "ContainerCreating"}}
        else:
            st["state"] = {"terminated": terminated}
        return st

    def _refresh(self) -> str:
        """Recomputes status from Docker, publishes it, and returns the phase."""
        inits = [self._container_status(c, True) for c in self.spec.get("initContainers") or []]
        mains = [self._container_status(c, False) for c in self.spec["containers"]]
        if inits:
            self.status["initContainerStatuses"] = inits
        self.status["containerStatuses"] = mains
        phase = self.status.get("phase", "Pending")
        if phase not in ("Succeeded", "Failed"):
            states = [m["state"] for m in mains]
            if all("terminated" in s for s in states) and self.ids:
                codes = [s["terminated"]["exitCode"] for s in states]
                policy = self.spec["restartPolicy"]
                if policy == "Never" or (policy == "OnFailure" and not any(codes)):
                    phase = "Failed" if any(codes) else "Succeeded"
            elif all(name in self.ids for name in self._main_names()) and \
                    any("running" in s or "terminated" in s or s.get("waiting", {}).get("reason") ==
                        "CrashLoopBackOff" for s in states):
                phase = "Running"
        ready = phase == "Running" and all(m["ready"] for m in mains)
        if phase in ("Succeeded", "Failed"):
            reason = "PodCompleted"
            self._condition("Ready", False, reason)
            self._condition("ContainersReady", False, reason)
        else:
            self._condition("Ready", ready, None if ready else "ContainersNotReady")
            self._condition("ContainersReady", ready, None if ready else "ContainersNotReady")
        self.status["phase"] = phase
        self._publish()
        return phase

    # termination

    def _pre_stop(self, name: str, timeout: float) -> None:
        c = next(x for x in self.spec["containers"] + (self.spec.get("initContainers") or []) if x["name"] == name)
        command = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
        cid = self.ids.get(name)
        if not command or not cid or timeout <= 0:
            return
        try:
            exec_id = self.docker.api.exec_create(cid, command)["Id"]
            done = threading.Event()
            threading.Thread(target=lambda: (self.docker.api.exec_start(exec_id), done.set()), daemon=True).start()
            done.wait(timeout)
        except docker.errors.APIError:
            pass

    def _stop_containers(self, names: list[str], grace: float) -> None:
        """preStop hooks, then `docker stop -t grace` (SIGTERM, SIGKILL at the end of grace), all in parallel."""
        start = time.monotonic()

        def stop(name: str) -> None:
            cid = self.ids.get(name)
            if not cid:
                return
            try:
                if not self.docker.api.inspect_container(cid)["State"]["Running"]:
                    self.docker.api.update_container(cid, restart_policy={"Name": "no"})
                    return
                self._pre_stop(name, grace)
                left = max(0, round(grace - (time.monotonic() - start)))
                self.docker.api.stop(cid, timeout=left)
            except docker.errors.APIError:
                pass
        threads = [threading.Thread(target=stop, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _stop_sidecars(self, grace: float) -> None:
        for name in reversed(self._sidecar_names()):
            self._stop_containers([name], grace)

    def _stop_all(self) -> None:
        start = time.monotonic()
        grace = self.grace
        self._stop_containers(self._main_names(), grace)
        self._stop_sidecars(max(0.0, grace - (time.monotonic() - start)))
        for cid in self.ids.values():  # init containers that were still running
            try:
                self.docker.api.kill(cid)
            except docker.errors.APIError:
                pass
        if self.pause_id:
            try:
                self.docker.api.kill(self.pause_id)
            except docker.errors.APIError:
                pass
        try:
            self._refresh()
        except Exception:
            pass

    def _cleanup(self) -> None:
        for cid in list(self.ids.values()) + ([self.pause_id] if self.pause_id else []):
            try:
                self.docker.api.remove_container(cid, force=True, v=True)
            except docker.errors.APIError:
                pass
        for spec in self.volumes.values():
            if spec["type"] == "volume" and not spec["source"].startswith("kube-standin-"):
                try:
                    self.docker.api.remove_volume(spec["source"], force=True)
                except docker.errors.APIError:
                    pass



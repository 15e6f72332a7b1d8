"""Sandboxes on the kubernetes provider: one Pod each, reached only through the Kubernetes API.

The sandbox is the same as on docker: runner's supervisor (`runner._sandbox_agent`) owns it from
inside and a Sandbox object speaks the supervisor's frames over one connection. What differs is
where things are, since this machine reaches neither pod addresses nor files in a pod:

- The Pod, its Secrets and (for `block_network`) its deny-all NetworkPolicy are what
  `runner._k8s.sandbox_manifests` renders for a Workload whose function tag is the sandbox's id,
  with the image pushed to the stack's registry (`Cluster.image`, runner on /opt/runner-client).
  Its main command is `_sandbox_kube_pod.py supervise`, which runs the supervisor with its run
  directory on an emptyDir at /run/runner-sb (the path a docker sandbox uses). `env=` values are
  the pod's env and `secrets=` Kubernetes Secrets it reads by `envFrom`, so no secret value is in
  the pod spec, nor on this machine's disk. The pod is not owned by anything, so it outlives its
  creator as on Modal, except when created with an app inside `with app.run():`: then it is owned
  by the run's owner ConfigMap too (`runner._k8s.owned`), and goes with the run even if the client
  dies. `timeout` is also the pod's activeDeadlineSeconds, and cpu/memory its limits.
- The connection: each Sandbox object's SupervisorLink runs `_sandbox_kube_pod.py bridge` in the
  pod through pods/exec (one WebSocket, v5 or v4 channel protocol, binary), which pipes the exec's
  stdin and stdout to the supervisor's unix socket. Here the WebSocket's stdout channel and stdin
  are joined to one end of a socketpair, whose other end is the socket the link's Channel reads
  and writes, exactly as it uses a unix socket on docker.
- The end: when the pod's main container has terminated, its log holds the supervisor's `exit`
  record and the main command's output (`_sandbox_kube_pod.py` prints them), and whoever finds the
  pod ended first (the link whose connection closed, `Sandbox.from_id`, `Sandbox.list`, the
  sweep) copies them into the sandbox's control directory as the supervisor's own files, then
  deletes the Pod, NetworkPolicy and Secrets. From there on everything reads the control directory
  as it does on docker. A pod ended by its activeDeadlineSeconds counts as a timeout (124); one
  that ended without the supervisor's record (killed from outside) as lost (137, or the
  container's exit code).

`meta.json` names the provider, the API server, the namespace, the pod and the objects to delete,
so `Sandbox.from_id` works from any process on this machine with the same stack outputs.
Not yet: tunnels (`encrypted_ports`, `unencrypted_ports`) on this provider.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import threading
import time
from typing import Any

from . import _sandbox_agent as agent
from ._sandbox_host import read_json
from ._sandbox_kube_pod import MARK
from .exception import ExecutionError, InvalidError, ProviderError

RUN = "/run/runner-sb"  # the supervisor's run directory in the pod (an emptyDir), as in a docker sandbox
RUN_VOLUME = "runner-sb"
ENDED = ("Succeeded", "Failed")
REMOVE_PATIENCE = 30.0  # seconds terminate() waits for the pod to be gone
PENDING_PAUSE = 0.2  # seconds between looks at a pod that is not running yet


def pod_script() -> str:
    from ._providers._kubernetes import CLIENT_DIR

    return f"{CLIENT_DIR}/runner/_sandbox_kube_pod.py"


class KubeSandboxes:
    """The kubernetes provider's sandboxes, as `runner._sandbox_host.Backend` uses a provider."""

    name = "kubernetes"
    remote = True  # the supervisor's run directory is in the pod, not on this machine

    def __init__(self):
        from ._providers._kubernetes import cluster

        try:
            self.cluster = cluster()
        except InvalidError as exc:  # no stack (or a broken one): these sandboxes cannot be reached now
            raise ProviderError(str(exc)) from None
        self.stack, self.kube = self.cluster.stack, self.cluster.kube

    # ---- what Sandbox.create asks first --------------------------------------------------------
    def validate(self, image: Any, gpu: tuple, cpu: Any, memory: Any, what: str) -> None:
        from ._k8s import gpu_placement

        try:
            gpu_placement(self.stack, gpu)
        except InvalidError as exc:
            raise InvalidError(f"{what}: {exc}") from None

    def prepare(self, image: Any) -> str:
        return self.cluster.image(image, None)

    # ---- start ---------------------------------------------------------------------------------
    def sandbox_start(self, req: Any, prepared: str) -> dict:
        from ._k8s import Workload, owned, sandbox_manifests
        from ._resources import FunctionOptions

        if req.ports:
            raise InvalidError("Sandbox.create: tunnels (encrypted_ports, unencrypted_ports) are not supported on "
                               "the kubernetes provider yet; reach the sandbox through exec and files")
        session = req.session
        run_id = getattr(session, "id", None) or req.app or req.id
        options = FunctionOptions(cpu=req.cpu, memory=req.memory, gpu=req.gpu, timeout=req.spec["timeout"],
                                  secrets=tuple(req.secrets), volumes=tuple(req.volumes),
                                  env=tuple(sorted(req.user_env.items())))
        w = Workload(app=req.app_name or "sandbox", function=req.id, run_id=run_id, image=prepared, options=options)
        spec = {**req.spec, "deadline": req.deadline}
        command = ["python3", "-I", "-S", pod_script(), "supervise", RUN, json.dumps(spec)]
        manifests = sandbox_manifests(self.stack, w, req.id, command=command, block_network=req.block_network)
        _mount_run_dir(manifests[-1])
        owner = getattr(getattr(session, "provider", None), "owner", None)
        if owner is not None:  # with app.run(): the run owns it too
            manifests = owned(manifests, *owner(session))
        objects = [[m["kind"], m["metadata"]["name"]] for m in manifests]
        made: list[list[str]] = []
        try:
            for obj in manifests:
                self.kube.create(obj)
                made.append([obj["kind"], obj["metadata"]["name"]])
        except ProviderError as exc:
            self._delete(made)
            raise ProviderError(f"the cluster could not start sandbox {req.id}: {exc}") from None
        return {"server": self.kube.server, "namespace": self.kube.namespace, "pod": manifests[-1]["metadata"]["name"],
                "objects": objects}

    # ---- running, reaching -----------------------------------------------------------------------
    def _check(self, meta: dict) -> None:
        if meta.get("namespace") not in (None, self.kube.namespace) or meta.get("server") not in (None, self.kube.server):
            raise ProviderError(f"sandbox {meta['id']} runs in namespace {meta.get('namespace')} of the cluster at "
                                f"{meta.get('server')}, and this process's stack is namespace {self.kube.namespace} "
                                f"at {self.kube.server}; set RUNNER_STACK_OUTPUTS to the stack it was created on")

    def sandbox_alive(self, handle: dict) -> bool:
        """Whether its pod is there: while it runs, and once ended until its end has been collected."""
        if not handle.get("pod"):
            return False
        self._check(handle)
        return self.kube.get("Pod", handle["pod"]) is not None

    def sandbox_running(self, metas: dict) -> dict:
        """{sandbox id: handle with its deadline} of every sandbox pod in the namespace that runs. On
        the way, the ended pods of `metas` (this machine's sandboxes) are collected, and those of
        other clients deleted once they ended GRACE seconds ago, as their control directories are."""
        from ._k8s._meta import LABEL_KIND, MANAGED_BY
        from ._k8s._workloads import LABEL_SANDBOX
        from ._sandbox_host import GRACE

        running = {}
        for pod in self.kube.list("Pod", {MANAGED_BY: "runner", LABEL_KIND: "sandbox"}):
            sid = (pod["metadata"].get("labels") or {}).get(LABEL_SANDBOX)
            if not sid:
                continue
            if _ended(pod):
                if sid in metas and metas[sid].get("pod") == pod["metadata"]["name"]:
                    self._collect(metas[sid], pod)
                elif time.time() - _finished(pod) > GRACE:
                    self._delete(_objects(pod))
                continue
            running[sid] = {"pod": pod["metadata"]["name"], "objects": _objects(pod),
                            "deadline": (metas.get(sid) or {}).get("deadline") or _deadline(pod)}
        return running

    def sandbox_connect(self, meta: dict, wait: bool) -> socket.socket:
        """A socket joined to the supervisor through a pods/exec bridge; OSError while the pod is not
        running (after a short pause when `wait`), and once it has ended."""
        self._check(meta)
        name = meta.get("pod")
        pod = self.kube.get("Pod", name) if name else None
        if pod is None:
            raise ConnectionError(f"sandbox {meta['id']} has no pod")
        if _ended(pod):
            raise ConnectionError(f"sandbox {meta['id']}'s pod has ended")
        if not _running(pod):
            from ._providers._kubernetes import pod_problem

            problem = pod_problem(pod)
            if problem:
                raise ExecutionError(f"sandbox {meta['id']} cannot start: its pod {name} {problem}")
            if wait:
                time.sleep(PENDING_PAUSE)
            raise ConnectionError(f"sandbox {meta['id']}'s pod is not running yet")
        return self._bridge(name)

    def _bridge(self, pod: str) -> socket.socket:
        from kubernetes.client.rest import ApiException

        try:
            ws = self.kube.websocket("exec", pod, command=["python3", "-I", "-S", pod_script(), "bridge", RUN],
                                     container="main", stdin=True, stdout=True, stderr=True, tty=False, binary=True,
                                     _preload_content=False)
        # A refused handshake (the container just exited, say) is an ApiException(status=0), which
        # kubernetes 36 turns into an AttributeError while handling it (its body is None).
        except (ApiException, AttributeError, OSError, ValueError) as exc:
            raise ConnectionError(f"pods/exec into {pod} failed: {exc}") from None
        mine, theirs = socket.socketpair()
        _Bridge(ws, theirs, pod)
        mine.settimeout(10)
        return mine

    # ---- the end -------------------------------------------------------------------------------
    def sandbox_collect(self, meta: dict, settle: float = 0.0) -> bool:
        """If the sandbox's pod has ended (waiting up to `settle` seconds for that): its end and output
        into the control directory, and its objects deleted. False while it runs."""
        name = meta.get("pod")
        if not name:
            return False
        self._check(meta)
        end = time.monotonic() + settle
        while True:
            pod = self.kube.get("Pod", name)
            if pod is None:  # deleted by someone else, or collected by another process just now
                if read_json(pathlib.Path(meta["run"]) / agent.EXIT) is None:
                    self._delete(meta.get("objects") or [])
                    _record(meta, {}, {"reason": "lost", "code": 137})
                return True
            if _ended(pod):
                return self._collect(meta, pod)
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)

    def _collect(self, meta: dict, pod: dict) -> bool:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        name = pod["metadata"]["name"]
        try:
            log = client.CoreV1Api(self.kube.api).read_namespaced_pod_log(
                name, self.kube.namespace, container="main", _preload_content=False, _request_timeout=60).data
        except ApiException as exc:
            if exc.status not in (400, 404):  # 400: the container never started
                return False
            log = b""
        except Exception:  # noqa: BLE001 - the API did not answer: the next look collects it
            return False
        files: dict[str, bytearray] = {}
        info = None
        for line in log.splitlines():
            mark, _, rest = line.partition(b" ")
            if mark != MARK.encode():
                continue
            what, _, data = rest.partition(b" ")
            try:
                if what == b"exit":
                    info = json.loads(data)
                else:
                    files.setdefault(what.decode(), bytearray()).extend(base64.b64decode(data))
            except ValueError:
                continue
        status = pod.get("status") or {}
        if status.get("reason") == "DeadlineExceeded" and (info is None or info.get("reason") == "terminated"):
            info = {"reason": "timeout", "code": agent.CODES["timeout"]}  # the kubelet was first to its deadline
        if info is None:
            terminated = (_main_status(pod).get("state") or {}).get("terminated") or {}
            if not log.strip() and (not terminated or terminated.get("exitCode") in (126, 127, 128)):
                from ._providers._kubernetes import pod_problem

                why = status.get("message") or terminated.get("message") or pod_problem(pod) or "it failed"
                hint = "; the image needs python3, which runs runner's sandbox supervisor" if "python3" in why else ""
                info = {"reason": "error", "code": 127,
                        "message": f"its pod {name} ended before runner's supervisor ran ({why}){hint}"}
            else:  # killed from outside (out of memory, evicted, deleted by hand)
                info = {"reason": "lost", "code": terminated.get("exitCode") or 137}
        _record(meta, files, info)
        self._delete(meta.get("objects") or _objects(pod))
        return True

    # ---- removing --------------------------------------------------------------------------------
    def sandbox_remove(self, handle: dict) -> None:
        """Kill the pod now and delete it, then its NetworkPolicy and Secrets; returns once the pod is gone."""
        if not handle.get("pod"):
            return
        self._check(handle)
        self._delete(handle.get("objects") or [["Pod", handle["pod"]]])

    def _delete(self, objects: list) -> None:
        """Pods first, and gone, before the rest: their policy must not be lifted while they run."""
        pods = [name for kind, name in objects if kind == "Pod"]
        for name in pods:
            self.kube.delete("Pod", name, grace=0)
        end = time.monotonic() + REMOVE_PATIENCE
        while pods:
            pods = [name for name in pods if self.kube.get("Pod", name) is not None]
            if pods and time.monotonic() > end:
                raise ProviderError(f"the cluster did not remove pod {pods[0]} within {REMOVE_PATIENCE:g}s")
            if pods:
                time.sleep(0.05)
        for kind, name in objects:
            if kind != "Pod":
                self.kube.delete(kind, name)


class _Bridge:
    """One pods/exec WebSocket joined to one end of a socketpair: what arrives on the socket goes to
    the exec's stdin, its stdout comes back on the socket. Either side closing closes both."""

    def __init__(self, ws: Any, sock: socket.socket, pod: str):
        self.ws, self.sock = ws.sock, sock  # the websocket-client WebSocket under the WSClient
        self.lock = threading.Lock()
        self.left = 2
        for target, what in ((self._up, "up"), (self._down, "down")):
            threading.Thread(target=target, name=f"runner-sb-bridge-{what}-{pod}", daemon=True).start()

    def _up(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.ws.send_binary(b"\x00" + data)
        except Exception:  # noqa: BLE001 - the WebSocket or the socket went away
            pass
        finally:
            _shutdown(self.ws.sock)  # wakes the reader; the API then ends the exec
            self._done()

    def _down(self) -> None:
        from websocket import ABNF

        try:
            while True:
                opcode, frame = self.ws.recv_data_frame(True)
                if opcode == ABNF.OPCODE_CLOSE:
                    break
                data = frame.data
                if opcode == ABNF.OPCODE_BINARY and data[:1] == b"\x01":  # stdout; stderr and status are unused
                    self.sock.sendall(data[1:])
        except Exception:  # noqa: BLE001 - closed, by either side
            pass
        finally:
            _shutdown(self.sock)  # the Channel reads the end; _up wakes
            self._done()

    def _done(self) -> None:
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            self.sock.close()
            try:
                self.ws.shutdown()
            except Exception:  # noqa: BLE001
                pass


def _shutdown(sock: Any) -> None:
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# ---- pods ---------------------------------------------------------------------------------------------
def _mount_run_dir(pod: dict) -> None:
    """The supervisor's run directory as an emptyDir: writable whatever the image, and private to the pod."""
    spec = pod["spec"]
    spec.setdefault("volumes", []).append({"name": RUN_VOLUME, "emptyDir": {}})
    main = next(c for c in spec["containers"] if c["name"] == "main")
    main.setdefault("volumeMounts", []).append({"name": RUN_VOLUME, "mountPath": RUN})


def _main_status(pod: dict) -> dict:
    return next((c for c in (pod.get("status") or {}).get("containerStatuses") or [] if c.get("name") == "main"), {})


def _ended(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ENDED or "terminated" in (_main_status(pod).get("state") or {})


def _running(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and "running" in (_main_status(pod).get("state") or {})


def _objects(pod: dict) -> list[list[str]]:
    """What a sandbox's pod brought: itself, its NetworkPolicy (same name, if any) and the Secrets it reads."""
    name = pod["metadata"]["name"]
    secrets = [ref["secretRef"]["name"] for c in pod["spec"]["containers"] for ref in c.get("envFrom") or []
               if "secretRef" in ref]
    return [["Pod", name], ["NetworkPolicy", name], *(["Secret", s] for s in secrets)]


def _deadline(pod: dict) -> float:
    return _timestamp(pod["metadata"].get("creationTimestamp")) + float(pod["spec"].get("activeDeadlineSeconds") or 0)


def _finished(pod: dict) -> float:
    """When its main container ended (now, if that is not known)."""
    return _timestamp(((_main_status(pod).get("state") or {}).get("terminated") or {}).get("finishedAt"), time.time())


def _timestamp(text: str | None, default: float = 0.0) -> float:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat((text or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def _record(meta: dict, files: dict[str, bytearray], info: dict) -> None:
    """Write what the supervisor would have written into the run directory: output first, `exit` last.
    Nothing if terminate() removed the control directory meanwhile."""
    run = meta["run"]
    try:
        for name, data in files.items():
            if name in (*agent.STREAMS, agent.LOG):
                tmp = os.path.join(run, f"{name}.{os.getpid()}.{threading.get_ident()}.tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, os.path.join(run, name))
        agent.write_json(os.path.join(run, agent.EXIT), info)
    except OSError:
        pass

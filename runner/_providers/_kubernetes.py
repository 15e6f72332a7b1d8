"""The kubernetes provider: an app's functions on the cluster of a Pulumi stack (infra/).

Where the other providers start one container per worker and hold a connection to each, this one
starts nothing itself. It applies the objects `runner._k8s` renders and talks to the stack's queue:

- A function becomes a worker Deployment with a KEDA ScaledObject on its input stream; calls go
  through the durable queue plane (`runner._plane.QueuePool`), so the client holds one queue
  connection whatever the number of pods, and an input whose pod dies (a spot preemption) is
  delivered again. KEDA scales the Deployment from zero up to `max_containers` on the backlog and
  back after `scaledown_window`; the client also scales it up at once when it queues work no pod
  can take yet, which saves KEDA's polling interval on a cold start.
- A web function becomes a web Deployment and Service; this run's front door carries each request
  to a ready pod through the API's port-forward, and scales the Deployment from zero on the first
  request and back after `scaledown_window`.
- Everything of one `runner run` is owned by one ConfigMap (`runner._k8s.run_owner`), which the
  client heartbeats; deleting it (at the end of the run, on Ctrl-C, or by any later client once the
  heartbeat is older than OWNER_TIMEOUT) lets the garbage collector remove the rest.
- Images are built on this machine with Docker (the docker provider's builder), with one layer on
  top holding runner itself, cloudpickle, redis and the app's Python files, then pushed to the
  stack's registry; pods pull them from there.
- The store (Dict, Queue) is the stack's queue server too, so code in pods and the client share it.

What differs between clouds is thin and lives in `Flavour`: how an image is named in the registry
and how this machine logs in to push. How the client reaches the queue is the same everywhere:
RUNNER_QUEUE_ADDRESS when set (a URL this machine can reach, e.g. an internal load balancer or a
tunnel), else a port-forward through the API to a pod of the queue's Service.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import tarfile
import threading
import time
import urllib.parse
from typing import Any

from .._output import output
from .._stack import StackOutputs, read_outputs
from ..exception import ImageBuildError, InvalidError, ProviderError
from . import Provider
from ._kube_api import Kube, PortForward, load_client

__all__ = ["APP_ROOT", "Cluster", "KubernetesProvider", "QUEUE_ADDRESS_ENV", "cluster", "function_tag", "params_tag",
           "pod_problem"]

QUEUE_ADDRESS_ENV = "RUNNER_QUEUE_ADDRESS"
CLOUD_ENV = "RUNNER_CLOUD"
MAX_ENV = "RUNNER_KUBE_MAX_CONTAINERS"
APP_ROOT = "/root/app"
CLIENT_DIR = "/opt/runner-client"
OWNER_HEARTBEAT = 10.0  # seconds between the client's heartbeats on its run's owner
OWNER_TIMEOUT_ENV = "RUNNER_KUBE_OWNER_TIMEOUT"
OWNER_TIMEOUT = 120.0  # a run owner not heartbeaten this long belongs to a client that is gone
HEARTBEAT_ANNOTATION = "runner/heartbeat"
START_PATIENCE = 120.0  # seconds a pod may stay unschedulable or failing before inputs fail


# ---- the stack and its cluster -----------------------------------------------------------------
def stack_outputs() -> StackOutputs:
    """The stack outputs the provider runs on (RUNNER_STACK_OUTPUTS, else the Pulumi CLI), checked
    against RUNNER_CLOUD (`runner --cloud X`) when set."""
    stack = read_outputs()
    want = os.environ.get(CLOUD_ENV)
    if want and stack.cloud != want:
        raise InvalidError(f"--cloud {want} was asked for, but the stack outputs are of a {stack.cloud} stack; "
                           f"select the {want} stack (`pulumi stack select`) or pass --cloud {stack.cloud}")
    if not stack.kubeconfig.strip():
        raise InvalidError(f"the {stack.cloud} stack has no cluster (its kubeconfig output is empty); the local stack "
                           "runs on --provider docker, the kubernetes provider needs a gcp, aws or azure stack")
    return stack


class Cluster:
    """One stack's cluster for this process: the API, the queue's address and password, images."""

    def __init__(self, stack: StackOutputs):
        self.stack = stack
        self.kube = Kube(load_client(stack.kubeconfig), stack.namespace)
        self.flavour = Flavour.of(stack)
        self.lock = threading.Lock()
        self._queue_url: str | None = None
        self._forward: PortForward | None = None
        self._images: dict[tuple, str] = {}
        self._building: dict[tuple, threading.Lock] = {}
        self._builder: Any = None

    # ---- the queue ---------------------------------------------------------------------------
    def queue_url(self) -> str:
        """A URL this process reaches the stack's queue (and store) at, password included."""
        with self.lock:
            if self._queue_url is None:
                password = self.kube.secret_value(self.stack.queue_secret_name, "password")
                address = os.environ.get(QUEUE_ADDRESS_ENV) or self._forward_queue()
                self._queue_url = _with_password(address, password)
                _check_queue(self._queue_url, address)
            return self._queue_url

    def _forward_queue(self) -> str:
        """A port-forward to a pod of the queue's Service (named by the endpoint's host)."""
        url = urllib.parse.urlsplit(self.stack.queue_endpoint)
        service = (url.hostname or "").split(".")[0]
        svc = self.kube.get("Service", service)
        if svc is None:
            raise ProviderError(f"the queue's Service {self.stack.namespace}/{service} is not in the cluster; run "
                                f"`pulumi up` on infra/ again, or set {QUEUE_ADDRESS_ENV} to an address of the queue "
                                "this machine can reach")
        selector = (svc.get("spec") or {}).get("selector") or {}
        pods = [p for p in self.kube.pods(selector) if (p.get("status") or {}).get("phase") == "Running"]
        if not pods:
            raise ProviderError(f"no pod of the queue's Service {service} is running; check "
                                f"`kubectl -n {self.stack.namespace} get pods -l "
                                + ",".join(f"{k}={v}" for k, v in selector.items()) + "`")
        port = url.port or 6379
        target = next((p.get("targetPort") for p in svc["spec"].get("ports") or [] if p.get("port") == port), port)
        self._forward = self.kube.port_forward(pods[0]["metadata"]["name"], int(target) if str(target).isdigit() else port)
        host, local = self._forward.address
        return f"redis://{host}:{local}{url.path or '/0'}"

    # ---- images ------------------------------------------------------------------------------
    def image(self, image: Any, app_root: str | None) -> str:
        """The reference pods run for `image` with the app's source at APP_ROOT: built (or found)
        here, given runner's layer, and pushed to the stack's registry once per process."""
        key = (image.digest() if image is not None else "", app_root or "")
        with self.lock:
            if self._builder is None:
                from ._docker import DockerProvider

                self._builder = DockerProvider()
                self._builder.registry = None  # the stack's registry is the one pods pull from
            building = self._building.setdefault(key, threading.Lock())
        with building:  # once per image: others build meanwhile
            if key not in self._images:
                base = self._builder.prepare(image)
                self._images[key] = self._app_layer(base, image, app_root)
            return self._images[key]

    def _app_layer(self, base: str, image: Any, app_root: str | None) -> str:
        import docker.errors

        from .._store._redis import DEPS_DIR

        client = self._builder.client
        files = _layer_files(image, app_root)
        digest = hashlib.sha256(client.images.get(base).id.encode())
        for inside, path in files:
            digest.update(inside.encode() + b"\0" + _file_digest(path))
        ref = self.flavour.image_ref(self.stack.registry_url, f"app-{digest.hexdigest()[:40]}")
        try:
            client.images.get(ref)
            built = True
        except docker.errors.ImageNotFound:
            built = False
        if not built:
            output().status(f"adding runner to the image ({len(files)} files)")
            env = _image_env(client, base)
            # Compiled once here, not at every pod start (a cold start imports all of it twice).
            dockerfile = (f"FROM {base}\nCOPY ctx/ /\n"
                          f"RUN python3 -m compileall -q {CLIENT_DIR} {DEPS_DIR} {APP_ROOT} >/dev/null 2>&1 || true\n"
                          f"ENV PYTHONPATH={':'.join(p for p in (CLIENT_DIR, '/root', env.get('PYTHONPATH')) if p)}\n"
                          "WORKDIR /root\n")
            context = _context_tar(dockerfile, files)
            try:
                client.images.build(fileobj=context, custom_context=True, tag=ref, pull=False, rm=True, forcerm=True)
            except (docker.errors.BuildError, docker.errors.APIError) as exc:
                raise ImageBuildError(f"adding runner's layer to {base} failed: {exc}") from None
        if not self._registry_has(ref):
            self._push(ref)
        return ref

    def _registry_has(self, ref: str) -> bool:
        from .._registry import Registry

        try:
            return Registry(self.stack.registry_url, self._builder.client).has(ref)
        except ProviderError:
            return False

    def _push(self, ref: str) -> None:
        import docker.errors

        repo, tag = ref.rsplit(":", 1)
        output().status(f"pushing {ref}")
        try:
            auth = self.flavour.push_auth(self.stack.registry_url)
            for line in self._builder.client.api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth):
                if isinstance(line, dict) and line.get("error"):
                    raise ImageBuildError(f"pushing {ref} to the stack's registry failed: {line['error']}")
        except docker.errors.DockerException as exc:
            raise ImageBuildError(f"pushing {ref} to the stack's registry failed: {exc}") from None

    def close(self) -> None:
        if self._forward is not None:
            self._forward.close()
        if self._builder is not None:
            self._builder.close()


_clusters: dict[str, Cluster] = {}
_clusters_lock = threading.Lock()


def cluster() -> Cluster:
    """This process's Cluster for the stack the environment names (made once)."""
    stack = stack_outputs()
    key = f"{stack.cloud}\0{stack.kubeconfig}\0{stack.namespace}"
    with _clusters_lock:
        if key not in _clusters:
            _clusters[key] = Cluster(stack)
        return _clusters[key]


def _with_password(address: str, password: str) -> str:
    from .._plane._wire import with_password

    if urllib.parse.urlsplit(address).scheme not in ("redis", "rediss", "unix"):
        raise InvalidError(f"{QUEUE_ADDRESS_ENV}={address!r} is not a redis://HOST:PORT/DB or unix:///PATH URL")
    return with_password(address, password)


def _check_queue(url: str, shown: str) -> None:
    from .._store._redis import _import_redis

    r = _import_redis().Redis.from_url(url, socket_connect_timeout=10, socket_timeout=10)
    try:
        r.ping()
    except Exception as exc:  # noqa: BLE001 - any failure: the queue cannot be used
        raise ProviderError(f"the stack's queue at {shown} does not answer ({type(exc).__name__}: {exc}); "
                            f"check the cluster, or set {QUEUE_ADDRESS_ENV}") from None
    finally:
        r.close()


# ---- per-cloud differences ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Flavour:
    """What differs between clouds for the provider: image names and the push login."""

    cloud: str

    @staticmethod
    def of(stack: StackOutputs) -> Flavour:
        return Flavour(stack.cloud)

    def image_ref(self, registry_url: str, tag: str) -> str:
        registry = registry_url.rstrip("/")
        if self.cloud == "aws":  # an ECR repository URL is one repository: the image is a tag in it
            return f"{registry}:{tag}"
        return f"{registry}/runner:{tag}"

    def push_auth(self, registry_url: str) -> dict[str, str] | None:
        """docker's auth_config for pushing; None: the daemon's own `docker login` credentials."""
        from .. import _registry_auth as auth

        host = registry_url.split("/")[0]
        if self.cloud == "gcp":
            return auth.GcpAuth("runner push", registry_url, None)()
        if self.cloud == "aws":
            return auth.ecr_auth(f"{registry_url}:push", None)()
        if self.cloud == "azure":
            return _acr_token(host)
        return None


def _acr_token(host: str) -> dict[str, str]:
    name = host.split(".")[0]
    try:
        done = subprocess.run(["az", "acr", "login", "--name", name, "--expose-token", "--output", "tsv",
                               "--query", "accessToken"], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageBuildError(f"pushing to {host} needs the Azure CLI (`az acr login`), which could not run: {exc}") from None
    if done.returncode != 0 or not done.stdout.strip():
        why = (done.stderr.strip().splitlines() or ["no token"])[-1]
        raise ImageBuildError(f"`az acr login --name {name}` failed ({why}); run `az login` first")
    return {"username": "00000000-0000-0000-0000-000000000000", "password": done.stdout.strip()}


# ---- runner's image layer ----------------------------------------------------------------------
def _pkg_dir(module: Any) -> str:
    return os.path.dirname(os.path.abspath(module.__file__))


def _tree(src: str, inside: str, python_only: bool = False) -> list[tuple[str, str]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(".pyc") or (python_only and not f.endswith(".py")):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)
            out.append((f"{inside}/{rel}", path))
    return out


def _layer_files(image: Any, app_root: str | None) -> list[tuple[str, str]]:
    """(path in the image, path here) for runner's layer: runner and cloudpickle on CLIENT_DIR,
    redis where runner._store finds it, the image's copy=False mounts (the docker provider bind-mounts those), and the
    app's Python files at APP_ROOT."""
    import cloudpickle
    import redis

    import runner

    from .._store._redis import DEPS_DIR

    files = []
    for module in (runner, cloudpickle):
        files += _tree(_pkg_dir(module), f"{CLIENT_DIR}/{module.__name__}")
    files += _tree(_pkg_dir(redis), f"{DEPS_DIR}/redis")  # where runner._store looks for it, as on docker
    for mount in getattr(image, "mounts", ()):
        if os.path.isdir(mount.source):
            from .._image import local_files

            files += [(f"{mount.target.rstrip('/')}/{rel}", path) for path, rel in local_files(mount.source, mount.ignore)]
        else:
            files.append((mount.target, mount.source))
    if app_root:
        files += _tree(app_root, APP_ROOT, python_only=True)
    return files


def _file_digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _context_tar(dockerfile: str, files: list[tuple[str, str]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for inside, path in files:
            tar.add(path, arcname="ctx/" + inside.lstrip("/"), recursive=False)
    buf.seek(0)
    return buf


def _image_env(client: Any, ref: str) -> dict[str, str]:
    config = client.images.get(ref).attrs.get("Config") or {}
    return dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)


# ---- the provider ------------------------------------------------------------------------------
class KubernetesProvider(Provider):
    """The provider of one app run on the stack's cluster; see the module docstring."""

    name = "kubernetes"

    def __init__(self):
        self.cluster = cluster()
        self.stack = self.cluster.stack
        self.kube = self.cluster.kube
        self.default_max_containers = int(os.environ.get(MAX_ENV) or 10)
        self._owner: dict | None = None
        self._owner_lock = threading.Lock()
        self._closed = threading.Event()
        self._functions: list[str] = []  # queue keys this run registered, removed at the end
        os.environ["RUNNER_STORE_URL"] = self.cluster.queue_url()  # Dict and Queue live on the stack's queue

    # ---- what the other providers check; the cluster checks the rest -------------------------
    def validate(self, image: Any, gpu, cpu, memory, fn_name: str) -> None:
        from .._k8s import gpu_placement

        try:
            gpu_placement(self.stack, gpu)
        except InvalidError as exc:
            raise InvalidError(f"{fn_name}: {exc}") from None

    def container_path(self, host_path: str) -> str:
        return APP_ROOT

    def web_bind(self, port: int) -> tuple[str, int]:
        from .._k8s import WEB_PORT

        return "0.0.0.0", port or WEB_PORT

    def start(self, req: Any, prepared: Any) -> Any:  # pragma: no cover - pools go through the queue
        raise ProviderError("the kubernetes provider starts pods through Deployments, not one by one")

    def alive(self, handle: Any) -> bool:  # pragma: no cover
        return False

    def exit_info(self, handle: Any) -> str:  # pragma: no cover
        return ""

    def stop(self, handle: Any) -> None:  # pragma: no cover
        return None

    def shell(self, req: Any, prepared: Any, command: str | None) -> int:
        raise ProviderError("`runner shell` runs on docker or embedded; on a cluster use "
                            "`kubectl exec -it` into a pod of the function")

    # ---- the run's owner ---------------------------------------------------------------------
    def owner(self, session: Any) -> tuple[dict, str]:
        """The run's owner ConfigMap and its uid, created on first use; heartbeaten until close."""
        from .._k8s import run_owner

        with self._owner_lock:
            if self._owner is None:
                self._sweep_owners()
                obj = run_owner(self.stack, session.app_name, session.id)
                obj["metadata"]["annotations"] = {HEARTBEAT_ANNOTATION: str(int(time.time()))}
                made = self.kube.create(obj)
                self._owner = {"obj": obj, "uid": made["metadata"]["uid"]}
                threading.Thread(target=self._heartbeat, name="runner-kube-heartbeat", daemon=True).start()
            return self._owner["obj"], self._owner["uid"]

    def _heartbeat(self) -> None:
        name = self._owner["obj"]["metadata"]["name"]
        while not self._closed.wait(OWNER_HEARTBEAT):
            try:
                self.kube.patch("ConfigMap", name, {"metadata": {"annotations": {
                    HEARTBEAT_ANNOTATION: str(int(time.time()))}}})
            except ProviderError:
                pass  # the next beat tries again; OWNER_TIMEOUT allows many misses

    def _sweep_owners(self) -> None:
        """Delete run owners whose client stopped heartbeating (killed, or its machine gone)."""
        from .._k8s._meta import LABEL_KIND, MANAGED_BY

        now = time.time()
        timeout = float(os.environ.get(OWNER_TIMEOUT_ENV) or OWNER_TIMEOUT)
        for cm in self.kube.list("ConfigMap", {MANAGED_BY: "runner", LABEL_KIND: "run"}):
            beat = ((cm.get("metadata") or {}).get("annotations") or {}).get(HEARTBEAT_ANNOTATION, "0")
            if beat.isdigit() and now - int(beat) > timeout:
                self.kube.delete("ConfigMap", cm["metadata"]["name"])

    def apply_owned(self, session: Any, manifests: list[dict]) -> None:
        from .._k8s import owned

        owner, uid = self.owner(session)
        for obj in owned(manifests, owner, uid):
            self.kube.apply(obj)

    # ---- pools ---------------------------------------------------------------------------------
    def workload(self, session: Any, target: Any, **kw: Any):
        from .._k8s import Workload

        opts = target.options
        if opts.max_containers is None:
            opts = dataclasses.replace(opts, max_containers=max(self.default_max_containers, opts.min_containers))
        image = self.cluster.image(target.image, target.app_root)
        return Workload(app=session.app_name, function=function_tag(target), run_id=session.id, image=image,
                        options=opts, **kw)

    def queue_pool(self, session: Any, target: Any) -> Any:
        """The pool of a queue-fed function of this run: its objects applied, its spec registered."""
        from ._kube_pools import KubePool

        if target.web is not None:
            raise InvalidError(f"{target.name} is a web function; it is served through the front door")
        w = self.workload(session, target)
        pool = KubePool.for_run(self, session, target, w)
        self._functions.append(w.queue_key)
        return pool

    def web_pool(self, session: Any, target: Any, label: str) -> Any:
        from ._kube_pools import KubeWebPool

        w = self.workload(session, target)
        self._functions.append(w.queue_key)
        return KubeWebPool(self, session, target, label, w)

    def close(self) -> None:
        """The end of the run: delete its owner (the garbage collector takes the rest) and its
        queue keys."""
        self._closed.set()
        with self._owner_lock:
            owner, self._owner = self._owner, None
        if owner is not None:
            try:
                self.kube.delete("ConfigMap", owner["obj"]["metadata"]["name"], propagation="Background")
            except ProviderError as exc:
                output().notice(f"runner: could not delete this run's objects from the cluster ({exc}); any later "
                                f"run deletes them once their heartbeat is {OWNER_TIMEOUT:g}s old")
        if self._functions:
            from .._plane import remove_function

            for key in self._functions:
                try:
                    remove_function(self.cluster.queue_url(), key)
                except Exception:  # noqa: BLE001 - keys of an ended run are only clutter
                    pass


def function_tag(target: Any) -> str:
    """The function's name in object names and labels; a class with parameters gets their hash."""
    return params_tag(target.name, target.params) if target.params else target.name


def params_tag(name: str, params: dict) -> str:
    """`name` with a hash of `params`: one class instance's name in object names and queue keys."""
    return f"{name}-{hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:8]}"


def pod_problem(pod: dict) -> str | None:
    """Why a pod cannot run its container, when it is stuck for good; None while it may still start."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return f"it cannot be scheduled: {cond.get('message') or 'no node fits'}"
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                                     "CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff"):
            return f"container {cs.get('name')}: {waiting.get('reason')}: {waiting.get('message') or ''}".rstrip(": ")
        ended = ((cs.get("lastState") or {}).get("terminated") or (cs.get("state") or {}).get("terminated") or {})
        if (cs.get("restartCount") or 0) >= 2 and ended.get("exitCode"):
            return f"container {cs.get('name')} keeps exiting (CrashLoopBackOff: exit code {ended['exitCode']})"
    if status.get("phase") == "Failed":
        return f"it failed ({status.get('reason') or 'see its log'})"
    return None


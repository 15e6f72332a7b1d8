"""A Kubernetes API stand-in on loopback that runs Pods as Docker containers (a test fixture).

    with KubeStandin() as kube:                      # or the `kube_standin` / `kube_api` fixtures
        core = kubernetes.client.CoreV1Api(kube.api_client())
        config.load_kube_config(kube.kubeconfig)     # for code that reads a kubeconfig

It serves the REST API over plain HTTP on 127.0.0.1 (a free port) to the official `kubernetes`
client: core/v1 Pods, Secrets, ConfigMaps, Services, ServiceAccounts, PVCs, Events, Namespaces,
Nodes; apps/v1 Deployments, ReplicaSets, StatefulSets; batch/v1 Jobs, CronJobs;
networking.k8s.io/v1 NetworkPolicies, Ingresses; policy/v1 PDBs; keda.sh/v1alpha1 ScaledObjects,
ScaledJobs, (Cluster)TriggerAuthentications; http.keda.sh HTTPScaledObjects.

The layout follows the cluster's parts: `_store` is the API server's storage (versions, watches,
deletion, GC) with `_types`, `_selectors`, `_patches` and `_validation` beside it; `_pods` is the
kubelet (a pod is a pause container plus one Docker container per container) and `_podrefs` what
it resolves from the spec (env, Secret and ConfigMap files, pull credentials); `_controllers` the
Deployment/ReplicaSet/Job controllers; `_keda` KEDA's operator and HPA for ScaledObjects with
redis-streams triggers; `_http_addon` the KEDA HTTP add-on's interceptor (on 127.0.0.1,
`web_url`) and scaler for HTTPScaledObjects; `_loopback` the Services backed by host unix sockets (`services=`) and
`_relay` the relay it and port-forwards run inside a pod's network namespace; `_server` the
HTTP and WebSocket face. docs/kubernetes.md, "The API stand-in", lists what it does and does not do.

Why not kmock: it is a good fake for request/response assertions, but it keeps no
resourceVersions, uids, label selection or GC, and has no WebSocket exec; the behaviour a
provider depends on would all have been overrides, so the stand-in is plain aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import secrets
import tempfile
import threading
from collections.abc import Iterator

import docker
import pytest
import yaml

from runner._context import pid_alive
from aiohttp import web

from ._controllers import Controllers
from ._http_addon import HttpAddon
from ._keda import Keda
from ._loopback import LoopbackServices
from ._pods import LABEL, PodRunner, remove_labelled
from ._rbac import Rbac
from ._server import make_app
from ._store import ApiError, Store

__all__ = ["IMAGE", "LABEL", "ApiError", "KubeStandin", "kube_api", "kube_standin", "standin", "sweep_stale"]

IMAGE = "python:3.11-slim-bookworm"
_counter = iter(range(1, 10**9))


class KubeStandin:
    """One stand-in API server. start() returns self; stop() removes every container and volume it made.

    rbac: the rules of a Role in `namespace` that the `kubeconfig`'s user (a ServiceAccount) is
    bound to, enforced as the API server's authorizer does (see _rbac); api_client() and
    `admin_kubeconfig` act as an administrator.

    services maps a Service name (in `namespace`, or "name.namespace") to (absolute unix socket
    path on the host, port): every pod reaches `name.<ns>.svc.cluster.local:port` (and the short
    forms) as a connection to that socket, and KEDA triggers whose address names it read it; see
    _loopback. The pause image must have python3 for these and for port-forwards.
    """

    def __init__(self, namespaces: tuple[str, ...] = ("default", "kube-system", "runner"),
                 node_labels: dict[str, str] | None = None, node_resources: dict[str, str] | None = None,
                 token: str | None = None, pause_image: str = IMAGE, namespace: str = "runner",
                 services: dict[str, tuple[str, int]] | None = None, rbac: list[dict] | None = None,
                 service_account: str = "default"):
        self.instance = f"{os.getpid()}-{next(_counter)}"
        self.namespace, self.token = namespace, token
        if rbac is not None:  # the kubeconfig's user is the ServiceAccount; api_client() an administrator
            self.token = token or secrets.token_hex(16)
            self.rbac: Rbac | None = Rbac(tuple(rbac), namespace, service_account, secrets.token_hex(16))
        else:
            self.rbac = None
        self.services = LoopbackServices(services or {}, namespace)
        self.docker = docker.from_env()
        self.store = Store(namespaces)
        info = self.docker.info()
        self.node = self.store.create(self.store.resource("", "nodes"), "", {
            "metadata": {"name": "kube-standin", "labels": {
                "kubernetes.io/hostname": "kube-standin", "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "docker"} | (node_labels or {})},
            "spec": {}})
        resources = {"cpu": str(info.get("NCPU", 1)), "memory": f"{info.get('MemTotal', 2**30) // 1024}Ki",
                     "pods": "110", "ephemeral-storage": "100Gi"} | (node_resources or {})
        self.node = self.store.update_status(self.store.resource("", "nodes"), "", "kube-standin", {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "nodeInfo": {"containerRuntimeVersion": f"docker://{info.get('ServerVersion', '')}",
                         "kubeletVersion": "v1.31.0-kube-standin", "operatingSystem": "linux",
                         "architecture": "amd64"}})
        self.runner = PodRunner(self.store, self.instance, self.node, self.docker, pause_image, self.services)
        self.controllers = Controllers(self.store)
        self.keda = Keda(self.store, self.services)
        self.http_addon = HttpAddon(self.store, self.runner, self.docker)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._clients: list = []
        self._dir = tempfile.mkdtemp(prefix="kube-standin-")
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KubeStandin:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._http = web.AppRunner(make_app(self.store, self.runner, self.token, self.rbac), shutdown_timeout=1.0,
                                           handle_signals=False, access_log=None)
                loop.run_until_complete(self._http.setup())
                site = web.TCPSite(self._http, "127.0.0.1", 0)
                loop.run_until_complete(site.start())
                self.port = site._server.sockets[0].getsockname()[1]
            except BaseException as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._http.cleanup())
            pending = asyncio.all_tasks(loop)  # watches and log follows whose clients went quiet
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name="kube-standin-http", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        self.controllers.start()
        self.keda.start()
        self.http_addon.start()
        return self

    @property
    def web_url(self) -> str:
        """The HTTP add-on's interceptor: where a stack's front door would send its web traffic."""
        return self.http_addon.url

    def stop(self) -> None:
        self.http_addon.stop()
        self.keda.stop()
        self.controllers.stop()
        self.runner.shutdown()
        for client in self._clients:
            client.close()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        for path in pathlib.Path(self._dir).glob("*"):
            path.unlink()
        os.rmdir(self._dir)
        self.docker.close()  # its pooled connections to the daemon, which a test session would pile up

    def __enter__(self) -> KubeStandin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # clients

    def configuration(self):
        import kubernetes.client

        config = kubernetes.client.Configuration()
        config.host = self.url
        if self.token:
            config.api_key = {"authorization": f"Bearer {self.token}"}
        return config

    def api_client(self):
        """A fresh kubernetes.client.ApiClient for this server (closed by stop())."""
        import kubernetes.client

        client = kubernetes.client.ApiClient(self.configuration())
        self._clients.append(client)
        return client

    @property
    def kubeconfig(self) -> str:
        """A kubeconfig file whose current context points here, with namespace `runner`; its user
        is the ServiceAccount bound to the `rbac` Role when there is one."""
        return self._kubeconfig("kubeconfig", self.rbac.token if self.rbac else self.token)

    @property
    def admin_kubeconfig(self) -> str:
        """The same as an administrator, for a test acting as the cluster (a preemption, say)."""
        return self._kubeconfig("admin-kubeconfig", self.token)

    def _kubeconfig(self, name: str, token: str | None) -> str:
        path = pathlib.Path(self._dir, name)
        if not path.exists():
            user = {"token": token} if token else {}
            path.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "kube-standin", "preferences": {},
                "clusters": [{"name": "kube-standin", "cluster": {"server": self.url}}],
                "users": [{"name": "kube-standin", "user": user}],
                "contexts": [{"name": "kube-standin", "context": {"cluster": "kube-standin",
                                                                  "user": "kube-standin",
                                                                  "namespace": self.namespace}}]}))
        return str(path)

    def containers(self, all: bool = True) -> list:
        """This instance's Docker containers (pause containers included), for tests that look underneath."""
        return self.docker.containers.list(all=all, filters={"label": f"{LABEL}={self.instance}"})


def sweep_stale(client: docker.DockerClient | None = None) -> None:
    """Removes the containers and volumes of stand-ins whose test process died without stopping them."""
    own = client is None
    client = client or docker.from_env()
    try:
        owners = {c.labels.get(LABEL, "") for c in client.containers.list(all=True, filters={"label": LABEL})}
        owners |= {(v.attrs.get("Labels") or {}).get(LABEL, "") for v in client.volumes.list(filters={"label": LABEL})}
        for owner in owners:
            pid = owner.split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                remove_labelled(client, f"{LABEL}={owner}")
    finally:
        if own:
            client.close()


    return True


def _require_docker() -> None:
    from conftest import require_docker  # tests/conftest.py: skip without a daemon, fail under CI=true

    require_docker()


@contextlib.contextmanager
def standin(**options) -> Iterator[KubeStandin]:
    """A started KubeStandin(**options), as the fixture makes one (skipped without Docker), stopped after."""
    _require_docker()
    sweep_stale()
    kube = KubeStandin(**options).start()
    try:
        yield kube
    finally:
        kube.stop()


@pytest.fixture
def kube_standin() -> Iterator[KubeStandin]:
    """A started stand-in; everything it created in Docker is gone after the test."""
    with standin() as kube:
        yield kube


@pytest.fixture
def kube_api(kube_standin: KubeStandin):
    """A kubernetes.client.ApiClient configured for the stand-in."""
    return kube_standin.api_client()

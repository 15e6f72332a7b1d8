"""The Kubernetes API as the kubernetes provider uses it: apply, get, delete, list and watch the
objects `runner._k8s` renders, by kind, through one official-client ApiClient; and port-forwards.

The renderers produce plain dicts of a fixed set of kinds (`KINDS`), so objects go through
`ApiClient.call_api` on their REST paths instead of through one typed API class per kind: one
code path for core, apps, batch, networking and the KEDA custom resources alike.

Errors come out as `KubeError` (status, reason, the API's message), which the provider turns into
one line for the user.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

from ..exception import InvalidError, ProviderError

__all__ = ["KINDS", "Kube", "KubeError", "PortForward"]

# kind -> (apiVersion, plural); every kind the provider creates or reads.
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "Service": ("v1", "services"),
    "Pod": ("v1", "pods"),
    "Deployment": ("apps/v1", "deployments"),
    "ReplicaSet": ("apps/v1", "replicasets"),
    "Job": ("batch/v1", "jobs"),
    "CronJob": ("batch/v1", "cronjobs"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "ScaledObject": ("keda.sh/v1alpha1", "scaledobjects"),
    "TriggerAuthentication": ("keda.sh/v1alpha1", "triggerauthentications"),
    "HTTPScaledObject": ("http.keda.sh/v1alpha1", "httpscaledobjects"),
}


class KubeError(ProviderError):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def load_client(kubeconfig: str, context: str | None = None):
    """An ApiClient from a kubeconfig's text (the stack's `kubeconfig` output)."""
    import yaml
    from kubernetes import config

    try:
        data = yaml.safe_load(kubeconfig)
    except yaml.YAMLError as exc:
        raise InvalidError(f"the stack's kubeconfig is not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not data.get("clusters"):
        raise InvalidError("the stack's kubeconfig names no cluster; run `pulumi up` again or check its kubeconfig output")
    try:
        return config.new_client_from_config_dict(data, context=context)
    except Exception as exc:  # noqa: BLE001 - the client raises ConfigException and plain errors alike
        raise InvalidError(f"the stack's kubeconfig cannot be used ({exc})") from None


class Kube:
    """One namespace of one cluster, through `api` (a kubernetes.client.ApiClient)."""

    def __init__(self, api: Any, namespace: str):
        self.api, self.namespace = api, namespace
        self.server = api.configuration.host
        self._stream_lock = threading.Lock()
        self._stream_api: Any = None

    # ---- REST --------------------------------------------------------------------------------
    def path(self, kind: str, name: str | None = None, sub: str | None = None) -> str:
        try:
            version, plural = KINDS[kind]
        except KeyError:
            raise InvalidError(f"the kubernetes provider does not manage objects of kind {kind}") from None
        base = f"/api/{version}" if "/" not in version else f"/apis/{version}"
        out = f"{base}/namespaces/{self.namespace}/{plural}"
        if name:
            out += f"/{name}"
        if sub:
            out += f"/{sub}"
        return out

    def call(self, method: str, path: str, body: Any = None, query: list | None = None,
             content_type: str = "application/json", timeout: float = 30) -> Any:
        from kubernetes.client.rest import ApiException

        try:
            resp = self.api.call_api(
                path, method, query_params=query or [], body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                auth_settings=["BearerToken"], _return_http_data_only=True,
                _preload_content=False, _request_timeout=timeout)
            data = json.loads(resp.data or b"null")
        except ApiException as exc:
            raise _error(exc, method, path) from None
        except Exception as exc:  # noqa: BLE001 - urllib3 connection errors and the like
            raise ProviderError(f"the Kubernetes API at {self.server} does not answer ({type(exc).__name__}: "
                                f"{_first_line(str(exc))}); check the stack's kubeconfig and that the cluster is up") from None
        return data

    def get(self, kind: str, name: str) -> dict | None:
        try:
            return self.call("GET", self.path(kind, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, selector: dict[str, str] | None = None) -> list[dict]:
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in selector.items()))] if selector else []
        return (self.call("GET", self.path(kind), query=query) or {}).get("items") or []

    def create(self, obj: dict) -> dict:
        return self.call("POST", self.path(obj["kind"]), obj)

    def apply(self, obj: dict) -> dict:
        """Create `obj`, or replace what is there under its name (a merge patch of its spec, labels
        and data, so fields others own, such as a scaled Deployment's replicas, are kept unless
        `obj` sets them)."""
        try:
            return self.create(obj)
        except KubeError as exc:
            if exc.status != 409:
                raise
        patch = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
        return self.call("PATCH", self.path(obj["kind"], obj["metadata"]["name"]), patch,
                         content_type="application/merge-patch+json")

    def patch(self, kind: str, name: str, patch: dict, sub: str | None = None) -> dict:
        return self.call("PATCH", self.path(kind, name, sub), patch, content_type="application/merge-patch+json")

    def delete(self, kind: str, name: str, propagation: str = "Background", grace: int | None = None) -> bool:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            self.call("DELETE", self.path(kind, name), body)
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    def scale(self, name: str, replicas: int) -> None:
        self.patch("Deployment", name, {"spec": {"replicas": replicas}}, sub="scale")

    def pods(self, selector: dict[str, str]) -> list[dict]:
        return self.list("Pod", selector)

    def log(self, pod: str, container: str = "main", tail: int | None = None) -> str:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        kw: dict[str, Any] = {"container": container, "_preload_content": False}
        if tail:
            kw["tail_lines"] = tail
        try:
            return core.read_namespaced_pod_log(pod, self.namespace, **kw).data.decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - a log is a courtesy in an error message
            return ""

    def secret_value(self, name: str, key: str) -> str:
        import base64

        got = self.get("Secret", name)
        if got is None or key not in (got.get("data") or {}):
            raise ProviderError(f"the stack's Secret {self.namespace}/{name} (key {key!r}) is not in the cluster; "
                                "run `pulumi up` on infra/ again")
        return base64.b64decode(got["data"][key]).decode()

    def port_forward(self, pod: str, port: int) -> PortForward:
        return PortForward(self, pod, port)

    def websocket(self, what: str, pod: str, **kwargs: Any) -> Any:
        """A WebSocket to `pod`'s "exec" or "portforward" (kubernetes.stream's client objects).
        `stream()` swaps its ApiClient's request method for the length of the call, so these go
        through a client of their own, one handshake at a time, never racing the REST calls."""
        from kubernetes import client
        from kubernetes.stream import portforward, stream

        with self._stream_lock:
            if self._stream_api is None:
                self._stream_api = client.ApiClient(configuration=self.api.configuration)
            core = client.CoreV1Api(self._stream_api)
            if what == "exec":
                return stream(core.connect_get_namespaced_pod_exec, pod, self.namespace, **kwargs)
            return portforward(core.connect_get_namespaced_pod_portforward, pod, self.namespace, **kwargs)


class PortForward:
    """A loopback listener (127.0.0.1, a free port) whose every connection is carried to `port` of
    `pod` through the API's pods/portforward (one WebSocket per connection), as `kubectl
    port-forward` does: the client never needs a route to pod addresses."""

    def __init__(self, kube: Kube, pod: str, port: int):
        self.kube, self.pod, self.port = kube, pod, port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.closed = False
        threading.Thread(target=self._accept, name=f"runner-forward-{pod}", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._carry, args=(conn,), daemon=True).start()

    def _carry(self, conn: socket.socket) -> None:
        try:
            pf = self.kube.websocket("portforward", self.pod, ports=str(self.port))
            remote = pf.socket(self.port)
        except Exception:  # noqa: BLE001 - the pod went away: the connection just closes
            conn.close()
            return
        remote.setblocking(True)
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_WR if s is dst else socket.SHUT_RD)
                    except OSError:
                        pass
                done.set()

        up = threading.Thread(target=pump, args=(conn, remote), daemon=True)
        up.start()
        pump(remote, conn)
        up.join(5)
        for s in (conn, remote):
            try:
                s.close()
            except OSError:
                pass
        try:
            pf.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        self.closed = True
        try:
            self.listener.close()
        except OSError:
            pass


def wait_for(what: str, check, timeout: float, interval: float = 0.1) -> Any:
    """Poll `check()` until it returns something truthy; ProviderError naming `what` at `timeout`."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise ProviderError(f"{what} did not happen within {timeout:g}s")
        time.sleep(interval)


def _error(exc: Any, method: str, path: str) -> KubeError:
    reason, message = exc.reason or "", ""
    try:
        body = json.loads(exc.body or "{}")
        reason = body.get("reason") or reason
        message = body.get("message") or ""
    except (TypeError, ValueError):
        message = _first_line(str(exc.body or ""))
    status = int(exc.status or 0)
    hint = ""
    if status in (401, 403):
        hint = "; the stack's kubeconfig lacks the rights the runner needs (see docs/kubernetes.md)"
    return KubeError(status, reason, f"the Kubernetes API refused {method} {path}: {status} {reason}"
                     f"{': ' + message if message else ''}{hint}")


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""

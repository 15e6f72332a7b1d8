"""The stand-in's KEDA HTTP add-on: the interceptor and the scaler, for HTTPScaledObjects.

On a cluster, the add-on's interceptor (behind the stack's front door, a LoadBalancer Service)
routes every request by its Host header, and path prefixes when given, to the HTTPScaledObject's
Service, holding it while that Service has no ready endpoint; its scaler tells KEDA how many
requests are in flight, and KEDA scales the Deployment between replicas.min and replicas.max: up
from zero on the first request, back to min once none came for scaledownPeriod.

Here both are one object with a listener on 127.0.0.1 (`url`: the stack's `web_endpoint`):

- routing: the first request head on a client connection picks the HTTPScaledObject whose
  `hosts` hold its Host (port dropped, case ignored) and whose `pathPrefixes`, when given, hold
  a prefix of its path; none is a 404, as the interceptor answers. The connection then stays
  with that backend (clients keep one host per connection).
- in flight: a routed client connection counts as one request until it closes, and scales the
  target to ceil(in flight / scalingMetric.concurrency.targetValue (default 100)), at least 1,
  at most replicas.max (default 100); with none for scaledownPeriod (default 300 s), down to
  replicas.min (default 0).
- endpoint: a Running, Ready pod (not being deleted) matching the Service's selector, at the
  pod port the Service's port targets (a name is looked up among the pod's container ports),
  reached through the relay in its pause container as a port-forward is (see _relay.py). The
  stand-in runs no readiness probes, so a refused connect (the server is not listening yet)
  counts as not ready: nothing was sent (the relay says when it is connected), so it is tried
  again 0.2 s later. No endpoint within `wait_timeout` is a 502.
- status: the Ready condition (reason HTTPScaledObjectIsReady), targetWorkload, targetService.

Not modelled: the requestRate metric, TLS, the interceptor's own replicas and timeouts beyond the
wait, requests rather than connections as the unit in flight.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from dataclasses import dataclass

import docker
from docker.utils.socket import SocketError, next_frame_header, read_exactly

from ._loopback import relay_command
from ._relay import CONNECTED
from ._store import Store, now

__all__ = ["HttpAddon"]

log = logging.getLogger(__name__)
HEAD_LIMIT = 64 * 1024
DEFAULTS = {"min": 0, "max": 100, "scaledownPeriod": 300, "targetValue": 100}


@dataclass
class _State:
    in_flight: int = 0
    last_active: float = 0.0


def _answer(conn: socket.socket, status: int, reason: str, text: str) -> None:
    body = (text + "\n").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        conn.sendall(head + body)
    except OSError:
        pass


def _host_and_path(head: bytes) -> tuple[str, str]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    path = parts[1] if len(parts) >= 3 else "/"
    host = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "host":
            host = value.strip().lower()
    if host.startswith("["):
        host = host.split("]")[0] + "]"
    else:
        host = host.rsplit(":", 1)[0] if ":" in host else host
    return host, path


class HttpAddon:
    def __init__(self, store: Store, runner, client: docker.DockerClient, wait_timeout: float = 60.0):
        self.store, self.runner, self.docker, self.wait_timeout = store, runner, client, wait_timeout
        self._states: dict[tuple[str, str], _State] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, name="kube-standin-interceptor", daemon=True),
                         threading.Thread(target=self._scale_loop, name="kube-standin-http-scaler", daemon=True)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        with self._lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=5)

    def _res(self, group: str, plural: str):
        return self.store.resource(group, plural)

    # the interceptor

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _route(self, host: str, path: str) -> dict | None:
        for hso in self.store.list(self._res("http.keda.sh", "httpscaledobjects")):
            spec = hso.get("spec") or {}
            hosts = [h.lower() for h in spec.get("hosts") or []]
            prefixes = spec.get("pathPrefixes") or []
            if host in hosts and (not prefixes or any(path.startswith(p) for p in prefixes)):
                return hso
        return None

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
                if len(head) > HEAD_LIMIT:
                    return _answer(conn, 431, "Request Header Fields Too Large", "request head over 64 KiB")
            host, path = _host_and_path(head)
            hso = self._route(host, path)
            if hso is None:
                return _answer(conn, 404, "Not Found", f"Host {host!r} is not in the routing table")
            key = (hso["metadata"]["namespace"], hso["metadata"]["name"])
            self._arrive(key, hso)
            try:
                self._forward(conn, hso, head)
            finally:
                self._leave(key)
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _forward(self, conn: socket.socket, hso: dict, head: bytes) -> None:
        deadline = time.monotonic() + self.wait_timeout
        while not self._stop.is_set():
            for pod, port in self._endpoints(hso):
                raw = self._connect(pod, port, head)
                if raw is not None:
                    return self._pump(conn, raw)
            if time.monotonic() > deadline:
                ref = hso["spec"]["scaleTargetRef"]
                return _answer(conn, 502, "Bad Gateway", f"no endpoint of service {ref.get('service')} became ready "
                               f"within {self.wait_timeout:g}s")
            time.sleep(0.2)

    def _endpoints(self, hso: dict) -> list[tuple[dict, int]]:
        ns, ref = hso["metadata"]["namespace"], hso["spec"]["scaleTargetRef"]
        service = self.store.find(self._res("", "services"), ns, ref.get("service", ""))
        if service is None:
            return []
        selector = ",".join(f"{k}={v}" for k, v in sorted((service["spec"].get("selector") or {}).items()))
        ports = service["spec"].get("ports") or []
        sport = next((p for p in ports if p.get("port") == ref.get("port") or
                      (ref.get("portName") and p.get("name") == ref.get("portName"))), None)
        if sport is None or not selector:
            return []
        found = []
        for pod in self.store.list(self._res("", "pods"), ns, selector):
            status = pod.get("status") or {}
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
            if pod["metadata"].get("deletionTimestamp") or status.get("phase") != "Running" or not ready:
                continue
            target = sport.get("targetPort", sport["port"])
            if isinstance(target, str):
                named = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
                         if p.get("name") == target]
                if not named:
                    continue
                target = named[0]
            found.append((pod, int(target)))
        return found

    def _connect(self, pod: dict, port: int, head: bytes) -> socket.socket | None:
        """The pod's relay connected to `port`, with `head` sent; None when the connect was refused
        (nothing was delivered then)."""
        try:
            cid = self.runner.sandbox(pod["metadata"]["namespace"], pod["metadata"]["name"])
            api = self.docker.api
            exec_id = api.exec_create(cid, relay_command("connect", str(port), "announce"), stdin=True,
                                      stdout=True, stderr=True)["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except Exception:  # noqa: BLE001 - the pod went away under us: not an endpoint
            return None
        raw = getattr(sock, "_sock", sock)
        try:
            first = _frame(raw)
            if first is not None and first[0] == 2 and first[1].startswith(CONNECTED.encode()):
                raw.sendall(head)
                return raw
        except OSError:
            pass
        raw.close()
        return None

    def _pump(self, conn: socket.socket, raw: socket.socket) -> None:
        def upstream() -> None:
            try:
                while data := conn.recv(65536):
                    raw.sendall(data)
            except OSError:
                pass
            try:  # the client is done sending: so is the relay's stdin, and the answer still comes back
                raw.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=upstream, daemon=True).start()
        try:
            while (item := _frame(raw)) is not None:
                if item[0] == 1:
                    conn.sendall(item[1])
        except OSError:
            pass
        finally:
            raw.close()

    # the scaler

    def _arrive(self, key: tuple[str, str], hso: dict) -> None:
        with self._lock:
            state = self._states.setdefault(key, _State())
            state.in_flight += 1
            state.last_active = time.monotonic()
            in_flight = state.in_flight
        spec = hso["spec"]
        replicas = spec.get("replicas") or {}
        target = ((spec.get("scalingMetric") or {}).get("concurrency") or {}).get("targetValue") or \
            spec.get("targetPendingRequests") or DEFAULTS["targetValue"]
        high = replicas.get("max", DEFAULTS["max"])
        want = min(high, max(1, replicas.get("min", DEFAULTS["min"]), math.ceil(in_flight / target)))
        self._scale(key[0], spec["scaleTargetRef"].get("name", ""), want, up=True)

    def _leave(self, key: tuple[str, str]) -> None:
        with self._lock:
            state = self._states[key]
            state.in_flight -= 1
            state.last_active = time.monotonic()

    def _scale(self, ns: str, name: str, want: int, up: bool) -> None:
        res = self._res("apps", "deployments")
        target = self.store.find(res, ns, name)
        if target is None:
            return
        current = target["spec"].get("replicas", 1)
        if (up and current < want) or (not up and current > want):
            self.store.patch(res, ns, name, "application/merge-patch+json", {"spec": {"replicas": want}})

    def _scale_loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._scale_down()
            except Exception:  # noqa: BLE001 - an object deleted mid-pass; the next pass sees the rest
                log.exception("stand-in HTTP add-on: scaling pass failed")

    def _scale_down(self) -> None:
        live = set()
        for hso in self.store.list(self._res("http.keda.sh", "httpscaledobjects")):
            meta, spec = hso["metadata"], hso["spec"]
            key = (meta["namespace"], meta["name"])
            live.add(key)
            with self._lock:
                state = self._states.setdefault(key, _State(last_active=time.monotonic()))
                idle = state.in_flight == 0 and time.monotonic() - state.last_active >= spec.get(
                    "scaledownPeriod", DEFAULTS["scaledownPeriod"])
            if idle:
                self._scale(meta["namespace"], spec["scaleTargetRef"].get("name", ""),
                            (spec.get("replicas") or {}).get("min", DEFAULTS["min"]), up=False)
            if not (hso.get("status") or {}).get("conditions"):
                self.store.update_status(self._res("http.keda.sh", "httpscaledobjects"), meta["namespace"],
                                         meta["name"], {
                                             "conditions": [{"type": "Ready", "status": "True",
                                                             "reason": "HTTPScaledObjectIsReady",
                                                             "message": "Finished object creation",
                                                             "timestamp": now()}],
                                             "targetWorkload": f"apps/v1/Deployment/{spec['scaleTargetRef'].get('name')}",
                                             "targetService": f"{spec['scaleTargetRef'].get('service')}:"
                                                              f"{spec['scaleTargetRef'].get('port')}"})
        with self._lock:
            for key in set(self._states) - live:
                if self._states[key].in_flight == 0:
                    del self._states[key]


def _frame(raw: socket.socket) -> tuple[int, bytes] | None:
    """One frame of Docker's multiplexed exec stream (1 stdout, 2 stderr), or None at its end."""
    stream, size = next_frame_header(raw)
    if stream < 0:
        return None
    try:
        return stream, read_exactly(raw, size)
    except SocketError:
        return None

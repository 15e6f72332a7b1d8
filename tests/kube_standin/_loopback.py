"""Loopback services: cluster Services whose backend is a unix socket on the host.

`KubeStandin(services={"runner-queue": ("/abs/dir/redis.sock", 6379)})` models a ClusterIP
Service in front of a server outside the cluster (the stack's queue, say): every pod reaches
`runner-queue.<ns>.svc.cluster.local:6379`, and the connection lands on the host's socket.

How, without a route to any container address: each Service gets its own loopback address,
127.0.1.N, as its "cluster IP"; the pod's pause container gets /etc/hosts entries for the
Service's DNS names (its containers share that file with its network namespace), the socket's
directory bind-mounted, and runs `_relay.py serve` as its command: a listener on 127.0.1.N:PORT
inside the pod's namespace that carries each connection to the socket. Nothing listens on a host
interface, and the stand-in's KEDA resolves a trigger's `address` through the same map.

Names resolve the way a pod's DNS search path would resolve them: `name.ns`, `name.ns.svc` and
`name.ns.svc.cluster.local` from any namespace, the bare `name` only from the Service's own.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from docker.types import Mount

from ._relay import READY

__all__ = ["READY", "LoopbackService", "LoopbackServices", "relay_command"]

RELAY_SOURCE = pathlib.Path(__file__).with_name("_relay.py").read_text()
MOUNTS = "/run/kube-standin/services"  # where the sockets' directories appear in the pause container


def relay_command(*args: str) -> list[str]:
    """The command that runs the in-pod relay (see _relay.py) on the pause container's python3."""
    return ["python3", "-c", RELAY_SOURCE, *args]


@dataclass(frozen=True)
class LoopbackService:
    name: str
    namespace: str
    socket: str  # absolute path on the host
    port: int
    address: str  # its "cluster IP", a loopback address inside every pod

    def names(self, namespace: str) -> list[str]:
        """The host names that resolve to this Service from a pod (or client) in `namespace`."""
        full = [f"{self.name}.{self.namespace}", f"{self.name}.{self.namespace}.svc",
                f"{self.name}.{self.namespace}.svc.cluster.local"]
        return ([self.name] if namespace == self.namespace else []) + full

    @property
    def mount_dir(self) -> str:
        return f"{MOUNTS}/{self.namespace}/{self.name}"

    def relay_spec(self) -> str:
        return f"{self.address}:{self.port}={self.mount_dir}/{os.path.basename(self.socket)}"


class LoopbackServices:
    """The services= map of a KubeStandin, parsed and checked once."""

    def __init__(self, services: dict[str, tuple[str, int]], namespace: str):
        self.entries: list[LoopbackService] = []
        for i, (key, (path, port)) in enumerate(sorted(services.items())):
            name, _, ns = key.partition(".")
            if not os.path.isabs(path):
                raise ValueError(f"services[{key!r}]: {path!r} is not an absolute path to a unix socket")
            if not (isinstance(port, int) and 0 < port < 65536):
                raise ValueError(f"services[{key!r}]: port {port!r} is not a TCP port")
            self.entries.append(LoopbackService(name, ns or namespace, path, port, f"127.0.1.{i + 1}"))
        if len(self.entries) > 254:
            raise ValueError("at most 254 loopback services (one 127.0.1.N address each)")

    def __bool__(self) -> bool:
        return bool(self.entries)

    def resolve(self, host: str, port: int, namespace: str) -> LoopbackService | None:
        """The Service that `host:port` reaches from `namespace`, or None (no such name, or not that port)."""
        return next((s for s in self.entries if s.port == port and host in s.names(namespace)), None)

    def known(self, namespace: str) -> list[str]:
        """The host:port forms that resolve from `namespace`, for error messages."""
        return [f"{s.names(namespace)[-1]}:{s.port}" for s in self.entries]

    # what a pod's pause container gets

    def extra_hosts(self, namespace: str) -> dict[str, str]:
        return {name: s.address for s in self.entries for name in s.names(namespace)}

    def mounts(self) -> list[Mount]:
        return [Mount(s.mount_dir, os.path.dirname(s.socket), type="bind") for s in self.entries]

    def pause_command(self) -> list[str]:
        return relay_command("serve", *(s.relay_spec() for s in self.entries))

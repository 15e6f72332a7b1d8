"""`LocalRunner`: the local equivalent of a cloud stack, for runner's docker provider.

There is no Kubernetes cluster here. What the clouds put in a cluster, this puts in Docker
containers on this machine, reachable from this machine only:

    network     `<namespace>-local`, a bridge whose published ports default to 127.0.0.1
                (`com.docker.network.bridge.host_binding_ipv4`), so a port published without an
                address still lands on loopback
    registry    `registry:2` (pinned) on 127.0.0.1:`registry_port`, storing under DATA/registry;
                Docker trusts plain HTTP to 127.0.0.0/8, so pushes need no TLS set-up
    queue       Redis on a unix socket in DATA/queue-socket (and on 127.0.0.1:`queue_port` only
                when one is given), `requirepass` from a Pulumi secret, data in DATA/queue-data
    volumes     DATA/volumes, the volumes root (`bucket_url` file:///DATA/volumes)
    secret      the queue password as runner's named secret `queue_secret_name` (key `password`,
                `runner secret list` shows it), written and deleted with the stack

Why a unix socket: containers the docker provider starts cannot reach the host's loopback, and a
TCP port on any other address is reachable from the network. runner's store already reaches a
Redis through a socket directory it bind-mounts into containers (`RUNNER_STORE_URL=unix://...`),
so `queue_endpoint` is such a URL. The socket has a directory of its own, so containers that get
it mounted do not also see Redis' data files.

Why the password lives in a config file and a runner secret: container environment is readable
by `docker inspect`, so the password reaches Redis as an uploaded config file (`requirepass`)
and reaches runner as a named secret (an owner-only file under RUNNER_HOME), which is what
`queue_secret_name` names on this cloud. In Pulumi's state it is a secret.

The containers run as the invoking user (uid:gid), with every capability dropped and
no-new-privileges, so what they write under DATA is that user's. `pulumi destroy` removes the
containers, the network and the named secret; it keeps DATA (images, queue data, volumes).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from infra.common import REDIS_IMAGE, queue_password

__all__ = ["REGISTRY_IMAGE", "LocalRunner", "LocalRunnerArgs", "default_data_dir", "runner_home"]

# Pinned: a registry:2 tag that moves would change what `pulumi up` runs without a diff here.
REGISTRY_IMAGE = "registry:2.8.3"

_SOCKET_DIR = "/run/runner-queue"  # inside the queue container
_CONF = "/etc/runner-queue.conf"  # the queue's config file (with requirepass), uploaded
_REGISTRY_PORT = 5000  # inside the registry container

# Run by `pulumi up` / `pulumi destroy` with this program's interpreter (which has runner
# installed); the password arrives on stdin, never on a command line.
_SAVE_SECRET = ("import sys; from runner import _secret; "
                "_secret.save(sys.argv[1], {'password': sys.stdin.read()}, force=True)")
_DELETE_SECRET = ("import sys; from runner import _secret; from runner.exception import NotFoundError\n"
                  "try: _secret.delete(sys.argv[1])\nexcept NotFoundError: pass")


def runner_home() -> str:
    """RUNNER_HOME as runner resolves it (`runner._home`), without creating it."""
    return os.path.abspath(os.environ.get("RUNNER_HOME") or os.path.join(os.path.expanduser("~"), ".runner"))


def default_data_dir() -> str:
    return os.path.join(runner_home(), "local-stack")


def _current_user() -> str:
    return f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else "0:0"


@dataclasses.dataclass
class LocalRunnerArgs:
    """How the local stack is set up; every default suits one developer machine."""

    # Where the registry's images, the queue's data and socket, and the volumes live.
    data_dir: str = dataclasses.field(default_factory=default_data_dir)
    registry_port: int = 5000  # published on 127.0.0.1 only
    queue_port: int | None = None  # None: the queue is on its unix socket only; else also 127.0.0.1:PORT
    registry_image: str = REGISTRY_IMAGE
    queue_image: str = REDIS_IMAGE
    queue_memory_mb: int = 1024  # the container's memory limit; Redis' maxmemory is 80% of it
    # The docker provider's equivalent of a namespace: container and network names start with it.
    namespace: str = "runner"
    queue_secret_name: str = "runner-queue-auth"  # runner's named secret holding key `password`
    queue_password: pulumi.Input[str] | None = None  # None: config secret runner:queuePassword, else random
    user: str = dataclasses.field(default_factory=_current_user)  # uid:gid the containers run as
    runner_home: str = dataclasses.field(default_factory=runner_home)  # where the named secret is written
    python: str = sys.executable  # the interpreter that writes and deletes the named secret

    def __post_init__(self) -> None:
        if not os.path.isabs(self.data_dir):
            raise ValueError(f"data_dir must be an absolute path, not {self.data_dir!r}")
        for field, port in (("registry_port", self.registry_port), ("queue_port", self.queue_port)):
            if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
                raise ValueError(f"{field} must be a port number from 1 to 65535, not {port!r}")
        if self.queue_port is not None and self.queue_port == self.registry_port:
            raise ValueError(f"queue_port and registry_port are both {self.queue_port}")

    def path(self, *parts: str) -> str:
        return os.path.join(self.data_dir, *parts)


def queue_config(args: LocalRunnerArgs, password: str) -> str:
    """The Redis config file: socket only (or also TCP), append-only, maxmemory 80% of the limit."""
    lines = [
        f"port {6379 if args.queue_port is not None else 0}",
        f"unixsocket {_SOCKET_DIR}/redis.sock",
        "unixsocketperm 660",
        "dir /data",
        "appendonly yes",
        f"maxmemory {args.queue_memory_mb * 1024 * 1024 * 4 // 5}",
        "maxmemory-policy noeviction",
        f"requirepass {password}",
    ]
    return "\n".join(lines) + "\n"


def _hardened(name: str, ns: str) -> dict:
    """What both containers share: no capabilities, no privilege escalation, restarted, labelled."""
    return {
        "name": f"{ns}-{name}",
        "capabilities": docker.ContainerCapabilitiesArgs(drops=["ALL"]),
        "security_opts": ["no-new-privileges:true"],
        "restart": "unless-stopped",
        "must_run": True,
        "wait": True,
        "wait_timeout": 120,
        "labels": [docker.ContainerLabelArgs(label="org.runner.namespace", value=ns),
                   docker.ContainerLabelArgs(label="org.runner.component", value=name)],
    }


def _bind(source: str, target: str) -> docker.ContainerMountArgs:
    return docker.ContainerMountArgs(type="bind", source=source, target=target)


class LocalRunner(pulumi.ComponentResource):
    """The local stack; outputs `registry_url`, `bucket_url`, `queue_endpoint`, `queue_secret_name`,
    `namespace` (all `pulumi.Output[str]`)."""

    registry_url: pulumi.Output[str]
    bucket_url: pulumi.Output[str]
    queue_endpoint: pulumi.Output[str]
    queue_secret_name: pulumi.Output[str]
    namespace: pulumi.Output[str]

    def __init__(self, name: str, args: LocalRunnerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("runner:local:LocalRunner", name, None, opts)
        ns = args.namespace
        child = pulumi.ResourceOptions(parent=self)
        dirs = {d: args.path(d) for d in ("registry", "queue-data", "queue-socket", "volumes")}

        # Docker refuses a bind mount whose source is missing; made here, owner-only, as this user.
        quoted = " ".join(shlex.quote(p) for p in (args.data_dir, *dirs.values()))
        made = command.local.Command(f"{name}-data-dirs", create=f"mkdir -p {quoted} && chmod 700 {quoted}",
                                     opts=child)
        after_dirs = pulumi.ResourceOptions(parent=self, depends_on=[made])

        network = docker.Network(f"{name}-network", name=f"{ns}-local", driver="bridge",
                                 options={"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"},
                                 labels=[docker.NetworkLabelArgs(label="org.runner.namespace", value=ns)], opts=child)

        # keep_locally: destroying the stack must not delete an image someone else uses.
        registry_image = docker.RemoteImage(f"{name}-registry-image", name=args.registry_image, keep_locally=True,
                                            opts=child)
        queue_image = docker.RemoteImage(f"{name}-queue-image", name=args.queue_image, keep_locally=True, opts=child)

        registry = docker.Container(
            f"{name}-registry",
            image=registry_image.image_id,
            user=args.user,
            envs=["REGISTRY_STORAGE_DELETE_ENABLED=true"],  # `runner image prune` can delete tags
            ports=[docker.ContainerPortArgs(internal=_REGISTRY_PORT, external=args.registry_port, ip="127.0.0.1")],
            mounts=[_bind(dirs["registry"], "/var/lib/registry")],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network.name, aliases=["registry"])],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "wget", "-q", "--spider", f"http://127.0.0.1:{_REGISTRY_PORT}/v2/"],
                interval="5s", timeout="3s", retries=10),
            opts=after_dirs, **_hardened("registry", ns))

        password = pulumi.Output.secret(queue_password(name, args.queue_password, self))
        queue_ports = [] if args.queue_port is None else [
            docker.ContainerPortArgs(internal=6379, external=args.queue_port, ip="127.0.0.1")]
        queue = docker.Container(
            f"{name}-queue",
            image=queue_image.image_id,
            user=args.user,
            # Not the image's docker-entrypoint.sh: run as root it chowns /data and drops to uid 999,
            # which could then not create the socket in this user's directory.
            entrypoints=["redis-server"],
            command=[_CONF],
            uploads=[docker.ContainerUploadArgs(file=_CONF, content=password.apply(lambda pw: queue_config(args, pw)))],
            memory=args.queue_memory_mb,
            ports=queue_ports,
            mounts=[_bind(dirs["queue-data"], "/data"), _bind(dirs["queue-socket"], _SOCKET_DIR)],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network.name, aliases=["queue"])],
            healthcheck=docker.ContainerHealthcheckArgs(tests=["CMD-SHELL", f"test -S {_SOCKET_DIR}/redis.sock"],
                                                        interval="2s", timeout="2s", retries=15),
            opts=after_dirs, **_hardened("queue", ns))

        # The password for runner itself: its named secret, written on up and deleted on destroy.
        py = shlex.quote(args.python)
        secret_arg = shlex.quote(args.queue_secret_name)
        secret = command.local.Command(
            f"{name}-queue-secret",
            create=f"{py} -c {shlex.quote(_SAVE_SECRET)} {secret_arg}",
            delete=f"{py} -c {shlex.quote(_DELETE_SECRET)} {secret_arg}",
            stdin=password,
            environment={"RUNNER_HOME": args.runner_home},
            opts=child)

        self.namespace = pulumi.Output.from_input(ns)
        # From the resources' ids, so whoever uses an output waits for what it names to exist.
        self.registry_url = registry.id.apply(lambda _: f"127.0.0.1:{args.registry_port}")
        self.bucket_url = made.id.apply(lambda _: f"file://{dirs['volumes']}")
        self.queue_endpoint = queue.id.apply(lambda _: f"unix://{dirs['queue-socket']}/redis.sock?db=0")
        self.queue_secret_name = secret.id.apply(lambda _: args.queue_secret_name)
        self.register_outputs({"namespace": self.namespace, "registry_url": self.registry_url,
                               "bucket_url": self.bucket_url, "queue_endpoint": self.queue_endpoint,
                               "queue_secret_name": self.queue_secret_name})

"""Providers: where containers run. Each is a small transport for work behind one interface.

The input plane (`runner._session`) decides what runs and when; a provider only builds images,
starts a container that runs the agent, reports whether it is alive, and stops it. The embedded
provider needs nothing installed and doubles as the fast test double; the docker provider runs
real containers. The kubernetes provider (`_kubernetes`) is the exception: it starts no container
itself but gives the session its own pools (`queue_pool`, `web_pool`), whose pods on a stack's
cluster pull inputs from the stack's queue.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import shutil
import signal
import subprocess
import threading
from typing import Any

from ..exception import InvalidError, ProviderError
from .._resources import GPU

PROVIDER_ENV = "RUNNER_PROVIDER"
NAMES = ("embedded", "docker", "kubernetes")
CLOUD_HINT = "run it on a cluster with GPUs instead: `runner --cloud gcp|aws|azure run ...` (see infra/)"


@dataclasses.dataclass
class ContainerRequest:
    """What one container needs: its image, environment, resources and how to reach the client."""

    name: str  # the function it serves, for labels and messages
    image: Any  # runner.Image or None
    env: dict[str, str]
    cpu: tuple[float, float | None] | None
    memory: tuple[float, float | None] | None
    gpu: tuple[GPU, ...]
    token: str
    socket_dir: str  # host directory holding the client's unix socket
    socket_name: str
    app_root: str | None  # host directory to make importable in the container
    session: str
    binds: list = dataclasses.field(default_factory=list)  # runner._mounts.Bind: volumes and the store
    ports: tuple = ()  # container ports to publish on the host's loopback (web functions)


class PreparedImages:
    """Each image built or found once per holder (a running app, a process's sandboxes), however
    many containers start from it. One lock per image: different images prepare in parallel."""

    def __init__(self, provider: Provider):
        self.provider = provider
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._done: dict[str, Any] = {}

    def __call__(self, image: Any) -> Any:
        key = image.digest() if image is not None else ""
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._done:
                self._done[key] = self.provider.prepare(image)
            return self._done[key]


class Provider(abc.ABC):
    name: str = ""
    default_max_containers: int = 4

    def validate(self, image: Any, gpu: tuple[GPU, ...], cpu, memory, fn_name: str) -> None:
        """Raise before anything runs if this provider cannot serve the function as asked."""
        if gpu:
            host = host_gpus()
            if not host:
                raise ProviderError(
                    f"{fn_name} asks for gpu {_gpu_text(gpu)}, but this host has no NVIDIA GPU "
                    f"(nvidia-smi lists none); {CLOUD_HINT}"
                )
            if not any(_gpu_fits(g, host) for g in gpu):
                raise ProviderError(
                    f"{fn_name} asks for gpu {_gpu_text(gpu)}, but this host has {', '.join(host)}; {CLOUD_HINT}"
                )
        cpus = os.cpu_count() or 1
        if cpu and cpu[0] > cpus:
            raise ProviderError(f"{fn_name} asks for cpu={cpu[0]:g}, but this host has {cpus} CPUs; lower it or {CLOUD_HINT}")
        if memory:
            total = _host_memory_mib()
            if total and memory[0] > total:
                raise ProviderError(
                    f"{fn_name} asks for memory={memory[0]:g} MiB, but this host has {total} MiB; lower it or {CLOUD_HINT}"
                )

    def prepare(self, image: Any) -> Any:
        """Build or find the image; return what `start` needs to run it."""
        return image

    @abc.abstractmethod
    def start(self, req: ContainerRequest, prepared: Any) -> Any:
        """Start a container running the agent; return a handle."""

    @abc.abstractmethod
    def alive(self, handle: Any) -> bool: ...

    @abc.abstractmethod
    def exit_info(self, handle: Any) -> str:
        """How the container ended, e.g. 'exit code 137 (out of memory)'."""

    @abc.abstractmethod
    def stop(self, handle: Any) -> None:
        """Kill and remove; idempotent."""

    def address(self, handle: Any, port: int) -> tuple[str, int]:
        """Where this host reaches a container's port (published on the loopback)."""
        return "127.0.0.1", port

    def web_bind(self, port: int) -> tuple[str, int]:
        """Where a web server in a container listens: (host, port), port 0 for any free port."""
        return "127.0.0.1", port

    @abc.abstractmethod
    def container_path(self, host_path: str) -> str:
        """Where a host path made importable for the app appears inside the container."""

    @abc.abstractmethod
    def shell(self, req: ContainerRequest, prepared: Any, command: str | None) -> int:
        """Run an interactive shell (or `command`) in the container `req` describes; its exit code."""

    def close(self) -> None:
        """Release what the provider holds; containers are stopped by the session already."""


def wait_interactive(proc: subprocess.Popen) -> int:
    """Wait for an interactive child; Ctrl-C belongs to it, not to us."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def host_gpus() -> list[str]:
    """Names of the NVIDIA GPUs on this host, as nvidia-smi reports them (empty when none)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _gpu_text(gpu: tuple[GPU, ...]) -> str:
    return " or ".join(str(g) for g in gpu)


def _gpu_fits(want: GPU, host: list[str]) -> bool:
    if len(host) < want.count:
        return False
    if want.type == "ANY":
        return True
    name = want.type.rstrip("!").split("-")[0]
    return sum(name in h.upper().replace(" ", "") for h in host) >= want.count


def _host_memory_mib() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return None


def docker_answers(timeout: float = 2.0) -> bool:
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means no usable daemon
        return False


def choose(name: str | None = None) -> Provider:
    """The provider named, else RUNNER_PROVIDER, else docker when a daemon answers, else embedded."""
    name = name or os.environ.get(PROVIDER_ENV) or None
    if name is None:
        name = "docker" if docker_answers() else "embedded"
    if name == "embedded":
        from ._embedded import EmbeddedProvider

        return EmbeddedProvider()
    if name == "docker":
        from ._docker import DockerProvider

        return DockerProvider()
    if name == "kubernetes":
        from ._kubernetes import KubernetesProvider

        return KubernetesProvider()
    raise InvalidError(f"unknown provider {name!r}: use one of {', '.join(NAMES)}")

"""The docker provider: real containers from built images, kept warm and fed by the input plane.

Images are built one committed layer per step, tagged `runner-image:<id>` where the id chains the
content keys of the steps (see `runner._image`): an image whose tag exists starts with no build at
all, and a changed step rebuilds from that step on. Build steps see the host's CA bundle through
a read-only mount, never copied into a layer, so builds work behind a TLS-inspecting proxy.

Containers run the agent from the client's own runner and cloudpickle, mounted read-only, with
the app's source mounted at /root/app. They are labelled with the owning process; a later client
removes those whose owner is gone, and a container whose client vanished exits by itself when the
client's socket closes.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
import threading
from typing import Any

from .._agent import ADDR_ENV, TOKEN_ENV
from .._image import Image, Step
from .._output import output
from ..exception import ImageBuildError, ProviderError
from . import ContainerRequest, Provider

IMAGE_REPO = "runner-image"
LABEL = "org.runner"
APP_MOUNT = "/root/app"
CLIENT_MOUNT = "/opt/runner-client"
BUILD_CA_DIR = "/run/runner-build"
BUILD_CA = f"{BUILD_CA_DIR}/ca.pem"
SEED_HINT = "scripts/seed_base_image.sh builds python:3.11-slim-bookworm from Debian's packages"


def host_ca_bundle() -> str | None:
    """The CA bundle this host trusts, which builds need behind a TLS-inspecting proxy."""
    for var in ("RUNNER_BUILD_CA", "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        path = os.environ.get(var)
        if path and os.path.isfile(path):
            return path
    default = "/etc/ssl/certs/ca-certificates.crt"
    return default if os.path.isfile(default) else None


def _pkg_dir(module) -> str:
    return os.path.dirname(os.path.abspath(module.__file__))


class _Handle:
    def __init__(self, container: Any):
        self.container = container
        self.id = container.id
        self.exited = threading.Event()
        self.status: dict | None = None


class DockerProvider(Provider):
    name = "docker"
    default_max_containers = max(4, 2 * (os.cpu_count() or 1))

    def __init__(self):
        import docker

        try:
            self.client = docker.from_env(timeout=120)
            self.client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure: no usable daemon
            raise ProviderError(
                f"the docker provider needs a Docker daemon, and none answers ({_short(exc)}); start dockerd, "
                "or use --provider embedded"
            ) from None
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._build_dir: str | None = None
        self._sweep()

    # ---- leaks -----------------------------------------------------------------------------
    def _sweep(self) -> None:
        """Remove containers whose owning client on this host is gone."""
        host = socket.gethostname()
        try:
            leftovers = self.client.containers.list(all=True, filters={"label": f"{LABEL}.owner"})
        except Exception:  # noqa: BLE001
            return
        for c in leftovers:
            owner_host, _, pid = c.labels.get(f"{LABEL}.owner", "").rpartition(":")
            if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
                try:
                    c.remove(force=True)
                except Exception:  # noqa: BLE001
                    pass

    # ---- images ----------------------------------------------------------------------------
    def prepare(self, image: Image) -> str:
        import docker.errors

        base = image.base
        try:
            self.client.images.get(base)
        except docker.errors.ImageNotFound:
            try:
                output().status(f"pulling {base}")
                self.client.images.pull(base)
            except Exception as exc:  # noqa: BLE001
                raise ImageBuildError(
                    f"base image {base} is not on this machine and cannot be pulled ({_short(exc)}); "
                    f"without registry access, seed it locally ({SEED_HINT})"
                ) from None
        chain = image.chain()
        if not chain:
            return base
        start, ref = 0, base
        for i in range(len(chain) - 1, -1, -1):
            tag = f"{IMAGE_REPO}:{chain[i][1][:40]}"
            if self._exists(tag):
                start, ref = i + 1, tag
                break
        if start < len(chain):
            output().line(f"Building image {image.object_id} ({len(chain) - start} of {len(chain)} steps to run)")
        for i in range(start, len(chain)):
            step, digest = chain[i]
            ref = self._step(ref, step, f"{IMAGE_REPO}:{digest[:40]}", i + 1, len(chain))
        return ref

    def _exists(self, ref: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    def _step(self, prev: str, step: Step, tag: str, number: int, total: int) -> str:
        config = self.client.images.get(prev).attrs["Config"] or {}
        env = list(config.get("Env") or [])
        workdir = config.get("WorkingDir") or ""
        script = None
        if step.kind == "run":
            script = step.args[0]
        elif step.kind == "env":
            keys = {k for k, _ in step.args}
            env = [e for e in env if e.split("=", 1)[0] not in keys] + [f"{k}={v}" for k, v in step.args]
        elif step.kind == "workdir":
            workdir = step.args[0]
            script = f"mkdir -p {workdir}"
        ca_dir = self._ca_dir() if script else None
        # A directory, not the file itself: the mount point a file mount leaves behind in the
        # committed layer would block the next step's mount. The directory stays empty.
        volumes = {ca_dir: {"bind": BUILD_CA_DIR, "mode": "ro"}} if ca_dir else {}
        if script:
            exports = (
                f"export PIP_CERT={BUILD_CA} SSL_CERT_FILE={BUILD_CA} REQUESTS_CA_BUNDLE={BUILD_CA} "
                f"CURL_CA_BUNDLE={BUILD_CA} UV_NATIVE_TLS=1\n" if volumes else ""
            )
            command = ["/bin/sh", "-c", f"set -e\n{exports}{script}"]
        else:
            command = ["/bin/true"]
        container = self.client.containers.create(
            prev, entrypoint=[], command=command, volumes=volumes, working_dir=workdir or None,
            labels={f"{LABEL}.build": tag, f"{LABEL}.owner": self.owner},
        )
        title = f"  [{number}/{total}] {step.describe()}"
        try:
            if not script:
                output().line(title)
            if step.kind == "copy":
                container.put_archive("/", _tar(step.args[0], step.args[1]))
            elif script:
                container.start()
                lines: list[str] = []
                with output().build_step(title) as show:
                    for chunk in container.logs(stream=True, follow=True):
                        for line in chunk.decode(errors="replace").splitlines():
                            lines.append(line)
                            show(line)
                code = container.wait().get("StatusCode", 1)
                if code != 0:
                    tail = "\n".join(lines[-40:])
                    raise ImageBuildError(
                        f"image build failed at step {number}/{total} ({step.describe()}), exit code {code}:\n{tail}"
                    )
            container.commit(
                repository=tag.split(":")[0], tag=tag.split(":")[1],
                conf={
                    "Env": env, "WorkingDir": workdir, "Cmd": config.get("Cmd") or ["python3"],
                    "Entrypoint": config.get("Entrypoint") or [], "Labels": config.get("Labels") or {},
                    "User": config.get("User") or "",
                },
            )
        finally:
            container.remove(force=True)
        return tag

    def _ca_dir(self) -> str | None:
        ca = host_ca_bundle()
        if ca is None:
            return None
        if self._build_dir is None:
            self._build_dir = tempfile.mkdtemp(prefix="runner-build-")
            os.chmod(self._build_dir, 0o755)
            shutil.copyfile(ca, os.path.join(self._build_dir, "ca.pem"))
        return self._build_dir

    # ---- containers ------------------------------------------------------------------------
    def start(self, req: ContainerRequest, prepared: str) -> _Handle:
        import cloudpickle
        import docker.types

        import runner

        config = self.client.images.get(prepared).attrs["Config"] or {}
        image_env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
        env = dict(req.env)
        env[ADDR_ENV] = f"unix:/run/runner/{req.socket_name}"
        env[TOKEN_ENV] = req.token
        env["PYTHONPATH"] = ":".join(p for p in (CLIENT_MOUNT, image_env.get("PYTHONPATH")) if p)
        volumes = {
            req.socket_dir: {"bind": "/run/runner", "mode": "rw"},
            _pkg_dir(runner): {"bind": f"{CLIENT_MOUNT}/runner", "mode": "ro"},
            _pkg_dir(cloudpickle): {"bind": f"{CLIENT_MOUNT}/cloudpickle", "mode": "ro"},
        }
        if req.app_root:
            volumes[req.app_root] = {"bind": APP_MOUNT, "mode": "ro"}
        kwargs: dict[str, Any] = {}
        if req.cpu:
            kwargs["cpu_shares"] = max(2, int(req.cpu[0] * 1024))
            if req.cpu[1]:
                kwargs["nano_cpus"] = int(req.cpu[1] * 1e9)
        if req.memory:
            kwargs["mem_reservation"] = f"{int(req.memory[0])}m"
            if req.memory[1]:
                kwargs["mem_limit"] = f"{int(req.memory[1])}m"
                kwargs["memswap_limit"] = f"{int(req.memory[1])}m"
        if req.gpu:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=req.gpu[0].count, capabilities=[["gpu"]])]
        try:
            container = self.client.containers.run(
                prepared,
                command=["python3", "-m", "runner._agent"],
                detach=True,
                auto_remove=True,
                environment=env,
                volumes=volumes,
                working_dir=config.get("WorkingDir") or "/root",
                labels={f"{LABEL}.owner": self.owner, f"{LABEL}.session": req.session, f"{LABEL}.function": req.name},
                **kwargs,
            )
        except Exception as exc:  # noqa: BLE001
            raise ProviderError(f"docker could not start a container for {req.name}: {_short(exc)}") from None
        handle = _Handle(container)
        threading.Thread(target=self._follow, args=(handle,), daemon=True).start()
        return handle

    def _follow(self, handle: _Handle) -> None:
        """Stream the container's output to ours until it exits, then note how it ended."""
        import sys

        try:
            stream = self.client.api.attach(handle.id, stream=True, logs=True, demux=True)
            waiter = threading.Thread(target=self._wait, args=(handle,), daemon=True)
            waiter.start()
            partial = {"stdout": b"", "stderr": b""}
            for chunks in stream:
                # Whole lines only, so lines of concurrent containers never run into each other.
                for name, data in zip(("stdout", "stderr"), chunks):
                    if not data:
                        continue
                    data = partial[name] + data
                    cut = data.rfind(b"\n") + 1
                    partial[name] = data[cut:]
                    if cut:
                        output().log_line(getattr(sys, name), data[:cut].decode(errors="replace"))
            for name, rest in partial.items():
                if rest:
                    output().log_line(getattr(sys, name), rest.decode(errors="replace") + "\n")
            waiter.join(5)
        except Exception:  # noqa: BLE001 - the container is gone
            pass
        handle.exited.set()

    def _wait(self, handle: _Handle) -> None:
        try:
            handle.status = self.client.api.wait(handle.id)
        except Exception:  # noqa: BLE001 - removed before we asked
            handle.status = None

    def alive(self, handle: _Handle) -> bool:
        return not handle.exited.is_set()

    def exit_info(self, handle: _Handle) -> str:
        handle.exited.wait(5)
        status = handle.status or {}
        code = status.get("StatusCode")
        if code is None:
            return "it exited"
        if code == 137:
            return "exit code 137: killed, e.g. by the out-of-memory killer or a stop"
        return f"exit code {code}"

    def stop(self, handle: _Handle) -> None:
        import docker.errors

        try:
            handle.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    def container_path(self, host_path: str) -> str:
        return APP_MOUNT

    def close(self) -> None:
        if self._build_dir:
            shutil.rmtree(self._build_dir, ignore_errors=True)
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


def _tar(src: str, dest: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(src, arcname=dest.lstrip("/"))
    return buf.getvalue()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

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

import contextlib
import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from typing import Any

from .._agent import ADDR_ENV, TOKEN_ENV
from .._context import pid_alive
from .._image import Image, Mount, Step, digest_files, local_files
from .._output import output
from ..exception import ImageBuildError, ProviderError
from . import ContainerRequest, Provider, wait_interactive

IMAGE_REPO = "runner-image"
LABEL = "org.runner"
APP_MOUNT = "/root/app"
CLIENT_MOUNT = "/opt/runner-client"
BUILD_DIR = "/run/runner-build"
WEB_PORT = 8000  # where an ASGI, WSGI or FastAPI function listens inside its container
BUILD_CA = f"{BUILD_DIR}/ca.pem"
SANDBOX_RUN = "/run/runner-sb"  # where a sandbox container sees its control directory's run/
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
        from .._registry import Registry

        self.client = docker_client("the docker provider", "start dockerd, or use --provider embedded")
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._build_dir: str | None = None
        self.registry = Registry.from_env(self.client)  # RUNNER_REGISTRY: images pushed there, found there
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
            if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
                try:
                    c.remove(force=True, v=True)
                except Exception:  # noqa: BLE001
                    pass

    # ---- images ----------------------------------------------------------------------------
    def prepare(self, image: Image) -> str:
        import docker.errors

        chain = image.chain()
        final = f"{IMAGE_REPO}:{chain[-1][1][:40]}" if chain else ""
        shared = self.registry.reference(final) if self.registry and chain else None
        # force_build on a step rebuilds from it on; RUNNER_FORCE_BUILD=1 rebuilds everything.
        forced = 0 if os.environ.get("RUNNER_FORCE_BUILD") == "1" and chain else next(
            (i for i, (step, _) in enumerate(chain) if step.force), None)
        if chain and forced is None:
            if self._exists(shared or final):  # unchanged and here: no build, no registry call
                return shared or final
            if shared and self.registry.has(shared):  # built before on another machine
                self.registry.fetch(shared, final)
                return shared
        base = image.base
        try:
            self.client.images.get(base)
        except docker.errors.ImageNotFound:
            try:
                output().status(f"pulling {base}")
                self.client.images.pull(base, auth_config=image.base_auth() if image.base_auth else None)
            except Exception as exc:  # noqa: BLE001
                why = _short(getattr(exc, "explanation", None) or exc)
                hint = (f"check the credentials given for it ({image.base_auth!r})" if image.base_auth
                        else f"without registry access, seed it locally ({SEED_HINT})")
                raise ImageBuildError(f"base image {base} is not on this machine and cannot be pulled ({why}); {hint}") from None
        if not chain:
            return base
        start, ref = 0, base
        for i in range(len(chain) - 1, -1, -1):
            tag = f"{IMAGE_REPO}:{chain[i][1][:40]}"
            if (forced is None or i < forced) and self._exists(tag):
                start, ref = i + 1, tag
                break
        if start < len(chain):
            output().line(f"Building image {image.object_id} ({len(chain) - start} of {len(chain)} steps to run)")
            for i in range(start):
                output().line(f"  [{i + 1}/{len(chain)}] {chain[i][0].describe()} (cached)")
        for i in range(start, len(chain)):
            step, digest = chain[i]
            ref = self._step(ref, step, f"{IMAGE_REPO}:{digest[:40]}", i + 1, len(chain))
        if shared:
            self.registry.push(ref, shared)
            return shared
        return ref

    def _exists(self, ref: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    def _step(self, prev: str, step: Step, tag: str, number: int, total: int) -> str:
        """Run one step in a container from `prev` and commit the result as `tag`."""
        config = self.client.images.get(prev).attrs["Config"] or {}
        conf = {k: config.get(k) for k in _CARRIED}
        conf["Env"] = list(conf["Env"] or [])
        conf["Cmd"] = conf["Cmd"] or ["python3"]
        conf["Entrypoint"] = conf["Entrypoint"] or []  # [] (not None) keeps the build's own out
        # The daemon merges the build container's labels into the commit; blank its owner, so
        # a container someone starts from this image is never taken for a leaked one of ours.
        conf["Labels"] = {**(conf["Labels"] or {}), f"{LABEL}.build": tag, f"{LABEL}.owner": ""}
        script = None
        if step.kind == "run":
            script = step.args[0]
        elif step.kind == "env":
            keys = {k for k, _ in step.args}
            conf["Env"] = [e for e in conf["Env"] if e.split("=", 1)[0] not in keys] + [f"{k}={v}" for k, v in step.args]
        elif step.kind == "workdir":
            conf["WorkingDir"] = step.args[0]
            script = f"mkdir -p {shlex.quote(step.args[0])}"
        elif step.kind == "config":
            conf[step.args[0]] = _config_value(step.args[0], step.args[1])
        title = f"  [{number}/{total}] {step.describe()}"
        with self._build_inputs(step) as (volumes, prologue):
            shell = list(config.get("Shell") or ["/bin/sh", "-c"])
            command = [*shell, f"set -e\n{prologue}{script}"] if script else ["/bin/true"]
            container = self.client.containers.create(
                # Bind mounts as `mounts`, not `volumes`: docker-py turns `volumes` into the container's
                # Config.Volumes, which `commit` would keep, so every container of the image would get an
                # anonymous volume at the mount point, left behind when the container is removed.
                prev, entrypoint=[], command=command, mounts=_bind_mounts(volumes) if script else [],
                working_dir=config.get("WorkingDir") or None, user=config.get("User") or "",
                labels={f"{LABEL}.build": tag, f"{LABEL}.owner": self.owner},
            )
            try:
                if not script:
                    output().line(title)
                if step.kind == "copy":
                    container.put_archive("/", _tar(step.args[0], step.args[1], step.ignore))
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
                repo, _, version = tag.partition(":")
                container.commit(repository=repo, tag=version, conf=conf)
            finally:
                container.remove(force=True, v=True)
        return tag

    @contextlib.contextmanager
    def _build_inputs(self, step: Step):
        """Mounts and a shell prologue giving one step its CA bundle, inputs and secrets, all
        read-only and only for the step's own container: nothing of them lands in the layer."""
        root = self._build_root()
        here = tempfile.mkdtemp(prefix="step-", dir=os.path.join(root, "steps"))
        os.chmod(here, 0o755)
        try:
            for source, name in step.inputs:
                shutil.copyfile(source, os.path.join(here, name))
            for name, data in step.blobs:
                with open(os.path.join(here, name), "wb") as f:
                    f.write(data)
            lines = [f"export RUNNER_INPUTS={BUILD_DIR}/steps/{os.path.basename(here)}"]
            if os.path.exists(os.path.join(root, "ca.pem")):
                lines.append(
                    f"export PIP_CERT={BUILD_CA} SSL_CERT_FILE={BUILD_CA} REQUESTS_CA_BUNDLE={BUILD_CA} "
                    f"CURL_CA_BUNDLE={BUILD_CA} UV_NATIVE_TLS=1"
                )
            if step.secrets:
                values = {}
                for secret in step.secrets:
                    values.update(secret.env())
                path = os.path.join(here, ".secrets")
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))
                lines.append('. "$RUNNER_INPUTS/.secrets"')
            volumes = {root: {"bind": BUILD_DIR, "mode": "ro"}}
            if step.blobs:  # run_function: the runner client, to unpickle and call the function
                volumes.update(self._client_mounts())
                lines.append(f"export PYTHONPATH={CLIENT_MOUNT}${{PYTHONPATH:+:$PYTHONPATH}}")
            yield volumes, "\n".join(lines) + "\n"
        finally:
            shutil.rmtree(here, ignore_errors=True)

    def _build_root(self) -> str:
        """A private directory mounted read-only into build steps: the CA bundle and per-step inputs."""
        if self._build_dir is None:
            self._build_dir = tempfile.mkdtemp(prefix=f"runner-{os.getpid()}-")  # swept like session dirs if we die
            os.chmod(self._build_dir, 0o755)
            os.makedirs(os.path.join(self._build_dir, "steps"), mode=0o755)
            ca = host_ca_bundle()
            if ca:
                shutil.copyfile(ca, os.path.join(self._build_dir, "ca.pem"))
        return self._build_dir

    def _client_mounts(self) -> dict:
        import cloudpickle

        import runner

        return {
            _pkg_dir(runner): {"bind": f"{CLIENT_MOUNT}/runner", "mode": "ro"},
            _pkg_dir(cloudpickle): {"bind": f"{CLIENT_MOUNT}/cloudpickle", "mode": "ro"},
        }

    def _mount_source(self, mount: Mount) -> str:
        """The host path to bind for a copy=False mount; a filtered snapshot when it ignores files."""
        if mount.ignore is None:
            return mount.source
        key = digest_files(mount.source, mount.ignore)
        snapshot = os.path.join(self._build_root(), "mounts", key[:32])
        if not os.path.isdir(snapshot):
            staging = tempfile.mkdtemp(dir=self._build_root())
            for path, rel in local_files(mount.source, mount.ignore):
                dest = os.path.join(staging, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy2(path, dest)
            os.makedirs(os.path.dirname(snapshot), exist_ok=True)
            os.rename(staging, snapshot)
        return snapshot

    # ---- containers ------------------------------------------------------------------------
    def _container_args(self, req: ContainerRequest, prepared: str) -> dict[str, Any]:
        """A function's container, as docker-py arguments: its image, env, mounts, labels and limits.
        The same for the containers `start` runs and for `runner shell`."""
        config = self.client.images.get(prepared).attrs["Config"] or {}
        image_env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
        env = dict(req.env)
        env["PYTHONPATH"] = ":".join(p for p in (CLIENT_MOUNT, "/root", image_env.get("PYTHONPATH")) if p)
        volumes = dict(self._client_mounts())
        if req.socket_dir:  # the client's socket, for the agent
            volumes[req.socket_dir] = {"bind": "/run/runner", "mode": "rw"}
            env[ADDR_ENV] = f"unix:/run/runner/{req.socket_name}"
            env[TOKEN_ENV] = req.token
        for mount in getattr(req.image, "mounts", ()):
            volumes[self._mount_source(mount)] = {"bind": mount.target, "mode": "ro"}
        if req.app_root:
            volumes[req.app_root] = {"bind": APP_MOUNT, "mode": "ro"}
        return dict(
            image=prepared,
            environment=env,
            volumes=volumes,
            working_dir=config.get("WorkingDir") or "/root",
            labels={f"{LABEL}.owner": self.owner, f"{LABEL}.session": req.session, f"{LABEL}.function": req.name},
            mounts=bind_mounts(req.binds),
            ports={f"{p}/tcp": ("127.0.0.1", None) for p in req.ports} or None,  # loopback only
            **_limits(req),
        )

    def start(self, req: ContainerRequest, prepared: str) -> _Handle:
        try:
            container = self.client.containers.run(
                command=["python3", "-m", "runner._agent"], detach=True, auto_remove=True,
                **self._container_args(req, prepared),
            )
        except Exception as exc:  # noqa: BLE001
            raise ProviderError(f"docker could not start a container for {req.name}: {_short(exc)}") from None
        handle = _Handle(container)
        threading.Thread(target=self._follow, args=(handle,), daemon=True).start()
        return handle

    def shell(self, req: ContainerRequest, prepared: str, command: str | None) -> int:
        """An interactive shell (or `command`) in the container `req` describes. The Docker CLI
        attaches it, since it owns the terminal (raw mode, resizes); it returns the exit code."""
        exe = shutil.which("docker")
        if exe is None:
            raise ProviderError("runner shell uses the Docker CLI, and `docker` is not on PATH; install it (docker.io)")
        container = self.client.containers.create(
            command=["/bin/sh", "-c", command or "exec bash 2>/dev/null || exec sh"], stdin_open=True,
            tty=sys.stdin.isatty() and sys.stdout.isatty(), **self._container_args(req, prepared),
        )
        try:
            return wait_interactive(subprocess.Popen([exe, "start", "--attach", "--interactive", container.id]))
        finally:
            container.remove(force=True, v=True)

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
            handle.container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    def container_path(self, host_path: str) -> str:
        return APP_MOUNT

    def address(self, handle: _Handle, port: int) -> tuple[str, int]:
        ports = self.client.api.inspect_container(handle.id)["NetworkSettings"]["Ports"] or {}
        bound = ports.get(f"{port}/tcp") or []
        if not bound:
            raise ProviderError(f"container {handle.id[:12]} does not publish port {port}")
        return "127.0.0.1", int(bound[0]["HostPort"])

    def web_bind(self, port: int) -> tuple[str, int]:
        return "0.0.0.0", port or WEB_PORT  # every interface of the container; published on the host's loopback

    def close(self) -> None:
        if self._build_dir:
            shutil.rmtree(self._build_dir, ignore_errors=True)
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass

    # ---- sandboxes -------------------------------------------------------------------------
    # A sandbox container's PID 1 is runner's supervisor (runner._sandbox_agent), run by path with
    # the image's python3 from the client's runner package, mounted read-only; its control
    # directory is bind-mounted at /run/runner-sb. It carries no owner label: sandboxes outlive
    # their creator, as on Modal. Labels find it again from any client (its id, its app) and hold
    # its deadline, past which any client may remove it.
    def sandbox_start(self, req: Any, prepared: str) -> dict:
        import docker.errors

        api = self.client.api
        host_config = api.create_host_config(
            binds={req.run_dir: {"bind": SANDBOX_RUN, "mode": "rw"}, **self._client_mounts()},
            mounts=bind_mounts(req.binds) or None,
            port_bindings={port: ("127.0.0.1", None) for port in req.ports} or None,
            network_mode="none" if req.block_network else None,
            auto_remove=True,
            **_limits(req),
        )
        cid = None
        try:
            cid = api.create_container(
                prepared,
                entrypoint=["python3", "-I", "-S", f"{CLIENT_MOUNT}/runner/_sandbox_agent.py", SANDBOX_RUN],
                command=[],
                environment=req.env,
                working_dir=req.workdir,
                labels={f"{LABEL}.sandbox": req.id, f"{LABEL}.app": req.app, f"{LABEL}.deadline": f"{req.deadline:.0f}"},
                ports=list(req.ports) or None,
                host_config=host_config,
            )["Id"]
            api.start(cid)
            published = api.inspect_container(cid)["NetworkSettings"]["Ports"] or {} if req.ports else {}
        except docker.errors.APIError as exc:
            if cid:
                self.sandbox_remove({"container": cid})
            hint = "; the image needs python3, which runs runner's sandbox supervisor" if "python3" in str(exc) else ""
            raise ProviderError(f"docker could not start sandbox {req.id}: {_short(exc)}{hint}") from None
        ports = {str(port): int(published[f"{port}/tcp"][0]["HostPort"]) for port in req.ports}
        return {"container": cid, "ports": ports}

    def sandbox_alive(self, handle: dict) -> bool:
        import docker.errors

        if not handle.get("container"):
            return False
        try:
            state = self.client.api.inspect_container(handle["container"])["State"]
        except docker.errors.NotFound:
            return False
        return state.get("Status") in ("created", "running")

    def sandbox_running(self, metas: dict) -> dict:
        """{sandbox id: handle with its deadline} of every sandbox container running on this daemon."""
        found = self.client.api.containers(all=True, filters={"label": f"{LABEL}.sandbox"})
        return {c["Labels"][f"{LABEL}.sandbox"]: {"container": c["Id"], "deadline": float(c["Labels"].get(f"{LABEL}.deadline") or 0)}
                for c in found if c.get("State") in ("created", "running")}

    def sandbox_remove(self, handle: dict) -> None:
        """Kill and remove the container; returns once it is gone."""
        import time

        import docker.errors

        if not handle.get("container"):
            return
        try:
            self.client.api.remove_container(handle["container"], force=True, v=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise ProviderError(f"docker could not remove sandbox container {handle['container'][:12]}: {_short(exc)}") from None
        deadline = time.monotonic() + 30  # it exited and removes itself (auto_remove): wait for that
        while time.monotonic() < deadline:
            try:
                self.client.api.inspect_container(handle["container"])
            except docker.errors.NotFound:
                return
            time.sleep(0.02)


def docker_client(who: str, hint: str):
    """A client of a Docker daemon that answers, or runner's one-line error saying what to do."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - any failure: no usable daemon
        raise ProviderError(f"{who} needs a Docker daemon, and none answers ({_short(exc)}); {hint}") from None


def _limits(req: Any) -> dict[str, Any]:
    """Docker's arguments for a request's cpu, memory and gpu (Modal's request/limit pairs), the same
    for function containers and sandboxes."""
    import docker.types

    limits: dict[str, Any] = {}
    if req.cpu:
        limits["cpu_shares"] = max(2, int(req.cpu[0] * 1024))
        if req.cpu[1]:
            limits["nano_cpus"] = int(req.cpu[1] * 1e9)
    if req.memory:
        limits["mem_reservation"] = f"{int(req.memory[0])}m"
        if req.memory[1]:
            limits["mem_limit"] = limits["memswap_limit"] = f"{int(req.memory[1])}m"
    if req.gpu:
        limits["device_requests"] = [docker.types.DeviceRequest(count=req.gpu[0].count, capabilities=[["gpu"]])]
    return limits


def bind_mounts(binds: list) -> list:
    """Docker bind mounts for runner._mounts.Bind entries (volumes, the store)."""
    import docker.types

    return [docker.types.Mount(b.target, b.host, type="bind", read_only=b.read_only) for b in binds]


def _tar(src: str, dest: str, ignore=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if os.path.isfile(src):
            tar.add(src, arcname=dest.lstrip("/"))
        else:
            for path, rel in local_files(src, ignore):
                tar.add(str(path), arcname=f"{dest.strip('/')}/{rel}".lstrip("/"))
    return buf.getvalue()


_CARRIED = ("Env", "WorkingDir", "Cmd", "Entrypoint", "Labels", "User", "Shell", "ExposedPorts", "StopSignal")


def _config_value(field: str, value):
    if field == "Labels":
        return dict(value)
    if field == "ExposedPorts":
        return {port: {} for port in value}
    if field in ("Entrypoint", "Cmd", "Shell"):
        return list(value)
    return value


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _bind_mounts(volumes: dict) -> list:
    """docker-py's `{host: {"bind": path, "mode": "ro"}}` as bind Mounts."""
    from docker.types import Mount

    return [Mount(target=spec["bind"], source=host, type="bind", read_only=spec.get("mode") == "ro")
            for host, spec in volumes.items()]

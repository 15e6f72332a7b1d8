"""How workers are started: as host processes (the bench, an embedded stand-in) or as Docker
containers (what a Kubernetes Deployment's pod runs, here on Docker). A worker needs runner,
cloudpickle and redis importable, the function's source where its spec says (`app_root`), and
the Redis server; containers get the client's packages bind-mounted read-only, as the docker
provider and the store do, and reach Redis through its unix socket's directory, so they need
no network at all."""

from __future__ import annotations

import os
import subprocess
import sys

from . import _wire as W

CLIENT_MOUNT = "/opt/runner-client"  # as runner._providers._docker
DEPS_DIR = "/opt/runner-deps"  # as runner._store._redis
SOCKET_DIR = "/run/runner-plane"
APP_ROOT = "/root/app"


def _pkg_dir(module) -> str:
    return os.path.dirname(os.path.abspath(module.__file__))


def start_local_worker(url: str, fn: str, *, env: dict | None = None, log=None) -> subprocess.Popen:
    """A worker as a process of this host (its agent child too)."""
    return subprocess.Popen([sys.executable, "-m", "runner._plane.worker"], stdin=subprocess.DEVNULL,
                            env={**os.environ, W.URL_ENV: url, W.FUNCTION_ENV: fn, **(env or {})},
                            stdout=log, stderr=log)


def docker_worker_args(image: str, socket_path: str, fn: str, *, app_root: str | None = None, name: str | None = None,
                       labels: dict | None = None, extra_env: dict | None = None) -> list[str]:
    """`docker run` arguments for a worker container with no network, reaching the Redis server
    listening on the unix socket `socket_path` through a bind mount of its directory."""
    import cloudpickle
    import redis

    import runner

    db_url = f"unix://{SOCKET_DIR}/{os.path.basename(socket_path)}?db=0"
    args = ["docker", "run", "-d", "--network", "none"]
    if name:
        args += ["--name", name, "--hostname", name]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    mounts = [(_pkg_dir(runner), f"{CLIENT_MOUNT}/runner", "ro"),
              (_pkg_dir(cloudpickle), f"{CLIENT_MOUNT}/cloudpickle", "ro"),
              (_pkg_dir(redis), f"{DEPS_DIR}/redis", "ro"),
              (os.path.dirname(os.path.abspath(socket_path)), SOCKET_DIR, "rw")]
    if app_root:
        mounts.append((app_root, APP_ROOT, "ro"))
    for host, inside, mode in mounts:
        args += ["-v", f"{host}:{inside}:{mode}"]
    env = {"PYTHONPATH": f"{CLIENT_MOUNT}:{DEPS_DIR}", "PYTHONUNBUFFERED": "1", W.URL_ENV: db_url,
           W.FUNCTION_ENV: fn, **(extra_env or {})}
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    return args + [image, "python3", "-m", "runner._plane.worker"]

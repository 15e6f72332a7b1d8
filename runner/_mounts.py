"""What a container needs from the host beyond its image: its volumes and the store.

One answer for function containers and sandboxes, on every provider: a list of binds (host
directory -> path in the container) and the environment that tells runner inside the container
where things are. Docker turns the binds into bind mounts. The embedded provider, whose
"containers" are host processes, binds them in a private mount namespace of the worker
(`bind_in_namespace`, run between fork and exec), which needs root.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
from typing import Any

from .exception import InvalidError, ProviderError

VOLUMES_ENV = "RUNNER_VOLUMES"  # {volume key: mount path} inside the container

# Paths runner itself uses inside containers; a volume mounted there would hide them.
RESERVED = ("/run/runner", "/run/runner-sb", "/run/runner-store", "/opt/runner-client", "/opt/runner-deps",
            "/root/app", "/proc", "/sys", "/dev")


@dataclasses.dataclass(frozen=True)
class Bind:
    host: str
    target: str
    read_only: bool = False


def storage_access(volumes: dict[str, Any], provider_name: str) -> tuple[dict[str, str], list[Bind]]:
    """The env and binds for a container with `volumes` ({mount path: Volume}) that may use the store."""
    from ._store import container_access

    env, store_binds = container_access(provider_name)
    binds = [Bind(host, target, ro) for host, target, ro in store_binds]
    keys = {}
    for path, volume in volumes.items():
        binds.append(Bind(str(volume._host_dir()), path))
        keys[volume._key()] = path
    if keys:
        env[VOLUMES_ENV] = json.dumps(keys)
    return env, binds


def check_mount_path(path: Any, what: str) -> str:
    """A volume mount path: absolute, normalized, and not where runner or the system lives."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidError(f"{what}: mount path {path!r} must be an absolute path such as '/data'")
    norm = os.path.normpath(path)
    if norm == "/" or any(norm == r or norm.startswith(r + "/") for r in RESERVED):
        raise InvalidError(f"{what}: cannot mount a volume at {path!r}, which runner or the system uses; pick another path")
    return norm


# ---- the embedded provider: binds in a private mount namespace -----------------------------
_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def prepare_mount_points(binds: list[Bind]) -> list[str]:
    """Create missing mount points on the host (before fork); return those created, to remove later."""
    if binds and os.geteuid() != 0:
        raise ProviderError(
            "the embedded provider mounts volumes in a private mount namespace, which needs root; "
            "run as root or use --provider docker"
        )
    created = []
    for bind in binds:
        missing, path = [], bind.target
        while not os.path.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        os.makedirs(bind.target, exist_ok=True)
        created.extend(missing)
    return created


def remove_mount_points(created: list[str]) -> None:
    """Remove mount points made by `prepare_mount_points`, deepest first, only while empty."""
    for path in sorted(created, key=len, reverse=True):
        try:
            os.rmdir(path)
        except OSError:
            pass


def bind_in_namespace(binds: list[Bind]) -> None:
    """In a forked child: enter a private mount namespace and bind each volume in it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    # Private, so the binds below never propagate back to the host's namespace.
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    for bind in binds:
        if libc.mount(bind.host.encode(), bind.target.encode(), None, _MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"mount --bind {bind.host} {bind.target}")
        if bind.read_only and libc.mount(None, bind.target.encode(), None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None) != 0:
            raise OSError(ctypes.get_errno(), f"mount -o remount,bind,ro {bind.target}")

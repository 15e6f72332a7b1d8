"""The host side of sandboxes: their provider, and their control directories under $RUNNER_HOME/sb.

No daemon keeps track of sandboxes: what a client knows of one is its control directory (see
`runner._sandbox`) and what its provider says is running. So every client process shares the
work of keeping that tidy: the first time it creates, lists or looks up a sandbox it sweeps, in
the background, the directories of sandboxes that ended long enough ago and the sandboxes whose
supervisor failed to end them at their deadline. A provider is made once per process and kind,
and remembers the images it prepared, since finding an image again is most of what `create` costs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import socket
import threading
import time
from typing import Any

from ._sandbox_agent import EXIT, LOG
from .exception import ProviderError

GRACE = 600.0  # seconds an ended sandbox's control directory is kept before a client sweeps it
OVERDUE = 60.0  # seconds past its deadline after which any client removes a sandbox still running


# ---- the provider, once per process -------------------------------------------------------------
class Backend:
    """One provider of a kind for this process, shared by every sandbox it creates or finds, with the
    images it has prepared: finding an image once is what keeps `create` fast."""

    def __init__(self, name: str):
        from ._providers import PreparedImages, choose

        if name == "kubernetes":  # sandboxes as pods, reached through the API: see runner._sandbox_kube
            from ._sandbox_kube import KubeSandboxes

            self.provider = KubeSandboxes()
        else:
            self.provider = choose(name)
        # True when the supervisor's run directory is not this host's (kubernetes): the provider then
        # connects to it (`connect`) and copies its end into the control directory (`collect`).
        self.remote = bool(getattr(self.provider, "remote", False))
        self.lock = threading.Lock()
        self.prepare = PreparedImages(self.provider)
        self.swept: set[str] = set()

    def connect(self, meta: dict, path: str, wait: bool) -> socket.socket:
        """A socket to the sandbox's supervisor: its unix socket at `path`, or the provider's way in."""
        if self.remote:
            return self.provider.sandbox_connect(meta, wait)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    def collect(self, meta: dict, settle: float = 0.0) -> bool:
        """Whether the end of a sandbox whose supervisor cannot write it here has just been copied into its
        control directory (waiting up to `settle` seconds for it to end); other supervisors write it there."""
        return self.remote and self.provider.sandbox_collect(meta, settle)

    def sweep(self, root: pathlib.Path) -> None:
        """Once per state root per process, in the background: `sweep` below."""
        with self.lock:
            if str(root) in self.swept:
                return
            self.swept.add(str(root))
        threading.Thread(target=sweep, args=(root,), name="runner-sandbox-sweep", daemon=True).start()


_backends_lock = threading.Lock()


@functools.cache
def _cached_backend(name: str, stack: str | None) -> Backend:
    return Backend(name)


def get_backend(name: str) -> Backend:
    """The Backend of provider `name`; for kubernetes, of the stack RUNNER_STACK_OUTPUTS names now."""
    from ._stack import STACK_OUTPUTS_ENV

    with _backends_lock:
        return _cached_backend(name, os.environ.get(STACK_OUTPUTS_ENV) if name == "kubernetes" else None)


@functools.cache
def _detected_provider() -> str:
    from ._providers import docker_answers

    return "docker" if docker_answers() else "embedded"


def provider_name() -> str:
    from ._providers import PROVIDER_ENV

    return os.environ.get(PROVIDER_ENV) or _detected_provider()


@dataclasses.dataclass
class SandboxRequest:
    """What a provider needs to start a sandbox's supervisor."""

    id: str
    app: str
    run_dir: str  # host directory of the socket, spec, output and exit files
    env: dict[str, str]  # runner's own (the store, image env on embedded); the user's go in env.json
    workdir: str | None
    cpu: tuple[float, float | None] | None
    memory: tuple[float, float | None] | None
    gpu: tuple
    block_network: bool
    ports: tuple[int, ...]
    binds: list  # runner._mounts.Bind: volumes and the store
    deadline: float  # wall-clock time by which it must have ended
    # What a provider whose sandboxes cannot see run_dir (kubernetes) takes instead of its files and binds:
    spec: dict = dataclasses.field(default_factory=dict)  # spec.json's content
    user_env: dict = dataclasses.field(default_factory=dict)  # the plain part of env.json (env=)
    secrets: tuple = ()  # runner.Secret objects, the rest of env.json
    volumes: tuple = ()  # (mount path, Volume) pairs
    app_name: str | None = None
    session: Any = None  # the `with app.run():` session it belongs to, if any


# ---- state on disk ---------------------------------------------------------------------------------
def read_json(path: pathlib.Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def log_tail(run: pathlib.Path) -> str:
    try:
        text = (run / LOG).read_text(errors="replace").strip()
    except OSError:
        return ""
    return f"; its log ends:\n{text[-2000:]}" if text else ""


def live_sandboxes(root: pathlib.Path) -> dict[str, dict]:
    """{id: meta} of the sandboxes under `root` that are running."""
    by_provider: dict[str, dict[str, dict]] = {}
    for ctl in root.iterdir():
        meta = read_json(ctl / "meta.json")
        if meta is not None and not (ctl / "run" / EXIT).exists():
            by_provider.setdefault(meta["provider"], {})[ctl.name] = meta
    live = {}
    for name, metas in by_provider.items():
        try:
            backend = get_backend(name)
        except ProviderError:  # e.g. no Docker daemon now: its sandboxes cannot be reached, so none is listed
            continue
        backend.sweep(root)
        running = backend.provider.sandbox_running(metas)
        live.update({sid: meta for sid, meta in metas.items() if sid in running})
    return live


def sweep(root: pathlib.Path) -> None:
    """Remove what sandboxes left behind: control directories GRACE seconds after their sandbox
    ended (or, if it died without saying so, after its deadline), and sandboxes still running
    OVERDUE seconds past their deadline, which their supervisor failed to end."""
    try:
        now = time.time()
        by_provider: dict[str, dict[str, dict]] = {}
        for ctl in root.iterdir():
            ended = ctl / "run" / EXIT
            meta = read_json(ctl / "meta.json")
            try:
                if ended.exists() or meta is None:
                    if now - (ended if ended.exists() else ctl).stat().st_mtime > GRACE:
                        shutil.rmtree(ctl, ignore_errors=True)
                    continue
            except OSError:
                continue
            by_provider.setdefault(meta["provider"], {})[ctl.name] = meta
        for name, metas in by_provider.items():
            provider = get_backend(name).provider
            running = provider.sandbox_running(metas)
            for sid, meta in metas.items():
                if sid not in running and now > meta["deadline"] + GRACE:
                    shutil.rmtree(root / sid, ignore_errors=True)
            for handle in running.values():
                if handle["deadline"] + OVERDUE < now:
                    provider.sandbox_remove(handle)
    except Exception:  # noqa: BLE001 - best effort in the background; the next client tries again
        pass

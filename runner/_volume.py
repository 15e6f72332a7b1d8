"""Volumes: directories that outlive containers and that every container of the app can mount.

On this host a volume is one directory under `$RUNNER_HOME/volumes/` (owner-only), and a
container mounts that directory itself, read-write. Two things follow, and both are stronger
than Modal's guarantees, never weaker:
- Nothing is lost when a container stops, however it stops (normally, SIGTERM, a timeout, even
  SIGKILL): a write lands on the host's disk at once, not in a copy waiting to be uploaded.
  `commit()` flushes the volume's filesystem (syncfs) so committed data also survives a crash of
  the host; `reload()` has nothing to fetch, since containers see each other's writes directly.
- Uploads from the client (`batch_upload`, `put_file`) are staged beside the volume and moved in
  with rename(2) when the batch ends, so a reader sees either the old file or the whole new one,
  and a failed batch leaves nothing behind.

Inside a container the same `Volume` object (unpickled, or made again by `from_name` when the
app's module is imported there) works on its mount path, which runner passes in the environment.
Paths given to a volume are relative to its root; one that climbs out of it is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import json
import os
import pathlib
import secrets
import shutil
import socket
import tempfile
from typing import IO, Any, BinaryIO, Iterator

from ._aio import blocking, blocking_iter
from ._context import is_local, pid_alive
from ._home import check_name, subdir
from ._mounts import VOLUMES_ENV
from .exception import ExecutionError, InvalidError, NotFoundError

SYNC_DIR_ENV = "RUNNER_VOLUME_SYNC_DIR"  # in a Kubernetes pod: the sync sidecar's request directory
SYNC_TIMEOUT = 600.0


def _pod_sync(volume: Any, op: str) -> None:
    """Ask the pod's sync sidecar (runner._k8s._pod.sidecar_script) to upload ("up") or download
    ("down") the pod's volumes, and wait for its answer. One request at a time per pod (flock)."""
    import fcntl
    import time

    d = pathlib.Path(os.environ[SYNC_DIR_ENV])
    token = secrets.token_hex(8)
    with open(d / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (d / "request.tmp").write_text(f"{token} {op}\n")
        os.replace(d / "request.tmp", d / "request")
        end = time.monotonic() + SYNC_TIMEOUT
        while time.monotonic() < end:
            try:
                said = (d / "done").read_text().split()
            except FileNotFoundError:
                said = []
            if said[:1] == [token]:
                if said[1:] != ["ok"]:
                    what = "commit" if op == "up" else "reload"
                    raise ExecutionError(f"{volume!r}: the {what} failed in the volume's sync sidecar "
                                         "(see the pod's volume-up container log)")
                return
            time.sleep(0.05)
    raise ExecutionError(f"{volume!r}: the volume's sync sidecar did not answer within {SYNC_TIMEOUT:g}s")


_EPHEMERAL = ".ephemeral"
_STAGING = ".staging"
CHUNK = 1 << 20


class FileEntryType(enum.IntEnum):
    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One entry of a volume listing; `path` is relative to the volume's root."""

    path: str
    type: FileEntryType
    mtime: int
    size: int


class Volume:
    def __init__(self, name: str | None, *, ephemeral_id: str | None = None, create: bool = False):
        self.name = name
        self._ephemeral_id = ephemeral_id
        self._create = create

    def __repr__(self) -> str:
        return f"Volume({self.name or self._ephemeral_id})"

    def __reduce__(self):
        return (Volume, (self.name,), {"_ephemeral_id": self._ephemeral_id, "_create": False})

    @property
    def object_id(self) -> str:
        return f"vo-{self._key()}"

    # ---- constructors ----------------------------------------------------------------------
    @staticmethod
    def from_name(name: str, *, create_if_missing: bool = False, environment_name: str | None = None,
                  version: Any = None) -> Volume:
        """A named volume; looked up on first use, created then if `create_if_missing`."""
        return Volume(check_name(name, "volume"), create=create_if_missing)

    @staticmethod
    @contextlib.contextmanager
    def ephemeral() -> Iterator[Volume]:
        """A volume that exists for the `with` block (and is swept if its owner dies first)."""
        _sweep_ephemeral()
        vid = secrets.token_hex(8)
        root = subdir("volumes", _EPHEMERAL)
        (root / vid).mkdir(mode=0o700)
        (root / f"{vid}.owner").write_text(f"{socket.gethostname()}:{os.getpid()}")
        try:
            yield Volume(None, ephemeral_id=vid)
        finally:
            shutil.rmtree(root / vid, ignore_errors=True)
            (root / f"{vid}.owner").unlink(missing_ok=True)

    @staticmethod
    def delete(name: str) -> None:
        """Delete a named volume and everything in it."""
        path = subdir("volumes") / check_name(name, "volume")
        if not path.is_dir():
            raise NotFoundError(f"volume {name!r} not found")
        # Rename first, so the name is free (and the volume gone for readers) at once.
        trash = tempfile.mkdtemp(dir=subdir("volumes", _STAGING))
        os.replace(path, os.path.join(trash, "v"))
        shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def names() -> list[str]:
        """The named volumes on this host."""
        return sorted(p.name for p in subdir("volumes").iterdir() if p.is_dir() and not p.name.startswith("."))

    # ---- where it lives --------------------------------------------------------------------
    def _key(self) -> str:
        return self.name or f"{_EPHEMERAL}/{self._ephemeral_id}"

    def _host_dir(self) -> pathlib.Path:
        """The directory on this host (client side), created if asked and missing."""
        if self._ephemeral_id:
            path = subdir("volumes", _EPHEMERAL) / self._ephemeral_id
            if not path.is_dir():
                raise NotFoundError("this ephemeral volume is gone: its `with Volume.ephemeral()` block has ended")
            return path
        path = subdir("volumes") / self.name
        if not path.is_dir():
            if not self._create:
                raise NotFoundError(
                    f"volume {self.name!r} not found; create it with `runner volume create {self.name}` "
                    f"or Volume.from_name({self.name!r}, create_if_missing=True)"
                )
            path.mkdir(mode=0o700, exist_ok=True)
        return path

    def _root(self) -> pathlib.Path:
        if is_local():
            return self._host_dir()
        mounts = json.loads(os.environ.get(VOLUMES_ENV) or "{}")
        if self._key() not in mounts:
            raise InvalidError(f"{self!r} is not mounted in this container; add it to the function's volumes={{...}}")
        return pathlib.Path(mounts[self._key()])

    def _path(self, path: str, root: pathlib.Path | None = None) -> pathlib.Path:
        """A path in the volume; one that leads outside it (by '..' or a symlink) is refused."""
        root = root or self._root()
        if not isinstance(path, str) or "\0" in path:
            raise InvalidError(f"volume path must be a string without NUL bytes, got {path!r}")
        full = (root / path.lstrip("/")).resolve()
        if full != root.resolve() and root.resolve() not in full.parents:
            raise InvalidError(f"path {path!r} is outside the volume; give a path inside it, such as 'dir/file.txt'")
        return full

    # ---- consistency -----------------------------------------------------------------------
    @blocking
    def commit(self) -> None:
        """Make every write to the volume durable (flushes its filesystem to disk; in a Kubernetes
        pod, also uploads it to the stack's bucket before returning)."""
        root = self._root()
        if os.environ.get(SYNC_DIR_ENV) and not is_local():
            _pod_sync(self, "up")
            return
        fd = os.open(root, os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    @blocking
    def reload(self) -> None:
        """See the latest committed state: containers on one machine share the directory, so it is
        seen already; in a Kubernetes pod the volume is downloaded from the stack's bucket again."""
        self._root()
        if os.environ.get(SYNC_DIR_ENV) and not is_local():
            _pod_sync(self, "down")

    # ---- reading ---------------------------------------------------------------------------
    @blocking
    def read_file(self, path: str) -> Iterator[bytes]:
        full = self._path(path)
        if not full.is_file():
            raise FileNotFoundError(f"no file {path!r} in {self!r}")
        return _chunks(full)

    @blocking
    def read_file_into_fileobj(self, path: str, fileobj: IO[bytes]) -> int:
        written = 0
        for chunk in self.read_file(path):
            fileobj.write(chunk)
            written += len(chunk)
        return written

    @blocking
    def listdir(self, path: str = "/", *, recursive: bool = False) -> list[FileEntry]:
        return list(self.iterdir(path, recursive=recursive))

    @blocking_iter
    def iterdir(self, path: str = "/", *, recursive: bool = True) -> Iterator[FileEntry]:
        root = self._root().resolve()
        start = self._path(path, root)
        if not start.exists():
            raise FileNotFoundError(f"no file or directory {path!r} in {self!r}")
        if start.is_file():
            yield _entry(start, root)
            return
        stack = [start]
        while stack:
            with os.scandir(stack.pop()) as it:
                for item in sorted(it, key=lambda e: e.name):
                    entry = _entry(pathlib.Path(item.path), root)
                    yield entry
                    if recursive and entry.type == FileEntryType.DIRECTORY:
                        stack.append(pathlib.Path(item.path))

    # ---- writing ---------------------------------------------------------------------------
    @blocking
    def batch_upload(self, force: bool = False) -> _Upload:
        return _Upload(self, force)

    @blocking
    def put_file(self, local_file: str | os.PathLike | BinaryIO, remote_path: str, *, force: bool = True) -> None:
        """Upload one file (a path or a binary file object) to `remote_path`, replacing it atomically."""
        with _Upload(self, force) as batch:
            batch.put_file(local_file, remote_path)

    @blocking
    def remove_file(self, path: str, recursive: bool = False) -> None:
        full = self._path(path)
        if full == self._root().resolve():
            raise InvalidError("cannot remove the volume's root; use Volume.delete(name) to delete the volume")
        if full.is_dir() and not full.is_symlink():
            if not recursive:
                raise InvalidError(f"{path!r} is a directory; pass recursive=True to remove it with its contents")
            shutil.rmtree(full)
        elif full.exists() or full.is_symlink():
            full.unlink()
        else:
            raise FileNotFoundError(f"no file or directory {path!r} in {self!r}")

    @blocking
    def copy_files(self, src_paths: list[str], dst_path: str, recursive: bool = False) -> None:
        """Copy files (and, with recursive=True, directories) within the volume, like `cp`."""
        if isinstance(src_paths, str):
            src_paths = [src_paths]
        dst = self._path(dst_path)
        into_dir = dst.is_dir() or len(src_paths) > 1 or dst_path.endswith("/")
        for src_path in src_paths:
            src = self._path(src_path)
            if not src.exists():
                raise FileNotFoundError(f"no file or directory {src_path!r} in {self!r}")
            target = dst / src.name if into_dir else dst
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                if not recursive:
                    raise InvalidError(f"{src_path!r} is a directory; pass recursive=True to copy it")
                shutil.copytree(src, target, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(src, target)


class _Upload:
    """`with vol.batch_upload() as batch:` files are staged, then moved in together at the end."""

    def __init__(self, volume: Volume, force: bool):
        self._volume, self._force = volume, force
        self._staged: list[tuple[str, pathlib.Path]] = []
        self._dir: str | None = None

    def __enter__(self) -> _Upload:
        if not is_local():
            raise InvalidError("batch_upload uploads from the client; inside a container write to the mount path")
        self._volume._host_dir()
        self._dir = tempfile.mkdtemp(dir=subdir("volumes", _STAGING))
        return self

    def put_file(self, local_file: str | os.PathLike | BinaryIO, remote_path: str, mode: int | None = None) -> None:
        self._volume._path(remote_path)  # refuse an escaping path before copying anything
        staged = pathlib.Path(tempfile.mkstemp(dir=self._dir)[1])
        if isinstance(local_file, (str, os.PathLike)):
            if not os.path.isfile(local_file):
                raise FileNotFoundError(f"no local file {os.fspath(local_file)!r} to upload")
            shutil.copyfile(local_file, staged)
        else:
            with open(staged, "wb") as out:
                shutil.copyfileobj(local_file, out, CHUNK)
        os.chmod(staged, mode if mode is not None else 0o644)
        self._staged.append((remote_path, staged))

    def put_directory(self, local_path: str | os.PathLike, remote_path: str, recursive: bool = True) -> None:
        local = pathlib.Path(local_path)
        if not local.is_dir():
            raise FileNotFoundError(f"no local directory {os.fspath(local_path)!r} to upload")
        files = local.rglob("*") if recursive else local.iterdir()
        for path in sorted(p for p in files if p.is_file()):
            self.put_file(path, f"{remote_path.rstrip('/')}/{path.relative_to(local).as_posix()}")

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                return
            targets = [(self._volume._path(remote), staged) for remote, staged in self._staged]
            if not self._force:
                taken = [remote for (remote, _), (full, _) in zip(self._staged, targets) if full.exists()]
                if taken:
                    raise FileExistsError(
                        f"{', '.join(taken)} already in {self._volume!r}; pass force=True to overwrite"
                    )
            for full, staged in targets:
                full.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, full)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def _chunks(path: pathlib.Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _entry(path: pathlib.Path, root: pathlib.Path) -> FileEntry:
    st = path.lstat()
    kind = (FileEntryType.SYMLINK if path.is_symlink() else FileEntryType.DIRECTORY if path.is_dir()
            else FileEntryType.FILE)
    return FileEntry(path.relative_to(root).as_posix(), kind, int(st.st_mtime), st.st_size)


def _sweep_ephemeral() -> None:
    """Remove ephemeral volumes whose owning process on this host is gone."""
    root = subdir("volumes", _EPHEMERAL)
    host = socket.gethostname()
    for owner in root.glob("*.owner"):
        owner_host, _, pid = owner.read_text().rpartition(":")
        if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(root / owner.stem, ignore_errors=True)
            owner.unlink(missing_ok=True)

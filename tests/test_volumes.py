"""Volumes: the client API, mounts in containers on each provider, durability however a container
stops, and the `runner volume` command with its bad inputs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

import runner
from helpers import RUNNER, assert_one_line_error, run_cli, write
from runner.exception import InvalidError, NotFoundError


def fresh(prefix="v") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---- the client API ------------------------------------------------------------------------------
def test_unknown_name_is_not_found_until_created():
    name = fresh()
    with pytest.raises(NotFoundError, match=f"runner volume create {name}"):
        runner.Volume.from_name(name).listdir("/")
    vol = runner.Volume.from_name(name, create_if_missing=True)
    assert vol.listdir("/") == []
    runner.Volume.delete(name)
    with pytest.raises(NotFoundError):
        runner.Volume.delete(name)


def test_upload_read_list_copy_remove(tmp_path):
    vol = runner.Volume.from_name(fresh(), create_if_missing=True)
    (tmp_path / "local.txt").write_text("from disk")
    with vol.batch_upload() as batch:
        batch.put_file(tmp_path / "local.txt", "/docs/a.txt")
        batch.put_file(io.BytesIO(b"from memory"), "docs/sub/b.bin")
    assert b"".join(vol.read_file("docs/a.txt")) == b"from disk"
    out = io.BytesIO()
    assert vol.read_file_into_fileobj("/docs/sub/b.bin", out) == len(b"from memory")
    assert [e.path for e in vol.listdir("docs")] == ["docs/a.txt", "docs/sub"]
    entries = {e.path: e for e in vol.listdir("/", recursive=True)}
    assert set(entries) == {"docs", "docs/a.txt", "docs/sub", "docs/sub/b.bin"}
    assert entries["docs/a.txt"].size == 9 and entries["docs"].type == runner.volume.FileEntryType.DIRECTORY
    vol.copy_files(["docs/a.txt"], "copy.txt")
    vol.copy_files(["docs/sub"], "tree", recursive=True)
    assert b"".join(vol.read_file("tree/b.bin")) == b"from memory"
    assert b"".join(vol.read_file("copy.txt")) == b"from disk"
    with pytest.raises(InvalidError, match="recursive=True"):
        vol.remove_file("docs")
    vol.remove_file("docs", recursive=True)
    assert sorted(e.path for e in vol.listdir("/")) == ["copy.txt", "tree"]
    with pytest.raises(FileNotFoundError):
        vol.read_file("docs/a.txt")


def test_a_failed_batch_leaves_nothing_and_force_guards_overwrites(tmp_path):
    vol = runner.Volume.from_name(fresh(), create_if_missing=True)
    vol.put_file(io.BytesIO(b"v1"), "keep.txt")
    with pytest.raises(RuntimeError):
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"new"), "new.txt")
            raise RuntimeError("interrupted")
    assert [e.path for e in vol.listdir("/")] == ["keep.txt"]
    with pytest.raises(FileExistsError, match="force=True"):
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"v2"), "keep.txt")
            batch.put_file(io.BytesIO(b"other"), "other.txt")
    assert b"".join(vol.read_file("keep.txt")) == b"v1" and [e.path for e in vol.listdir("/")] == ["keep.txt"]
    with vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"v2"), "keep.txt")
    assert b"".join(vol.read_file("keep.txt")) == b"v2"


def test_paths_outside_the_volume_are_refused(tmp_path):
    vol = runner.Volume.from_name(fresh(), create_if_missing=True)
    for bad in ("../x", "a/../../x", "/../../etc/passwd"):
        with pytest.raises(InvalidError, match="outside the volume"):
            vol.read_file(bad)
        with pytest.raises(InvalidError, match="outside the volume"):
            vol.put_file(io.BytesIO(b"x"), bad)
    os.symlink("/etc", vol._host_dir() / "escape")
    with pytest.raises(InvalidError, match="outside the volume"):
        vol.read_file("escape/hostname")


def test_ephemeral_volumes_go_with_their_block_and_their_owner():
    with runner.Volume.ephemeral() as vol:
        vol.put_file(io.BytesIO(b"x"), "f")
        root = vol._host_dir()
        assert root.is_dir()
    assert not root.exists()
    code = "import runner, io, os\nwith runner.Volume.ephemeral() as v:\n    v.put_file(io.BytesIO(b'x'), 'f')\n    print(v._host_dir(), flush=True)\n    os._exit(9)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    left = proc.stdout.strip()
    assert proc.returncode == 9 and os.path.isdir(left)  # its owner died inside the block
    with runner.Volume.ephemeral():
        assert not os.path.exists(left)  # swept by the next client


def test_bad_mounts_fail_at_decoration():
    app = runner.App()
    vol = runner.Volume.from_name("whatever", create_if_missing=True)
    for volumes, match in (({"data": vol}, "absolute path"), ({"/": vol}, "cannot mount"),
                           ({"/run/runner": vol}, "cannot mount"), ({"/d": "vol"}, "must be a runner.Volume"),
                           ({"/d": vol, "/d/e": vol}, "do not nest")):
        with pytest.raises(InvalidError, match=match):
            app.function(volumes=volumes)(lambda: None)


# ---- in containers ---------------------------------------------------------------------------
SHARED = """
    import os, socket, time
    import modal

    app = modal.App("vols")
    vol = modal.Volume.from_name("VOLNAME", create_if_missing=True)

    @app.function(volumes={"/data": vol})
    def write(name: str, text: str) -> int:
        with open(f"/data/{name}", "w") as f:
            f.write(text)
        vol.commit()
        return f"{socket.gethostname()}-{os.getpid()}"

    @app.function(volumes={"/mnt/v": vol})
    def read(name: str) -> tuple:
        vol.reload()
        return open(f"/mnt/v/{name}").read(), f"{socket.gethostname()}-{os.getpid()}", [e.path for e in vol.listdir("/")]

    @app.function(volumes={"/data": vol}, timeout=3)
    def write_then_hang(name: str):
        with open(f"/data/{name}", "w") as f:
            f.write("before the end")
        vol.commit()
        print("committed", name, flush=True)
        time.sleep(600)

    @app.local_entrypoint()
    def main(mode: str = "share"):
        if mode == "share":
            pid = write.remote("a.txt", "hello from a container")
            text, other_pid, listed = read.remote("a.txt")
            print("read:", text, "listed:", listed, "same container:", pid == other_pid)
        elif mode == "timeout":
            try:
                write_then_hang.remote("t.txt")
            except modal.exception.FunctionTimeoutError:
                print("timed out")
        else:
            write_then_hang.remote("s.txt")
"""


def test_containers_see_each_others_commits_and_the_client_reads_them(tmp_path, provider):
    name = fresh()
    write(tmp_path, "app.py", SHARED.replace("VOLNAME", name))
    proc = run_cli(["run", "app.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "read: hello from a container listed: ['a.txt'] same container: False" in proc.stdout
    vol = runner.Volume.from_name(name)
    assert b"".join(vol.read_file("a.txt")) == b"hello from a container"  # after the containers are gone


def test_nothing_committed_is_lost_when_a_function_times_out(tmp_path, provider):
    name = fresh()
    write(tmp_path, "app.py", SHARED.replace("VOLNAME", name))
    proc = run_cli(["run", "app.py", "--mode", "timeout"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "timed out" in proc.stdout
    assert b"".join(runner.Volume.from_name(name).read_file("t.txt")) == b"before the end"


def test_nothing_committed_is_lost_when_the_run_gets_sigterm(tmp_path, provider):
    name = fresh()
    write(tmp_path, "app.py", SHARED.replace("VOLNAME", name))
    env = {**os.environ, "RUNNER_PROVIDER": provider}
    proc = subprocess.Popen([*RUNNER, "run", "app.py", "--mode", "sigterm"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.startswith("committed s.txt"):
                break
            assert time.monotonic() < deadline, "the function never committed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) != 0
    finally:
        proc.kill()
        proc.communicate()
    assert b"".join(runner.Volume.from_name(name).read_file("s.txt")) == b"before the end"
    if provider == "docker":
        import docker

        client = docker.from_env()
        left = client.containers.list(all=True, filters={"label": "org.runner.function=write_then_hang"})
        client.close()
        assert not left, "the run's containers outlived SIGTERM"


def test_an_unknown_volume_fails_before_anything_starts(tmp_path):
    write(tmp_path, "app.py", """
        import modal
        app = modal.App()

        @app.function(volumes={"/data": modal.Volume.from_name("never-made")})
        def f():
            return 1
    """)
    proc = run_cli(["run", "app.py"], tmp_path)
    assert_one_line_error(proc, "volume 'never-made' not found", "runner volume create never-made")


# ---- the command -----------------------------------------------------------------------------
def test_volume_command_round_trip_and_bad_inputs(tmp_path):
    name = fresh()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "one.txt").write_text("1")
    (tmp_path / "two.txt").write_text("2")
    assert run_cli(["volume", "create", name], tmp_path).returncode == 0
    assert_one_line_error(run_cli(["volume", "create", name], tmp_path), "exists already")
    assert name in run_cli(["volume", "ls"], tmp_path).stdout.split()
    assert run_cli(["volume", "put", name, "dir", "/d"], tmp_path).returncode == 0
    assert run_cli(["volume", "put", name, "two.txt", "/d/"], tmp_path).returncode == 0
    assert_one_line_error(run_cli(["volume", "put", name, "two.txt", "/d/"], tmp_path), "already in", "--force")
    listing = run_cli(["volume", "ls", name, "d"], tmp_path).stdout
    assert "d/one.txt" in listing and "d/two.txt" in listing
    assert run_cli(["volume", "get", name, "d/one.txt", "-"], tmp_path).stdout == "1"
    assert run_cli(["volume", "get", name, "d", "out"], tmp_path).returncode == 0
    assert (tmp_path / "out" / "two.txt").read_text() == "2"
    assert_one_line_error(run_cli(["volume", "get", name, "d/one.txt", "out/one.txt"], tmp_path), "--force")
    assert_one_line_error(run_cli(["volume", "get", name, "../../etc/passwd", "-"], tmp_path), "outside the volume")
    assert_one_line_error(run_cli(["volume", "rm", name, "d"], tmp_path), "recursive")
    assert run_cli(["volume", "rm", name, "d", "-r"], tmp_path).returncode == 0
    assert_one_line_error(run_cli(["volume", "ls", "no-such-vol"], tmp_path), "not found", "runner volume create")
    assert_one_line_error(run_cli(["volume", "create", "bad/name"], tmp_path), "invalid volume name")
    assert_one_line_error(run_cli(["volume", "delete", name], tmp_path), "--yes")
    assert run_cli(["volume", "delete", name, "--yes"], tmp_path).returncode == 0
    assert name not in run_cli(["volume", "ls"], tmp_path).stdout.split()

"""`runner shell`: a shell in a function's container, with its image, volumes and secrets."""

from __future__ import annotations

import io
import uuid

import runner
from helpers import assert_one_line_error, run_cli, write

APP = """
    import modal

    app = modal.App("shell")
    vol = modal.Volume.from_name("VOLNAME", create_if_missing=True)

    @app.function(volumes={"/data": vol}, secrets=[modal.Secret.from_name("SECRETNAME")],
                  env={"GREETING": "hi"})
    def work():
        return 1

    @app.function()
    def other():
        return 2
"""


def make_app(tmp_path):
    vol_name, secret_name = f"v-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
    runner._secret.save(secret_name, {"TOKEN": "tok-value"})
    runner.Volume.from_name(vol_name, create_if_missing=True).put_file(io.BytesIO(b"in the volume"), "f.txt")
    write(tmp_path, "app.py", APP.replace("VOLNAME", vol_name).replace("SECRETNAME", secret_name))
    return vol_name


def test_shell_has_the_functions_env_secrets_and_volumes(tmp_path, provider):
    vol_name = make_app(tmp_path)
    script = 'echo "$GREETING $TOKEN"; cat /data/f.txt; echo; echo written > /data/from-shell.txt'
    proc = run_cli(["shell", "app.py::work", "--cmd", script], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hi tok-value" in proc.stdout and "in the volume" in proc.stdout
    assert b"".join(runner.Volume.from_name(vol_name).read_file("from-shell.txt")) == b"written\n"


def test_shell_reads_commands_from_stdin_and_returns_their_exit_code(tmp_path, provider):
    make_app(tmp_path)
    proc = run_cli(["shell", "app.py::work"], tmp_path, input="echo from-stdin\nexit 7\n")
    assert proc.returncode == 7, proc.stderr
    assert "from-stdin" in proc.stdout


def test_shell_bad_inputs(tmp_path):
    make_app(tmp_path)
    assert_one_line_error(run_cli(["shell", "app.py::nothing"], tmp_path), "has no function or entrypoint 'nothing'")
    assert_one_line_error(run_cli(["shell"], tmp_path), "--image")
    assert_one_line_error(run_cli(["shell", "app.py::other", "--volume", "no-such-vol"], tmp_path),
                          "volume 'no-such-vol' not found")
    assert_one_line_error(run_cli(["shell", "app.py::other", "--secret", "no-such-secret"], tmp_path),
                          "secret 'no-such-secret' not found")


def test_shell_on_a_terminal(tmp_path, provider):
    """With a terminal on both ends the shell is interactive (docker: `-t`): it reads what is typed."""
    import os
    import pty
    import select
    import time

    from helpers import RUNNER

    make_app(tmp_path)
    env = {**os.environ, "RUNNER_PROVIDER": provider, "PS1": "$ "}
    pid, fd = pty.fork()
    if pid == 0:  # the child: runner shell, on the terminal
        os.chdir(tmp_path)
        os.execvpe(RUNNER[0], [*RUNNER, "shell", "app.py::work"], env)
    seen, deadline = b"", time.monotonic() + 120
    os.write(fd, b'echo "typed-$GREETING"; exit 5\n')  # typed ahead: the terminal holds it until read
    try:
        while b"typed-" + b"hi" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"typed-hi" in seen, seen[-500:]
    assert os.waitstatus_to_exitcode(status) == 5


def test_shell_has_the_functions_local_files_on_docker(tmp_path, docker_provider):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "note.txt").write_text("mounted, not built")
    write(tmp_path, "app.py", """
        import modal

        image = modal.Image.debian_slim().add_local_dir("data", "/assets")
        app = modal.App("shell-mounts", image=image)

        @app.function()
        def work():
            return 1
    """)
    proc = run_cli(["shell", "app.py::work", "--cmd", "cat /assets/note.txt; echo; pwd"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["mounted,", "not", "built", "/root"]  # as in the function's own container

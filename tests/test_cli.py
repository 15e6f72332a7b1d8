"""`runner run`: entrypoint selection, flags, and every bad input the docs list (docs/errors.md).

Each bad input must give one clear line on stderr, a non-zero exit, and no traceback unless
`--verbose` is given.
"""

from __future__ import annotations

import os
import subprocess
import sys


from conftest import require_docker
from helpers import assert_one_line_error, run_cli, write



TWO_FUNCS = """
    import modal
    app = modal.App("cli")

    @app.function()
    def double(x: int) -> int:
        return 2 * x

    @app.function()
    def triple(x: int) -> int:
        print("triple ran", 3 * x)
        return 3 * x
"""

ENTRY = """
    import modal
    app = modal.App("cli")

    @app.function()
    def repeat(word: str, n: int) -> str:
        return "-".join([word] * n)

    @app.local_entrypoint()
    def main(word: str, n: int = 2, loud: bool = False, ratio: float = 0.5, under_score: str = "u"):
        out = repeat.remote(word, n)
        print("result:", out.upper() if loud else out, ratio * 2, under_score)
"""


# ---- picking what to run ---------------------------------------------------------------------
def test_entrypoint_flags_are_typed_from_the_signature(tmp_path):
    write(tmp_path, "app.py", ENTRY)
    proc = run_cli(["run", "app.py", "--word", "ab", "--n", "3", "--loud", "--ratio", "2", "--under-score", "z"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "result: AB-AB-AB 4.0 z" in proc.stdout


def test_defaults_apply_when_flags_are_left_out(tmp_path):
    write(tmp_path, "app.py", ENTRY)
    proc = run_cli(["run", "app.py", "--word", "x"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "result: x-x 1.0 u" in proc.stdout


def test_double_colon_picks_a_function_and_runs_it_remotely(tmp_path):
    write(tmp_path, "app.py", TWO_FUNCS)
    proc = run_cli(["run", "app.py::triple", "--x", "4"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "triple ran 12" in proc.stdout


def test_app_variable_prefix_is_accepted(tmp_path):
    write(tmp_path, "app.py", TWO_FUNCS)
    proc = run_cli(["run", "app.py::app.double", "--x", "4"], tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_single_function_runs_without_naming_it(tmp_path):
    write(tmp_path, "one.py", """
        import modal
        app = modal.App()

        @app.function()
        def only():
            print("only ran remotely:", not modal.is_local())
    """)
    proc = run_cli(["run", "one.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "only ran remotely: True" in proc.stdout


def test_module_mode(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write(pkg, "helpers.py", "def shout(s):\n    return s.upper() + '!'\n")
    write(pkg, "job.py", """
        import modal
        from pkg.helpers import shout
        app = modal.App()

        @app.function()
        def loud(s: str) -> str:
            return shout(s)

        @app.local_entrypoint()
        def main():
            print("module:", loud.remote("hi"))
    """)
    proc = run_cli(["run", "-m", "pkg.job"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "module: HI!" in proc.stdout


def test_async_entrypoint(tmp_path):
    write(tmp_path, "a.py", """
        import modal
        app = modal.App()

        @app.function()
        async def inc(x: int) -> int:
            return x + 1

        @app.local_entrypoint()
        async def main():
            print("async:", await inc.remote.aio(41))
    """)
    proc = run_cli(["run", "a.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "async: 42" in proc.stdout


def test_plain_python_with_app_run(tmp_path):
    write(tmp_path, "plain.py", """
        import runner as modal
        app = modal.App()

        @app.function()
        def where() -> bool:
            return modal.is_local()

        if __name__ == "__main__":
            with app.run():
                print("remote is_local:", where.remote())
    """)
    env = dict(os.environ, RUNNER_PROVIDER="embedded")
    proc = subprocess.run([sys.executable, "plain.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "remote is_local: False" in proc.stdout


def test_user_exception_keeps_its_traceback(tmp_path):
    write(tmp_path, "boom.py", """
        import modal
        app = modal.App()

        class Kaboom(Exception):
            pass

        @app.function()
        def explode():
            raise Kaboom("deep inside")

        @app.local_entrypoint()
        def main():
            explode.remote()
    """)
    proc = run_cli(["run", "boom.py"], tmp_path)
    assert proc.returncode == 1
    assert "Kaboom: deep inside" in proc.stderr
    assert "Remote traceback" in proc.stderr and 'raise Kaboom("deep inside")' in proc.stderr


# ---- bad input: one line, non-zero exit, no traceback -----------------------------------------
def test_missing_file(tmp_path):
    assert_one_line_error(run_cli(["run", "nope.py"], tmp_path), "no such file: nope.py")


def test_not_a_python_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    assert_one_line_error(run_cli(["run", "notes.txt"], tmp_path), "not a Python file")


def test_missing_module(tmp_path):
    assert_one_line_error(run_cli(["run", "-m", "no.such.module"], tmp_path), "no module named")


def test_no_app(tmp_path):
    write(tmp_path, "empty.py", "x = 1\n")
    assert_one_line_error(run_cli(["run", "empty.py"], tmp_path), "defines no App")


def test_ambiguous_entrypoint(tmp_path):
    write(tmp_path, "app.py", TWO_FUNCS)
    lines = assert_one_line_error(run_cli(["run", "app.py"], tmp_path), "double", "triple", "app.py::NAME")
    assert len(lines) == 1


def test_unknown_name(tmp_path):
    write(tmp_path, "app.py", TWO_FUNCS)
    assert_one_line_error(run_cli(["run", "app.py::quadruple"], tmp_path), "no function or entrypoint 'quadruple'", "double")


def test_wrong_flag_type(tmp_path):
    write(tmp_path, "app.py", ENTRY)
    proc = run_cli(["run", "app.py", "--word", "x", "--n", "three"], tmp_path)
    assert_one_line_error(proc, "'three' is not a valid integer", code=2)


def test_missing_required_flag(tmp_path):
    write(tmp_path, "app.py", ENTRY)
    assert_one_line_error(run_cli(["run", "app.py"], tmp_path), "--word", code=2)


def test_unknown_flag(tmp_path):
    write(tmp_path, "app.py", ENTRY)
    assert_one_line_error(run_cli(["run", "app.py", "--word", "x", "--colour", "red"], tmp_path), "--colour", code=2)


def test_unpicklable_argument(tmp_path):
    write(tmp_path, "lock.py", """
        import threading
        import modal
        app = modal.App()

        @app.function()
        def use(handle, n: int):
            return n

        @app.local_entrypoint()
        def main():
            use.remote(threading.Lock(), 3)
    """)
    assert_one_line_error(run_cli(["run", "lock.py"], tmp_path), "argument 'handle' of use", "cannot be serialized")


def test_python_version_mismatch(tmp_path):
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.11"
    write(tmp_path, "py.py", f"""
        import modal
        app = modal.App(image=modal.Image.debian_slim(python_version="{other}"))

        @app.function()
        def f():
            print("must not run")

        @app.local_entrypoint()
        def main():
            print("entrypoint must not run")
            f.remote()
    """)
    proc = run_cli(["run", "py.py"], tmp_path)
    assert_one_line_error(proc, f"Python {other}", "must match")
    assert "must not run" not in proc.stdout


def test_gpu_not_present(tmp_path):
    write(tmp_path, "gpu.py", """
        import modal
        app = modal.App()

        @app.function(gpu="H100")
        def train():
            print("must not run")

        @app.local_entrypoint()
        def main():
            print("entrypoint must not run")
    """)
    proc = run_cli(["run", "gpu.py"], tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert_one_line_error(proc, "gpu H100", "this host has no NVIDIA GPU", "--cloud")
    assert "must not run" not in proc.stdout


def test_invalid_gpu_string(tmp_path):
    write(tmp_path, "gpu.py", """
        import modal
        app = modal.App()

        @app.function(gpu="X100")
        def f():
            pass
    """)
    assert_one_line_error(run_cli(["run", "gpu.py"], tmp_path), "invalid gpu 'X100'", "H100")


def test_negative_timeout(tmp_path):
    write(tmp_path, "t.py", """
        import modal
        app = modal.App()

        @app.function(timeout=-5)
        def f():
            pass
    """)
    assert_one_line_error(run_cli(["run", "t.py"], tmp_path), "timeout must be", "-5")


def test_unknown_function_option(tmp_path):
    write(tmp_path, "o.py", """
        import modal
        app = modal.App()

        @app.function(gpus="H100")
        def f():
            pass
    """)
    assert_one_line_error(run_cli(["run", "o.py"], tmp_path), "unknown option(s) gpus")


def test_unknown_provider(tmp_path):
    write(tmp_path, "app.py", TWO_FUNCS)
    assert_one_line_error(run_cli(["--provider", "nope", "run", "app.py::double", "--x", "1"], tmp_path), "nope", code=2)


def test_docker_provider_without_a_daemon(tmp_path):
    write(tmp_path, "app.py", TWO_FUNCS)
    proc = run_cli(
        ["--provider", "docker", "run", "app.py::double", "--x", "1"], tmp_path,
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"},
    )
    assert_one_line_error(proc, "needs a Docker daemon", "--provider embedded")


def test_verbose_shows_the_traceback(tmp_path):
    proc = run_cli(["--verbose", "run", "nope.py"], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "Error: no such file: nope.py" in proc.stderr


def test_image_build_failure_shows_the_failing_step_log(tmp_path):
    require_docker()
    write(tmp_path, "build.py", """
        import modal
        image = modal.Image.debian_slim().run_commands(
            "echo fine-step",
            "echo failing-step-says-why >&2; exit 7",
        )
        app = modal.App(image=image)

        @app.function()
        def f():
            print("must not run")
    """)
    proc = run_cli(["run", "build.py"], tmp_path, env={"RUNNER_PROVIDER": "docker"})
    lines = assert_one_line_error(proc, "image build failed at step 2/2", "exit code 7")
    assert any("failing-step-says-why" in line for line in lines[1:]), proc.stderr
    assert "must not run" not in proc.stdout


def test_embedded_mode_says_once_that_image_steps_are_not_applied(tmp_path):
    write(tmp_path, "img.py", """
        import modal
        image = modal.Image.debian_slim().pip_install("six").env({"FROM_IMAGE": "yes"})
        app = modal.App(image=image)

        @app.function()
        def f() -> str:
            import os
            return os.environ.get("FROM_IMAGE", "")

        @app.function()
        def g() -> int:
            return 1

        @app.local_entrypoint()
        def main():
            print("env from image:", f.remote(), g.remote())
    """)
    proc = run_cli(["run", "img.py"], tmp_path, env={"RUNNER_PROVIDER": "embedded"})
    assert proc.returncode == 0, proc.stderr
    assert "env from image: yes 1" in proc.stdout
    notices = [line for line in proc.stderr.splitlines() if "does not apply image build steps" in line]
    assert len(notices) == 1 and "f, g" in notices[0]


def test_container_output_never_splits_the_clients_own_lines(tmp_path, provider):
    write(tmp_path, "noisy.py", """
        import threading
        import modal
        app = modal.App()

        @app.function()
        def chatty(i: int) -> int:
            for k in range(20):
                print(f"container {i} line {k}")
            return i

        @app.local_entrypoint()
        def main():
            done = threading.Event()
            worker = threading.Thread(target=lambda: (list(chatty.map(range(100))), done.set()))
            worker.start()
            n = 0
            while not done.is_set() or n < 300:
                print("CLIENT-LINE", n, "alpha", "beta", "gamma")
                n += 1
            worker.join()
            print("CLIENT-TOTAL", n)
    """)
    proc = run_cli(["run", "noisy.py"], tmp_path, env={"RUNNER_PROVIDER": provider})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    total = int([line for line in lines if line.startswith("CLIENT-TOTAL")][0].split()[1])
    client = [line for line in lines if "CLIENT-LINE" in line]
    assert len(client) == total
    assert all(line == f"CLIENT-LINE {n} alpha beta gamma" for n, line in enumerate(client)), client[:5]
    assert sum(line.startswith("container ") for line in lines) == 2000

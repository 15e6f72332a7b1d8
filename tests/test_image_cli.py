"""`runner image build | ls | prune` against the real Docker daemon.

Every image here has a run_commands step holding a fresh uuid, so each test builds images no
earlier run has built. Bad input gives one `Error:` line and a non-zero exit, like `runner run`.
"""

from __future__ import annotations

import uuid

from conftest import require_docker
from helpers import assert_one_line_error, run_cli, write

BASE = "python:3.11-slim-bookworm"


def write_app(tmp_path, source, name="app.py"):
    return write(tmp_path, name, source)



def docker_client():
    import docker

    return docker.from_env()


def image_exists(client, ref) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def built_tag(stdout: str, fn: str) -> str:
    """The local tag `runner image build` reported for the image of `fn`."""
    for line in stdout.splitlines():
        names, _, rest = line.partition(": image ")
        if rest and fn in names.split(", "):
            return rest.split(" -> ", 1)[1].split(" (", 1)[0]
    raise AssertionError(f"no image line for {fn} in {stdout!r}")


ONE_IMAGE = """
    import modal

    image = modal.Image.debian_slim().run_commands("echo step-{token} > /marker")
    app = modal.App("image-cli", image=image)

    @app.function()
    def f(x: int) -> int:
        return x + 1
"""


# ---- build -----------------------------------------------------------------------------------
def test_build_prints_steps_then_a_second_build_builds_nothing(tmp_path):
    require_docker()
    token = uuid.uuid4().hex
    write_app(tmp_path, ONE_IMAGE.format(token=token))

    first = run_cli(["image", "build", "app.py"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Building image im-" in first.stderr and "(1 of 1 steps to run)" in first.stderr, first.stderr
    assert f"[1/1] RUN echo step-{token} > /marker" in first.stderr, first.stderr
    tag = built_tag(first.stdout, "f")
    assert tag.startswith("runner-image:"), first.stdout
    assert "(built 1 of 1 steps in " in first.stdout, first.stdout
    client = docker_client()
    try:
        assert image_exists(client, tag)
        # The step really ran: the file it wrote is in the image.
        out = client.containers.run(tag, ["cat", "/marker"], entrypoint=[], remove=True)
        assert out.decode().strip() == f"step-{token}"
    finally:
        client.close()

    second = run_cli(["image", "build", "app.py"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Building image" not in second.stderr, second.stderr
    assert "[1/1]" not in second.stderr, second.stderr
    assert built_tag(second.stdout, "f") == tag
    assert "(cached, nothing built)" in second.stdout, second.stdout


def test_run_after_build_finds_the_image_without_building(tmp_path):
    require_docker()
    write_app(tmp_path, ONE_IMAGE.format(token=uuid.uuid4().hex))
    built = run_cli(["image", "build", "app.py"], tmp_path)
    assert built.returncode == 0, built.stderr
    ran = run_cli(["--provider", "docker", "run", "app.py", "--x", "41"], tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "Building image" not in ran.stderr, ran.stderr


def test_build_only_the_named_function(tmp_path):
    require_docker()
    one, two = uuid.uuid4().hex, uuid.uuid4().hex
    write_app(tmp_path, f"""
        import modal

        app = modal.App("image-cli-two")

        @app.function(image=modal.Image.debian_slim().run_commands("echo one-{one}"))
        def one(x):
            return x

        @app.function(image=modal.Image.debian_slim().run_commands("echo two-{two}"))
        def two(x):
            return x
    """)
    proc = run_cli(["image", "build", "app.py::one"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"echo one-{one}" in proc.stderr and f"two-{two}" not in proc.stderr, proc.stderr
    assert "two:" not in proc.stdout, proc.stdout
    assert built_tag(proc.stdout, "one").startswith("runner-image:")

    both = run_cli(["image", "build", "app.py"], tmp_path)
    assert both.returncode == 0, both.stderr
    assert f"echo two-{two}" in both.stderr and f"one-{one}" not in both.stderr, both.stderr
    assert "(cached, nothing built)" in [l for l in both.stdout.splitlines() if l.startswith("one:")][0]


def test_build_of_a_class_and_of_a_function_sharing_its_image(tmp_path):
    require_docker()
    token = uuid.uuid4().hex
    write_app(tmp_path, f"""
        import modal

        app = modal.App("image-cli-cls", image=modal.Image.debian_slim().run_commands("echo shared-{token}"))

        @app.function()
        def f(x):
            return x

        @app.cls()
        class Model:
            @modal.method()
            def predict(self, x):
                return x
    """)
    proc = run_cli(["image", "build", "app.py::Model.predict"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Model: image im-"), proc.stdout
    both = run_cli(["image", "build", "app.py"], tmp_path)
    assert both.returncode == 0, both.stderr
    assert "Building image" not in both.stderr, both.stderr
    assert "f, Model: image im-" in both.stdout, both.stdout  # one image, built once, named twice


def test_build_failure_is_one_error_line_with_the_step_log(tmp_path):
    require_docker()
    token = uuid.uuid4().hex
    write_app(tmp_path, f"""
        import modal

        image = modal.Image.debian_slim().run_commands("echo fine-{token}", "echo broken-{token}; exit 7")
        app = modal.App("image-cli-bad", image=image)

        @app.function()
        def f(x):
            return x
    """)
    proc = run_cli(["image", "build", "app.py"], tmp_path)
    tail = assert_one_line_error(proc, "image build failed at step 2/2", "exit code 7")
    assert f"broken-{token}" in "\n".join(tail[1:]), proc.stderr  # the step's log follows the line
    assert "runner-image:" not in proc.stdout


# ---- ls --------------------------------------------------------------------------------------
def test_ls_shows_the_built_image(tmp_path):
    require_docker()
    write_app(tmp_path, ONE_IMAGE.format(token=uuid.uuid4().hex))
    built = run_cli(["image", "build", "app.py"], tmp_path)
    assert built.returncode == 0, built.stderr
    tag = built_tag(built.stdout, "f")
    client = docker_client()
    try:
        short = client.images.get(tag).id.split(":", 1)[1][:12]
    finally:
        client.close()

    proc = run_cli(["image", "ls"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "SIZE", "CREATED"], proc.stdout
    row = [line for line in lines if line.startswith(tag + " ")]
    assert row and short in row[0] and "MB" in row[0], proc.stdout
    assert BASE not in proc.stdout  # only runner's images


# ---- prune -----------------------------------------------------------------------------------
def test_prune_removes_unused_runner_images_only(tmp_path):
    require_docker()
    tokens = {k: uuid.uuid4().hex for k in ("running", "stopped", "unused")}
    write_app(tmp_path, f"""
        import modal

        app = modal.App("image-cli-prune")
        base = modal.Image.debian_slim()

        @app.function(image=base.run_commands("echo running-{tokens['running']}"))
        def running(x):
            return x

        @app.function(image=base.run_commands("echo stopped-{tokens['stopped']}"))
        def stopped(x):
            return x

        @app.function(image=base.run_commands("echo unused-{tokens['unused']}", "echo second-{tokens['unused']}"))
        def unused(x):
            return x
    """)
    built = run_cli(["image", "build", "app.py"], tmp_path)
    assert built.returncode == 0, built.stderr
    tags = {k: built_tag(built.stdout, k) for k in tokens}
    keep_tag = f"runner-test-keep:{tokens['unused'][:12]}"  # another repository's tag on a runner image
    client = docker_client()
    # Labelled so no runner client's leftover sweep takes them for its own.
    labels = {"org.runner.owner": "", "org.runner.test": "image-cli"}
    containers = []
    try:
        base_id = client.images.get(BASE).id
        containers.append(client.containers.run(tags["running"], ["sleep", "120"], entrypoint=[], detach=True, labels=labels))
        containers.append(client.containers.create(tags["stopped"], ["true"], entrypoint=[], labels=labels))
        # The unused image's first step also carries a non-runner tag: that one must survive.
        first_step = client.images.get(tags["unused"]).attrs["Parent"]
        client.api.tag(first_step, keep_tag.split(":")[0], keep_tag.split(":")[1])

        proc = run_cli(["image", "prune"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("removed "), proc.stdout
        assert "reclaimed" in proc.stdout, proc.stdout
        assert not image_exists(client, tags["unused"])
        assert image_exists(client, tags["running"]) and image_exists(client, tags["stopped"])
        assert image_exists(client, keep_tag)
        assert client.images.get(BASE).id == base_id

        proc = run_cli(["image", "prune", "--all"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert not image_exists(client, tags["stopped"])
        assert image_exists(client, tags["running"])  # a running container still uses it
        assert image_exists(client, keep_tag)
        assert client.images.get(BASE).id == base_id

        listed = run_cli(["image", "ls"], tmp_path)
        assert tags["running"] in listed.stdout and tags["stopped"] not in listed.stdout, listed.stdout
    finally:
        for c in containers:
            c.remove(force=True)
        for ref in (keep_tag, tags["running"]):
            try:
                client.images.remove(ref)
            except Exception:  # noqa: BLE001 - cleanup only
                pass
        client.close()


# ---- bad input -------------------------------------------------------------------------------
def test_bad_inputs_give_one_error_line(tmp_path):
    write_app(tmp_path, ONE_IMAGE.format(token="unused"))
    write_app(tmp_path, "x = 1\n", name="noapp.py")

    proc = run_cli(["image", "build", "missing.py"], tmp_path)
    assert_one_line_error(proc, "no such file: missing.py")

    proc = run_cli(["image", "build", "app.py::nope"], tmp_path)
    assert_one_line_error(proc, "has no function or entrypoint 'nope'", "f")

    proc = run_cli(["image", "build", "noapp.py"], tmp_path)
    assert_one_line_error(proc, "defines no App")

    (tmp_path / "notes.txt").write_text("hi")
    proc = run_cli(["image", "build", "notes.txt"], tmp_path)
    assert_one_line_error(proc, "is not a Python file")

    proc = run_cli(["image", "build"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr

    proc = run_cli(["image", "nope"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


def test_no_docker_daemon_gives_one_error_line(tmp_path):
    write_app(tmp_path, ONE_IMAGE.format(token="unused"))
    nowhere = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    for args in (["image", "build", "app.py"], ["image", "ls"], ["image", "prune"], ["image", "prune", "--all"]):
        proc = run_cli(args, tmp_path, env=nowhere, timeout=60)
        assert_one_line_error(proc, "Docker daemon")

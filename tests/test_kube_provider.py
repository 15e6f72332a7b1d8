"""The kubernetes provider end to end (level 2 of issue 7): `runner run` against the API stand-in
(tests/kube_standin) through the official client, with a real redis-server as the stack's queue
and Debian's registry as its registry (tests/kube_stack.py). Pods are Docker containers; nothing
here reaches a pod but through the API (exec, logs, port-forward) and the queue.

Each test runs an app as a user would (`runner run FILE` in a child process, with the stack's
outputs in RUNNER_STACK_OUTPUTS) and asserts what the user sees, and what is left in the cluster
and the queue afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref

import pytest

from helpers import assert_one_line_error, http_to, run_cli, write

pytestmark = [pytest.mark.docker, pytest.mark.timeout(420)]


def _env(stack, **extra) -> dict:
    """The runner's environment (its kubeconfig is the ServiceAccount's, held to the stack's Role);
    ADMIN_KUBECONFIG for app code that acts as the cluster itself (a preemption)."""
    return {**os.environ, **stack.env, "KUBECONFIG": stack.kube.kubeconfig,
            "ADMIN_KUBECONFIG": stack.kube.admin_kubeconfig, **extra}


def _run(stack, tmp_path, source: str, *args: str, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    path = write(tmp_path, "app.py", textwrap.dedent(source))
    return run_cli(["run", str(path), *args], cwd=tmp_path, env=_env(stack, **env), timeout=timeout)


_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _api(stack):
    """One administrator's ApiClient per stand-in, for the polling helpers below: a new client
    per poll would keep a connection pool open each until the stand-in stops."""
    if stack.kube not in _clients:
        _clients[stack.kube] = stack.kube.api_client()
    return _clients[stack.kube]


def _objects(stack, app: str) -> dict[str, list[str]]:
    """Names of the runner objects of `app` left in the stand-in, by kind (empty lists dropped)."""
    from kubernetes import client

    api = _api(stack)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    sel = f"runner/app={app}"
    ns = stack.kube.namespace
    found = {
        "pods": [p.metadata.name for p in core.list_namespaced_pod(ns, label_selector=sel).items],
        "deployments": [d.metadata.name for d in apps.list_namespaced_deployment(ns, label_selector=sel).items],
        "secrets": [s.metadata.name for s in core.list_namespaced_secret(ns, label_selector=sel).items],
        "configmaps": [c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector=sel).items],
        "scaledobjects": [o["metadata"]["name"] for o in custom.list_namespaced_custom_object(
            "keda.sh", "v1alpha1", ns, "scaledobjects", label_selector=sel)["items"]],
        "httpscaledobjects": [o["metadata"]["name"] for o in custom.list_namespaced_custom_object(
            "http.keda.sh", "v1alpha1", ns, "httpscaledobjects", label_selector=sel)["items"]],
    }
    return {k: v for k, v in found.items() if v}


def _wait_gone(stack, app: str, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while True:
        left = _objects(stack, app)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.5)


def _queue_keys(stack, pattern: str) -> list[bytes]:
    import redis

    r = redis.Redis(unix_socket_path=stack.socket, password=stack.password)
    try:
        return sorted(r.scan_iter(match=pattern))
    finally:
        r.close()


CALLS = """
import modal

app = modal.App("kube-calls")


@app.function(secrets=[modal.Secret.from_dict({"API_TOKEN": "s3cr3t-value-123"})])
def square(x: int) -> int:
    import os

    assert os.environ["API_TOKEN"] == "s3cr3t-value-123"
    return x * x


@app.function()
def fail(msg: str):
    raise ValueError(msg)


@app.function()
def count(n: int):
    for i in range(n):
        yield i


@app.cls()
class Counter:
    @modal.enter()
    def start(self):
        self.base = 100

    @modal.method()
    def add(self, x: int) -> int:
        return self.base + x


@app.local_entrypoint()
def main():
    import json
    import subprocess

    print("remote:", square.remote(7))
    print("map:", list(square.map(range(6))))
    print("starmap:", list(square.starmap([(2,), (3,)])))
    call = square.spawn(9)
    print("spawn:", call.get(timeout=120))
    try:
        fail.remote("bad input")
    except ValueError as e:
        print("error:", type(e).__name__, e)
    print("gen:", list(count.remote_gen(3)))
    print("cls:", Counter().add.remote(5))
    # What the cluster holds while the run goes on: the pod spec names the Secret, never its value.
    from kubernetes import client, config

    api = config.new_client_from_config()
    got = client.CoreV1Api(api).list_namespaced_pod("runner", label_selector="runner/app=kube-calls")
    pods = json.dumps(api.sanitize_for_serialization(got))
    print("secret value in pod specs:", "s3cr3t-value-123" in pods)
    print("secret referenced:", '"secretRef"' in pods)
    other = subprocess.run(["python", "-c", "import runner; print(runner.FunctionCall.from_id(%r).get(timeout=60))"
                            % square.spawn(11).object_id], capture_output=True, text=True)
    print("from_id in another process:", other.stdout.strip() or other.stderr.strip()[-300:])
"""


def test_functions_classes_and_calls_run_on_pods_and_nothing_is_left(kube_stack, tmp_path):
    proc = _run(kube_stack, tmp_path, CALLS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for line in ("remote: 49", "map: [0, 1, 4, 9, 16, 25]", "starmap: [4, 9]", "spawn: 81",
                 "error: ValueError bad input", "gen: [0, 1, 2]", "cls: 105", "secret value in pod specs: False",
                 "secret referenced: True", "from_id in another process: 121"):
        assert line in out, out + proc.stderr
    assert _wait_gone(kube_stack, "kube-calls") == {}  # the run's owner went, and the GC took the rest
    assert _queue_keys(kube_stack, "rq:f:kube-calls/*:spec") == []


SLOW = """
import time

import modal

app = modal.App("kube-killed")


@app.function()
def slow():
    time.sleep(600)


@app.local_entrypoint()
def main():
    slow.spawn()
    print("started", flush=True)
    time.sleep(600)
"""


def test_a_killed_client_is_cleaned_up_by_the_next_run(kube_stack, tmp_path):
    path = write(tmp_path, "app.py", textwrap.dedent(SLOW))
    env = _env(kube_stack)
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip().endswith("started") or True
        end = time.monotonic() + 120
        while "pods" not in _objects(kube_stack, "kube-killed"):
            assert time.monotonic() < end, "the function's pod never appeared"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: the owner stays, its heartbeat stops
        proc.wait()
    assert "configmaps" in _objects(kube_stack, "kube-killed")
    time.sleep(3)
    done = _run(kube_stack, tmp_path, CALLS.replace("kube-calls", "kube-after"), RUNNER_KUBE_OWNER_TIMEOUT="2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _wait_gone(kube_stack, "kube-killed") == {}


REDELIVER = """
import subprocess
import time

import modal

app = modal.App("kube-redeliver")
attempts = modal.Dict.from_name("kube-redeliver-attempts", create_if_missing=True)


@app.function(retries=0)
def work(x: int) -> int:
    attempts[x] = attempts.get(x, 0) + 1
    time.sleep(4)
    return x * 10


@app.local_entrypoint()
def main():
    attempts.clear()
    call = work.spawn(3)
    while attempts.get(3, 0) < 1:
        time.sleep(0.1)
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config())
    sel = "runner/app=kube-redeliver,runner/kind=worker"
    pod = core.list_namespaced_pod("runner", label_selector=sel).items[0].metadata.name
    names = subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    container = next(n for n in names.split() if n.startswith(f"k8s_main_{pod}_"))
    # A spot node lost mid-input: its processes die at once (no drain), then the API drops its pods.
    subprocess.run(["docker", "kill", container], check=True, capture_output=True)
    core.delete_namespaced_pod(pod, "runner", grace_period_seconds=0)
    print("result:", call.get(timeout=120))
    print("attempts:", attempts[3])
"""


def test_an_input_whose_pod_dies_is_delivered_again_without_using_a_retry(kube_stack, tmp_path):
    proc = _run(kube_stack, tmp_path, REDELIVER)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: 30" in proc.stdout, proc.stdout + proc.stderr
    assert "attempts: 2" in proc.stdout, proc.stdout  # run again after the lease, though retries=0


VOLUME = """
import json
import subprocess
import time

import modal

app = modal.App("kube-volume")
vol = modal.Volume.from_name("kube-sigterm-vol", create_if_missing=True)


@app.function(volumes={"/data": vol})
def write(token: str):
    with open(f"/data/{token}.txt", "w") as f:
        f.write("kept " + token)  # no commit: the sidecar's trap must upload it when the pod stops


@app.function(volumes={"/data": vol})
def read(token: str) -> str:
    vol.reload()
    return open(f"/data/{token}.txt").read()


@app.local_entrypoint()
def main(token: str):
    import os

    from kubernetes import client, config

    write.remote(token)
    core = client.CoreV1Api(config.new_client_from_config(os.environ["ADMIN_KUBECONFIG"]))  # the cluster's doing
    sel = "runner/app=kube-volume,runner/function=write"
    core.delete_collection_namespaced_pod("runner", label_selector=sel)  # SIGTERM, as for a preemption
    end = time.monotonic() + 90
    while core.list_namespaced_pod("runner", label_selector=sel).items:  # gone: its final upload is done
        assert time.monotonic() < end, "the pod was not deleted"
        time.sleep(0.2)
    print("after SIGTERM:", read.remote(token))
"""


def test_writes_are_uploaded_when_the_pod_is_terminated(kube_stack, tmp_path):
    token = f"t{os.getpid()}"
    proc = _run(kube_stack, tmp_path, VOLUME, "--token", token)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"after SIGTERM: kept {token}" in proc.stdout, proc.stdout + proc.stderr
    assert (kube_stack.bucket / "volumes" / "kube-sigterm-vol" / f"{token}.txt").read_text() == f"kept {token}"


GPU = """
import modal

app = modal.App("kube-gpu")


@app.function(gpu="H100")
def train():
    return 1


@app.local_entrypoint()
def main():
    train.remote()
"""


def test_a_gpu_the_stack_does_not_offer_is_one_line_before_anything_is_created(kube_stack, tmp_path):
    proc = _run(kube_stack, tmp_path, GPU)
    assert_one_line_error(proc, "H100")
    assert _objects(kube_stack, "kube-gpu") == {}


def test_stack_problems_are_one_line_each(kube_stack, tmp_path):
    hello = "import modal\napp = modal.App('kube-bad')\n@app.function()\ndef f():\n    return 1\n"
    proc = _run(kube_stack, tmp_path, hello, RUNNER_STACK_OUTPUTS=str(tmp_path / "missing.json"))
    assert_one_line_error(proc, "missing.json")
    proc = run_cli(["--cloud", "gcp", "run", str(write(tmp_path, "h.py", hello))], cwd=tmp_path,
                   env=_env(kube_stack))
    assert_one_line_error(proc, "--cloud gcp", "local")
    outputs = json.loads(kube_stack.outputs.read_text())
    outputs["kubeconfig"] = outputs["kubeconfig"].replace(kube_stack.kube.url, "http://127.0.0.1:9")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(outputs))
    proc = _run(kube_stack, tmp_path, hello, RUNNER_STACK_OUTPUTS=str(broken))
    assert_one_line_error(proc, "does not answer")


DEPLOYED = """
import modal

app = modal.App("kube-deployed")


@app.function()
def square(x: int) -> int:
    return x * x + OFFSET


@app.function(schedule=modal.Period(minutes=10))
def tick():
    print("tick ran")


@app.cls()
class Greeter:
    greeting: str = modal.parameter(default="hello")

    @modal.method()
    def greet(self, who: str) -> str:
        return f"{self.greeting}, {who}"


@app.cls()
class Scaler:
    factor: int = modal.parameter()  # required: each instance is made on its first call

    @modal.method()
    def mul(self, x: int) -> int:
        return x * self.factor + OFFSET


OFFSET = 0
"""


def _python(stack, code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=_env(stack), timeout=timeout)


def test_a_deployed_app_is_called_from_other_processes_redeployed_and_stopped(kube_stack, tmp_path):
    from kubernetes import client

    path = write(tmp_path, "deployed.py", DEPLOYED)
    env = _env(kube_stack)
    done = run_cli(["deploy", str(path)], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Deployed app kube-deployed" in done.stdout and "tick runs every 10m" in done.stdout

    spawned = _python(kube_stack, """
        import runner as modal
        f = modal.Function.from_name("kube-deployed", "square")
        print("remote:", f.remote(9), "map:", list(f.map(range(4))))
        print("cls:", modal.Cls.from_name("kube-deployed", "Greeter")().greet.remote("ada"))
        print("instance:", modal.Cls.from_name("kube-deployed", "Greeter")(greeting="bonjour").greet.remote("ada"))
        print("required:", modal.Cls.from_name("kube-deployed", "Scaler")(factor=3).mul.remote(2))
        try:
            modal.Cls.from_name("kube-deployed", "Scaler")().mul.remote(2)
        except modal.exception.InvalidError as e:
            print("missing:", e)
        print("spawned:", f.spawn(12).object_id)
    """)
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr
    assert "remote: 81 map: [0, 1, 4, 9]" in spawned.stdout and "cls: hello, ada" in spawned.stdout
    assert "instance: bonjour, ada" in spawned.stdout and "required: 6" in spawned.stdout, spawned.stdout
    assert "missing: Scaler needs parameter 'factor'" in spawned.stdout, spawned.stdout
    call_id = spawned.stdout.split("spawned:")[1].split()[0]
    got = _python(kube_stack, f"import runner; print(runner.FunctionCall.from_id({call_id!r}).get(timeout=120))")
    assert got.stdout.strip() == "144", got.stdout + got.stderr  # its client exited before it was read

    # The schedule is a CronJob; a Job made from it (as the CronJob controller would) queues one call.
    batch = client.BatchV1Api(kube_stack.kube.api_client())
    ns = kube_stack.kube.namespace
    cron = batch.read_namespaced_cron_job("kube-deployed-tick", ns)
    assert cron.spec.schedule.endswith("-59/10 * * * *")
    owner = client.V1OwnerReference(api_version="batch/v1", kind="CronJob", name=cron.metadata.name,
                                    uid=cron.metadata.uid, controller=True)  # as the CronJob controller sets it
    batch.create_namespaced_job(ns, client.V1Job(
        metadata=client.V1ObjectMeta(name="tick-now", labels=cron.spec.job_template.metadata.labels,
                                     owner_references=[owner]),
        spec=cron.spec.job_template.spec))
    end = time.monotonic() + 120
    while "tick ran" not in run_cli(["app", "logs", "kube-deployed"], cwd=tmp_path, env=env).stdout:
        assert time.monotonic() < end, "the scheduled call never ran"
        time.sleep(1)

    listed = run_cli(["app", "list"], cwd=tmp_path, env=env)
    assert "kube-deployed" in listed.stdout and "square, tick, Greeter, Scaler" in listed.stdout

    path.write_text(DEPLOYED.replace("OFFSET = 0", "OFFSET = 1000"))
    again = run_cli(["deploy", str(path)], cwd=tmp_path, env=env)
    assert again.returncode == 0 and "version 2" in again.stdout, again.stdout + again.stderr
    end = time.monotonic() + 120
    while True:  # the rolling update replaces the pods; then every call answers from version 2
        out = _python(kube_stack, "import runner; print(runner.Function.from_name('kube-deployed', 'square').remote(2))")
        if out.stdout.strip() == "1004":
            break
        assert out.stdout.strip() == "4" and time.monotonic() < end, out.stdout + out.stderr
        time.sleep(1)
    while True:  # an instance made from version 1 is made again from version 2
        out = _python(kube_stack, "import runner; print(runner.Cls.from_name('kube-deployed', 'Scaler')(factor=3)"
                                  ".mul.remote(2))")
        if out.stdout.strip() == "1006":
            break
        assert out.stdout.strip() == "6" and time.monotonic() < end, out.stdout + out.stderr
        time.sleep(1)

    stopped = run_cli(["app", "stop", "kube-deployed"], cwd=tmp_path, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert _wait_gone(kube_stack, "kube-deployed", timeout=90) == {}
    assert _queue_keys(kube_stack, "rq:f:kube-deployed/*:spec") == []
    gone = run_cli(["app", "stop", "kube-deployed"], cwd=tmp_path, env=env)
    assert_one_line_error(gone, "kube-deployed", "runner app list")


WEB_DEPLOYED = """
import modal

app = modal.App("kube-web")


@app.function(scaledown_window=3)
@modal.web_server(8000)
def site():
    import http.server
    import socket
    import threading

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"hello from {socket.gethostname()} at {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
"""


def _front_door(stack, host: str, path: str = "/") -> tuple[int, str]:
    """GET `path` through the stack's front door (its `web_endpoint`) for `host`."""
    return http_to(json.loads(stack.outputs.read_text())["web_endpoint"], host, path=path)


def _replicas(stack, name: str) -> tuple[int, int]:
    """(spec.replicas, running pods not being deleted) of Deployment `name`."""
    from kubernetes import client

    api = _api(stack)
    dep = client.AppsV1Api(api).read_namespaced_deployment(name, stack.kube.namespace)
    sel = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
    pods = client.CoreV1Api(api).list_namespaced_pod(stack.kube.namespace, label_selector=sel).items
    return dep.spec.replicas, sum(1 for p in pods if not p.metadata.deletion_timestamp)


def test_a_deployed_web_endpoint_sleeps_at_zero_and_wakes_on_a_request_at_its_host(kube_stack, tmp_path):
    env = _env(kube_stack)
    path = write(tmp_path, "web.py", textwrap.dedent(WEB_DEPLOYED))
    done = run_cli(["deploy", str(path)], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    host = "kube-web-site.web.runner.test"
    assert f"site => http://{host}" in done.stdout
    try:
        assert _replicas(kube_stack, "kube-web-site") == (0, 0)  # nothing runs until a request comes
        started = time.monotonic()
        status, body = _front_door(kube_stack, host, "/first?x=1")
        cold = time.monotonic() - started
        assert (status, body.split(" at ")[-1]) == (200, "/first?x=1"), body
        assert _replicas(kube_stack, "kube-web-site")[0] == 1
        print(f"cold wake through the front door: {cold:.2f}s")
        status, again = _front_door(kube_stack, host.upper(), "/warm")  # host names are case-blind
        assert status == 200 and again.split(" at ")[0] == body.split(" at ")[0]  # the same warm pod
        # Past scaledown_window with no request in flight: back to zero, and woken again.
        end = time.monotonic() + 90
        while _replicas(kube_stack, "kube-web-site") != (0, 0):
            assert time.monotonic() < end, _replicas(kube_stack, "kube-web-site")
            time.sleep(0.5)
        status, woken = _front_door(kube_stack, host, "/second")
        assert status == 200 and woken.endswith(" at /second")
        status, missing = _front_door(kube_stack, "kube-web-other.web.runner.test")
        assert status == 404 and "kube-web-other.web.runner.test" in missing
        url = _python(kube_stack, "import runner; print(runner.Function.from_name('kube-web', 'site').get_web_url())")
        assert url.stdout.strip() == f"http://{host}", url.stderr[-2000:]
        # The same stack without a front door (no web_domain): deployed again, the route goes and
        # the endpoint keeps a pod, in-cluster only.
        bare = tmp_path / "no-front-door.json"
        bare.write_text(json.dumps({k: v for k, v in json.loads(kube_stack.outputs.read_text()).items()
                                    if k not in ("web_domain", "web_endpoint")}))
        again = run_cli(["deploy", str(path)], cwd=tmp_path, env={**env, "RUNNER_STACK_OUTPUTS": str(bare)})
        assert again.returncode == 0, again.stderr[-3000:]
        assert "site => http://kube-web-site.runner.svc.cluster.local" in again.stdout
        assert "httpscaledobjects" not in _objects(kube_stack, "kube-web")
        assert _replicas(kube_stack, "kube-web-site")[0] == 1
        assert _front_door(kube_stack, host)[0] == 404
    finally:
        stopped = run_cli(["app", "stop", "kube-web"], cwd=tmp_path, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert _wait_gone(kube_stack, "kube-web", timeout=90) == {}
    assert _front_door(kube_stack, host)[0] == 404  # the route went with the app


SCALING = """
import time

import modal

app = modal.App("kube-scaling")


@app.function(min_containers=1)
def warm() -> str:
    return "warm"


@app.function(scaledown_window=2)
def brief(x: int) -> int:
    return x + 1


def pods(function: str) -> int:
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config())
    sel = f"runner/app=kube-scaling,runner/function={function}"
    return sum(1 for p in core.list_namespaced_pod("runner", label_selector=sel).items
               if p.status.phase == "Running" and not p.metadata.deletion_timestamp)


def wait(check, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.5)
    return False


@app.local_entrypoint()
def main():
    print("brief:", brief.remote(1))
    print("warm before any call:", wait(lambda: pods("warm") == 1, 60))
    print("brief scaled to zero:", wait(lambda: pods("brief") == 0, 60))
    time.sleep(8)  # past the cooldown: min_containers stays
    print("warm still:", pods("warm") == 1, warm.remote())
"""


def test_min_containers_stay_warm_and_idle_functions_scale_to_zero(kube_stack, tmp_path):
    """KEDA's objects as rendered (minReplicaCount, cooldownPeriod = scaledown_window), run by the
    stand-in's KEDA controller on the real queue."""
    proc = _run(kube_stack, tmp_path, SCALING)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("brief: 2", "warm before any call: True", "brief scaled to zero: True", "warm still: True warm"):
        assert line in proc.stdout, proc.stdout + proc.stderr


RELAY = """
import socket, threading
def pump(a, b):
    try:
        while (data := a.recv(65536)):
            b.sendall(data)
    except OSError:
        pass
    finally:
        b.close()
server = socket.create_server(("127.0.0.1", 6379))
while True:
    conn, _ = server.accept()
    up = socket.create_connection(("runner-queue.runner.svc.cluster.local", 6379))
    threading.Thread(target=pump, args=(conn, up), daemon=True).start()
    threading.Thread(target=pump, args=(up, conn), daemon=True).start()
"""


def test_without_a_queue_address_the_client_port_forwards_to_the_queue_pod(kube_stack, tmp_path):
    """How a client outside the cluster reaches the queue on a real cluster: a port-forward through
    the API to a pod of the queue's Service. Here that pod relays to the stand-in's queue."""
    from kubernetes import client

    from kube_standin import IMAGE

    core = client.CoreV1Api(kube_stack.kube.api_client())
    ns = kube_stack.kube.namespace
    core.create_namespaced_service(ns, {"metadata": {"name": "runner-queue"}, "spec": {
        "selector": {"app": "queue-relay"}, "ports": [{"port": 6379, "targetPort": 6379}]}})
    core.create_namespaced_pod(ns, {"metadata": {"name": "queue-relay", "labels": {"app": "queue-relay"}}, "spec": {
        "containers": [{"name": "relay", "image": IMAGE, "command": ["python3", "-c", RELAY]}]}})
    try:
        end = time.monotonic() + 60
        while core.read_namespaced_pod("queue-relay", ns).status.phase != "Running":
            assert time.monotonic() < end, "the relay pod did not start"
            time.sleep(0.2)
        env = {k: v for k, v in _env(kube_stack).items() if k != "RUNNER_QUEUE_ADDRESS"}
        path = write(tmp_path, "app.py", CALLS.replace("kube-calls", "kube-forwarded"))
        proc = run_cli(["run", str(path)], cwd=tmp_path, env=env, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "remote: 49" in proc.stdout and "map: [0, 1, 4, 9, 16, 25]" in proc.stdout, proc.stdout
    finally:
        core.delete_namespaced_pod("queue-relay", ns, grace_period_seconds=0)
        core.delete_namespaced_service("runner-queue", ns)
    assert _wait_gone(kube_stack, "kube-forwarded") == {}


CRASHING = """
import modal

app = modal.App("kube-crashing")


@app.function(env={"PYTHONPATH": "/nowhere"})  # hides runner from the worker: its container keeps exiting
def broken():
    return 1


@app.local_entrypoint()
def main():
    try:
        broken.remote()
    except Exception as e:
        print("raised:", type(e).__name__, str(e).splitlines()[0])
        print("log tail shown:", "No module named" in str(e))
"""


def test_a_function_whose_pods_cannot_start_fails_its_calls_with_the_reason(kube_stack, tmp_path):
    proc = _run(kube_stack, tmp_path, CRASHING)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "raised: ExecutionError no pod of broken could start: container main" in proc.stdout, proc.stdout
    assert "CrashLoopBackOff" in proc.stdout, proc.stdout + proc.stderr
    assert "log tail shown: True" in proc.stdout, proc.stdout
    assert _wait_gone(kube_stack, "kube-crashing") == {}


def test_a_redeploy_on_a_cluster_without_the_http_add_on_still_removes_what_is_stale():
    """A stack with no front door serves no HTTPScaledObject kind at all (404 for the resource):
    the redeploy's sweep skips that kind instead of failing, and still removes the rest."""
    from runner._kube_deploy import _remove_stale
    from runner._providers._kube_api import KubeError

    class Cluster:
        deleted: list[tuple[str, str]] = []

        def list(self, kind, selector):
            if kind == "HTTPScaledObject":
                raise KubeError(404, "NotFound", "the server could not find the requested resource")
            return [{"metadata": {"name": n}} for n in ("app-kept", "app-kept-instance", "app-gone")]

        def delete(self, kind, name):
            self.deleted.append((kind, name))

    cluster = Cluster()
    _remove_stale(cluster, "app", {"app-kept"})
    assert {name for _, name in cluster.deleted} == {"app-gone"}
    assert "HTTPScaledObject" not in {kind for kind, _ in cluster.deleted}
    assert len(cluster.deleted) == 6  # one per other kind

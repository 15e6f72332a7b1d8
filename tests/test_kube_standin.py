"""The Kubernetes API stand-in (tests/kube_standin), driven only through the official client.

Pods really run as Docker containers of the seeded image; nothing here contacts a container's
address: output comes back through pods/log and pods/exec, as it would from a real cluster.
Note for readers: kubernetes 36's `read_namespaced_pod_log()` returns the repr of the bytes
(kubernetes-client/python#2596), so logs are read with `_preload_content=False`, as a provider
should.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import docker
import pytest
import redis
from helpers import http_to, redis_on_socket
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward, stream

from kube_standin import IMAGE, LABEL, KubeStandin, kube_api, kube_standin, standin

FIXTURES = (kube_api, kube_standin)  # imported so that pytest finds them here

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]
NS = "runner"
PASSWORD = "s3cret-queue"
QUEUE = "runner-queue.runner.svc.cluster.local"


def _pod(name: str, command: str, **spec) -> dict:
    main = {"name": "main", "image": IMAGE, "command": ["sh", "-c", command]}
    main |= spec.pop("main", {})
    return {"metadata": {"name": name, "labels": {"app": "standin-test"}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": [main]} | spec}


def _wait_phase(core: client.CoreV1Api, name: str, phases: set[str], timeout: int = 30,
                namespace: str = NS) -> client.V1Pod:
    """Watches the pod (fieldSelector on its name) until its phase is one of `phases`."""
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
                          timeout_seconds=timeout):
        pod = event["object"]
        if pod.status and pod.status.phase in phases:
            w.stop()
            return pod
    raise AssertionError(f"pod {name} never reached {phases}: {core.read_namespaced_pod(name, namespace).status}")


def _logs(core: client.CoreV1Api, name: str, container: str | None = None, namespace: str = NS, **kw) -> str:
    resp = core.read_namespaced_pod_log(name, namespace, container=container, _preload_content=False, **kw)
    return resp.data.decode()


def _exec(core, name, command, **kw):
    options = {"stderr": True, "stdout": True, "stdin": False, "tty": False} | kw
    return stream(core.connect_get_namespaced_pod_exec, name, NS, command=command, **options)


def _until(what: str, check, timeout: float = 20):
    """Polls check() until it returns something truthy, and returns that; fails naming `what` at the timeout."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.1)
    return got


@pytest.fixture
def redis_socket():
    """A redis-server with a password, on a unix socket only (no TCP port), in a short directory of its own."""
    with redis_on_socket("ksr-", password=PASSWORD, perm="700") as (sock, _):
        yield sock


def test_pod_init_container_emptydir_env_logs_and_exec(kube_api):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="creds"),
                                                      string_data={"token": "hunter2"}))
    shared = [{"name": "shared", "mountPath": "/shared"}]
    pod = _pod("app", "cat /shared/from-init; echo TOKEN=$TOKEN PLAIN=$PLAIN; exec sleep infinity",
               volumes=[{"name": "shared", "emptyDir": {}}],
               initContainers=[{"name": "init", "image": IMAGE, "volumeMounts": shared,
                                "command": ["sh", "-c", "echo written-by-init > /shared/from-init"]}],
               main={"volumeMounts": shared, "env": [
                   {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                   {"name": "PLAIN", "value": "plain-value"}]})
    created = core.create_namespaced_pod(NS, pod)
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    assert created.status.phase == "Pending"

    running = _wait_phase(core, "app", {"Running"})
    assert running.status.container_statuses[0].state.running is not None
    init = running.status.init_container_statuses[0]
    assert init.state.terminated.exit_code == 0 and init.state.terminated.reason == "Completed"
    assert running.status.pod_ip is None  # nothing may reach a container by address
    assert {c.type: c.status for c in running.status.conditions}["Initialized"] == "True"

    deadline = time.monotonic() + 10
    while "PLAIN" not in (out := _logs(core, "app")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out == "written-by-init\nTOKEN=hunter2 PLAIN=plain-value\n"
    assert _logs(core, "app", container="init") == ""
    # The spec never holds the secret's value, only the reference.
    assert "hunter2" not in json.dumps(kube_api.sanitize_for_serialization(core.read_namespaced_pod("app", NS)))

    assert _exec(core, "app", ["echo", "hello", "world"]) == "hello world\n"

    # Streaming, stdin, and the exit code from the error channel (v5: stdin can be closed).
    ws = _exec(core, "app", ["sh", "-c", "cat; echo err >&2; exit 3"], stdin=True, _preload_content=False)
    assert ws.subprotocol == "v5.channel.k8s.io"
    ws.write_stdin("line one\n")
    ws.write_stdin(b"line two\n")
    ws.close_channel(0)
    out, err = "", ""
    deadline = time.monotonic() + 10
    while ws.is_open() and time.monotonic() < deadline:
        ws.update(timeout=1)
        out += ws.read_stdout(timeout=0) or ""
        err += ws.read_stderr(timeout=0) or ""
    assert out == "line one\nline two\n" and err == "err\n"
    assert ws.returncode == 3
    ws = _exec(core, "app", ["true"], _preload_content=False)
    ws.run_forever(timeout=10)
    assert ws.returncode == 0


def test_exec_over_v4_protocol(kube_api):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(NS, _pod("v4", "exec sleep infinity"))
    _wait_phase(core, "v4", {"Running"})
    kube_api.set_default_header("sec-websocket-protocol", "v4.channel.k8s.io")
    ws = _exec(core, "v4", ["sh", "-c", "read x; echo got:$x; exit 7"], stdin=True, _preload_content=False)
    assert ws.subprotocol == "v4.channel.k8s.io"
    ws.write_stdin("ping\n")
    ws.run_forever(timeout=10)
    assert ws.read_stdout() == "got:ping\n"
    assert ws.returncode == 7


def test_api_errors_are_status_bodies(kube_api):
    core = client.CoreV1Api(kube_api)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("missing", NS)
    assert e.value.status == 404
    body = json.loads(e.value.body)
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["message"] == 'pods "missing" not found'

    cm = {"metadata": {"name": "cfg"}, "data": {"a": "1"}}
    core.create_namespaced_config_map(NS, cm)
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map(NS, cm)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"

    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod(NS, {"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}})
    body = json.loads(e.value.body)
    assert e.value.status == 422 and body["reason"] == "Invalid"
    assert {c["field"] for c in body["details"]["causes"]} == {"metadata.name", "spec.containers"}

    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("nowhere", cm)
    assert e.value.status == 404 and "namespaces" in e.value.body

    current = core.read_namespaced_config_map("cfg", NS)
    stale = current.metadata.resource_version
    current.data = {"a": "2"}
    updated = core.replace_namespaced_config_map("cfg", NS, current)
    assert int(updated.metadata.resource_version) > int(stale)
    current.metadata.resource_version = stale
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("cfg", NS, current)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "Conflict"
    patched = core.patch_namespaced_config_map("cfg", NS, {"data": {"b": "3"}})
    assert patched.data == {"a": "2", "b": "3"}


def test_delete_honours_grace_period_and_runs_the_term_trap(kube_api):
    core = client.CoreV1Api(kube_api)
    shared = [{"name": "shared", "mountPath": "/shared"}]
    watcher = {"name": "watcher", "image": IMAGE, "restartPolicy": "Always", "volumeMounts": shared,
               "command": ["sh", "-c", "trap 'cat /shared/x; exit 0' TERM; echo watching; sleep infinity & wait"]}
    core.create_namespaced_pod(NS, _pod(
        "trap", "trap 'echo bye > /shared/x; exit 0' TERM; sleep infinity & wait",
        volumes=[{"name": "shared", "emptyDir": {}}], initContainers=[watcher],
        terminationGracePeriodSeconds=20, main={"volumeMounts": shared}))
    pod = _wait_phase(core, "trap", {"Running"})
    assert pod.status.init_container_statuses[0].state.running is not None  # a native sidecar keeps running
    deadline = time.monotonic() + 10
    while "watching" not in _logs(core, "trap", "watcher") and time.monotonic() < deadline:
        time.sleep(0.1)

    followed = core.read_namespaced_pod_log("trap", NS, container="watcher", follow=True, _preload_content=False)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(c.decode() for c in followed.stream(64)), daemon=True)
    reader.start()

    w = watch.Watch()
    events = w.stream(core.list_namespaced_pod, NS, field_selector="metadata.name=trap", timeout_seconds=30,
                      resource_version=core.read_namespaced_pod("trap", NS).metadata.resource_version)
    start = time.monotonic()
    deleted = core.delete_namespaced_pod("trap", NS)
    assert deleted.metadata.deletion_timestamp is not None and deleted.metadata.deletion_grace_period_seconds == 20
    last = None
    for event in events:
        if event["type"] == "DELETED":
            last = event["object"]
            w.stop()
    elapsed = time.monotonic() - start
    assert last is not None and elapsed < 20, elapsed
    main = last.status.container_statuses[0].state.terminated
    assert main.exit_code == 0, main  # the trap's `exit 0`, not SIGKILL's 137
    reader.join(timeout=10)
    assert "bye" in "".join(seen)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("trap", NS)
    assert e.value.status == 404


def test_failing_init_container_fails_the_pod(kube_api):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(NS, _pod("badinit", "echo never", initContainers=[
        {"name": "setup", "image": IMAGE, "command": ["sh", "-c", "echo broken >&2; exit 4"]}]))
    pod = _wait_phase(core, "badinit", {"Failed", "Succeeded"})
    assert pod.status.phase == "Failed"
    assert pod.status.init_container_statuses[0].state.terminated.exit_code == 4
    assert pod.status.container_statuses[0].state.waiting.reason == "PodInitializing"
    assert _logs(core, "badinit", "setup") == "broken\n"


def test_env_sources_volumes_limits_and_completion(kube_standin, kube_api):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(NS, {"metadata": {"name": "bundle"},
                                       "data": {"USER": base64.b64encode(b"ada").decode(), "file.txt": "aGk="}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "settings"}, "data": {"MODE": "fast"}})
    core.create_namespaced_pod(NS, _pod(
        "sources", "echo $USER $CFG_MODE $POD $POD_NS $MSG; cat /etc/secret/file.txt; echo; "
                   "cat /sys/fs/cgroup/cpu.max 2>/dev/null | cut -d' ' -f1",
        volumes=[{"name": "sec", "secret": {"secretName": "bundle"}}],
        main={"envFrom": [{"secretRef": {"name": "bundle"}}, {"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
              "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                      {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                      {"name": "MSG", "value": "hi-$(USER)"}],
              "volumeMounts": [{"name": "sec", "mountPath": "/etc/secret", "readOnly": True}],
              "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}}))
    pod = _wait_phase(core, "sources", {"Succeeded", "Failed"})
    assert pod.status.phase == "Succeeded", pod.status
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert _logs(core, "sources").splitlines()[:2] == ["ada fast sources runner hi-ada", "hi"]
    (container,) = [c for c in kube_standin.containers() if c.labels[f"{LABEL}.container"] == "main"]
    host = container.attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 128 * 2**20


def test_owner_references_garbage_collection(kube_api):
    core = client.CoreV1Api(kube_api)

    def owned(name: str, owner) -> dict:
        return {"metadata": {"name": name, "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid}]}}

    owner = core.create_namespaced_config_map(NS, {"metadata": {"name": "owner"}})
    core.create_namespaced_secret(NS, owned("dep-secret", owner))
    core.create_namespaced_pod(NS, owned("dep-pod", owner) | {"spec": _pod("x", "sleep infinity")["spec"]})
    _wait_phase(core, "dep-pod", {"Running"})
    core.delete_namespaced_config_map("owner", NS)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        names = {p.metadata.name for p in core.list_namespaced_pod(NS).items} | \
            {s.metadata.name for s in core.list_namespaced_secret(NS).items}
        if not names & {"dep-secret", "dep-pod"}:
            break
        time.sleep(0.2)
    assert not names & {"dep-secret", "dep-pod"}

    owner = core.create_namespaced_config_map(NS, {"metadata": {"name": "owner2"}})
    core.create_namespaced_secret(NS, owned("kept", owner))
    core.delete_namespaced_config_map("owner2", NS, propagation_policy="Orphan")
    kept = core.read_namespaced_secret("kept", NS)
    assert not kept.metadata.owner_references

    # An owner that never existed: the dependent is collected too.
    ghost = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="ghost", uid="00000000-0000-0000-0000-000000000000"))
    core.create_namespaced_secret(NS, owned("orphaned", ghost))
    deadline = time.monotonic() + 5
    while any(s.metadata.name == "orphaned" for s in core.list_namespaced_secret(NS).items):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_deployment_reconciles_pods_and_stored_only_resources(kube_api):
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    custom, net = client.CustomObjectsApi(kube_api), client.NetworkingV1Api(kube_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(NS, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"terminationGracePeriodSeconds": 1,
                                       "containers": [{"name": "w", "image": IMAGE,
                                                       "command": ["sleep", "infinity"]}]}}}})
    deadline = time.monotonic() + 30
    while (apps.read_namespaced_deployment("web", NS).status.ready_replicas or 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pods = core.list_namespaced_pod(NS, label_selector="app=web").items
    assert len(pods) == 2 and all(p.status.phase == "Running" for p in pods)
    assert core.list_namespaced_pod(NS, label_selector="app in (other)").items == []
    (rs,) = apps.list_namespaced_replica_set(NS).items
    assert rs.metadata.owner_references[0].name == "web" and pods[0].metadata.owner_references[0].name == rs.metadata.name

    policy = {"metadata": {"name": "deny"}, "spec": {"podSelector": {"matchLabels": {"net": "none"}},
                                                     "policyTypes": ["Egress"], "egress": []}}
    assert net.create_namespaced_network_policy(NS, policy).metadata.uid
    # A deny-all-egress policy is the one kind enforced: the pod gets no network but loopback.
    core.create_namespaced_pod(NS, _pod("isolated", "sleep infinity") | {"metadata": {
        "name": "isolated", "labels": {"net": "none"}}})
    _wait_phase(core, "isolated", {"Running"})
    assert _exec(core, "isolated", ["ls", "/sys/class/net"]).split() == ["lo"]
    assert "eth0" in _exec(core, pods[0].metadata.name, ["ls", "/sys/class/net"]).split()

    scale = apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 0}})
    assert scale.spec.replicas == 0
    so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "web"},
          "spec": {"scaleTargetRef": {"name": "web"}, "minReplicaCount": 0, "maxReplicaCount": 4,
                   "triggers": [{"type": "redis", "metadata": {"listName": "q", "listLength": "5"}}]}}
    created = custom.create_namespaced_custom_object("keda.sh", "v1alpha1", NS, "scaledobjects", so)
    assert created["metadata"]["resourceVersion"] and created["spec"]["maxReplicaCount"] == 4
    custom.create_namespaced_custom_object("keda.sh", "v1alpha1", NS, "triggerauthentications", {
        "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication", "metadata": {"name": "auth"},
        "spec": {"secretTargetRef": [{"parameter": "password", "name": "creds", "key": "token"}]}})
    listed = custom.list_namespaced_custom_object("keda.sh", "v1alpha1", NS, "scaledobjects")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["web"]

    deadline = time.monotonic() + 20
    while core.list_namespaced_pod(NS, label_selector="app=web").items:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    apps.delete_namespaced_deployment("web", NS)
    deadline = time.monotonic() + 10
    while apps.list_namespaced_replica_set(NS).items:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_job_runs_to_completion(kube_api):
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(NS, {"metadata": {"name": "once"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "j", "image": IMAGE, "command": ["true"]}]}}}})
    deadline = time.monotonic() + 30
    while not (batch.read_namespaced_job("once", NS).status.succeeded or 0):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    job = batch.read_namespaced_job("once", NS)
    assert [c.type for c in job.status.conditions] == ["Complete"]


def test_watch_resumes_from_a_resource_version(kube_api):
    core = client.CoreV1Api(kube_api)
    first = core.create_namespaced_config_map(NS, {"metadata": {"name": "a", "labels": {"k": "1"}}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "b", "labels": {"k": "2"}}})
    core.patch_namespaced_config_map("a", NS, {"data": {"x": "y"}})
    core.delete_namespaced_config_map("a", NS)
    seen = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_config_map, NS, label_selector="k=1", resource_version=first.metadata.resource_version,
        timeout_seconds=1)]
    assert seen == [("MODIFIED", "a"), ("DELETED", "a")]


def test_stop_leaves_no_container_or_volume():
    from kube_standin import _require_docker

    _require_docker()
    with KubeStandin(token="s3cret") as kube:
        core = client.CoreV1Api(config.new_client_from_config(kube.kubeconfig))  # as a provider would load it
        assert kube.kubeconfig and core.api_client.configuration.host == kube.url
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(client.ApiClient(client.Configuration(host=kube.url))).list_namespaced_pod(NS)
        assert e.value.status == 401
        core.create_namespaced_pod(NS, _pod("left", "sleep infinity", volumes=[{"name": "d", "emptyDir": {}}],
                                            main={"volumeMounts": [{"name": "d", "mountPath": "/d"}]}))
        _wait_phase(core, "left", {"Running"})
        assert len(kube.containers()) == 2  # the pause container and `main`
        core.api_client.close()
    docker_client = docker.from_env()
    label = f"{LABEL}={kube.instance}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    assert docker_client.volumes.list(filters={"label": label}) == []


def test_foreground_deletion_waits_for_dependents(kube_api):
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(NS, {"metadata": {"name": "fg"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "fg", "uid": owner.metadata.uid,
           "blockOwnerDeletion": True}
    core.create_namespaced_pod(NS, {"metadata": {"name": "fg-pod", "ownerReferences": [ref]},
                                    "spec": _pod("x", "trap 'sleep 1; exit 0' TERM; sleep infinity & wait")["spec"]})
    _wait_phase(core, "fg-pod", {"Running"})
    core.delete_namespaced_config_map("fg", NS, propagation_policy="Foreground")
    waiting = core.read_namespaced_config_map("fg", NS)  # held by the foregroundDeletion finalizer
    assert waiting.metadata.deletion_timestamp and waiting.metadata.finalizers == ["foregroundDeletion"]
    deadline = time.monotonic() + 15
    while any(c.metadata.name == "fg" for c in core.list_namespaced_config_map(NS).items):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not any(p.metadata.name == "fg-pod" for p in core.list_namespaced_pod(NS).items)


def test_patch_flavours_delete_collection_and_dry_run(kube_api):
    core = client.CoreV1Api(kube_api)
    for name in ("one", "two", "three"):
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": {"set": "x" if name != "three"
                                                                                      else "y"}}})
    merged = core.patch_namespaced_config_map("one", NS, {"data": {"a": "1"}},
                                              _content_type="application/merge-patch+json")
    assert merged.data == {"a": "1"}
    patched = core.patch_namespaced_config_map("one", NS, [{"op": "add", "path": "/data/b", "value": "2"},
                                                           {"op": "remove", "path": "/data/a"}])
    assert patched.data == {"b": "2"}
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map("one", NS, [{"op": "replace", "path": "/data/zzz", "value": "2"}])
    assert e.value.status == 422
    dry = core.create_namespaced_config_map(NS, {"metadata": {"name": "dry"}}, dry_run="All")
    assert dry.metadata.uid and not any(c.metadata.name == "dry" for c in core.list_namespaced_config_map(NS).items)
    core.delete_collection_namespaced_config_map(NS, label_selector="set=x")
    assert [c.metadata.name for c in core.list_namespaced_config_map(NS).items] == ["three"]


def test_kubelet_waiting_reasons(kube_api):
    """A missing secret holds the container in CreateContainerConfigError until the secret appears;
    a GPU the node does not have leaves the pod Unschedulable."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(NS, _pod("later", "echo $K", main={"env": [
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}]}))
    core.create_namespaced_pod(NS, _pod("gpu", "true", main={"resources": {"limits": {"nvidia.com/gpu": "1"}}}))
    deadline = time.monotonic() + 10
    while True:
        pod = core.read_namespaced_pod("later", NS)
        waiting = pod.status.container_statuses and pod.status.container_statuses[0].state.waiting
        if waiting and waiting.reason == "CreateContainerConfigError":
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert waiting.message == 'secret "late" not found'
    core.create_namespaced_secret(NS, {"metadata": {"name": "late"}, "stringData": {"k": "arrived"}})
    assert _wait_phase(core, "later", {"Succeeded", "Failed"}).status.phase == "Succeeded"
    assert _logs(core, "later") == "arrived\n"
    gpu = core.read_namespaced_pod("gpu", NS)
    scheduled = {c.type: c for c in gpu.status.conditions}["PodScheduled"]
    assert gpu.status.phase == "Pending" and scheduled.status == "False" and scheduled.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in scheduled.message


def test_restart_policy_and_active_deadline(kube_api):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(NS, _pod("flaky", "[ -f /d/once ] && exit 0; touch /d/once; exit 1",
                                        restartPolicy="OnFailure", volumes=[{"name": "d", "emptyDir": {}}],
                                        main={"volumeMounts": [{"name": "d", "mountPath": "/d"}]}))
    core.create_namespaced_pod(NS, _pod("slow", "sleep infinity", activeDeadlineSeconds=2))
    flaky = _wait_phase(core, "flaky", {"Succeeded", "Failed"})
    assert flaky.status.phase == "Succeeded" and flaky.status.container_statuses[0].restart_count == 1
    slow = _wait_phase(core, "slow", {"Succeeded", "Failed"})
    assert slow.status.phase == "Failed" and slow.status.reason == "DeadlineExceeded"


def test_grace_period_ends_with_sigkill(kube_api):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(NS, _pod("stubborn", "trap '' TERM; sleep infinity & wait; sleep infinity",
                                        terminationGracePeriodSeconds=2))
    version = _wait_phase(core, "stubborn", {"Running"}).metadata.resource_version
    w = watch.Watch()
    events = w.stream(core.list_namespaced_pod, NS, field_selector="metadata.name=stubborn", timeout_seconds=20,
                      resource_version=version)
    start = time.monotonic()
    core.delete_namespaced_pod("stubborn", NS)
    for event in events:
        if event["type"] == "DELETED":
            w.stop()
            gone = event["object"]
    elapsed = time.monotonic() - start
    assert 2 <= elapsed < 8, elapsed
    assert gone.status.container_statuses[0].state.terminated.exit_code == 137


def _forwarded(core, pod: str, ports: str):
    return portforward(core.connect_get_namespaced_pod_portforward, pod, NS, ports=ports)


def _read_all(sock) -> bytes:
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_port_forward_reaches_the_pods_loopback(kube_api):
    """The server listens on 127.0.0.1 only: the forward enters the pod's network namespace, it
    does not dial a container address. One WebSocket per connection, as the client makes them."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(NS, _pod("web", "exec python3 -u -m http.server 8000 --bind 127.0.0.1"))
    _wait_phase(core, "web", {"Running"})
    _until("the http.server to listen", lambda: "Serving HTTP" in _logs(core, "web"))
    for _ in range(2):  # two connections, one after the other
        pf = _forwarded(core, "web", "8000")
        pf.socket(8000).sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer = _read_all(pf.socket(8000))
        assert answer.startswith(b"HTTP/1.0 200 OK") and b"Directory listing" in answer, answer[:200]
        assert pf.error(8000) is None
        pf.close()

    # Two ports on one WebSocket (channels 0/1 and 2/3); nothing listens on the second one.
    pf = _forwarded(core, "web", "8000,9")
    assert _read_all(pf.socket(9)) == b""
    assert "error forwarding port 9 to pod web" in pf.error(9) and "Connection refused" in pf.error(9)
    pf.socket(8000).sendall(b"HEAD / HTTP/1.0\r\n\r\n")
    assert _read_all(pf.socket(8000)).startswith(b"HTTP/1.0 200 OK")
    pf.close()


def test_port_forward_is_refused_for_unknown_and_pending_pods(kube_api):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(NS, _pod("unplaced", "true", main={"resources": {"limits": {"nvidia.com/gpu": "1"}}}))
    for pod, status in (("nowhere", "404"), ("unplaced", "400")):
        # kubernetes 36 wraps a refused handshake in ApiException(status=0, body=None), then fails on
        # that body with AttributeError: the status is in the wrapped exception's reason.
        with pytest.raises((ApiException, AttributeError)) as e:
            _forwarded(core, pod, "8000")
        refused = e.value if isinstance(e.value, ApiException) else e.value.__context__
        assert isinstance(refused, ApiException) and f"Handshake status {status}" in refused.reason, e.value


RESP_PING = f"""
import socket
for name in ("runner-queue", "runner-queue.runner", "runner-queue.runner.svc"):
    print(name, socket.gethostbyname(name))
conn = socket.create_connection(("{QUEUE}", 6379), timeout=10)
conn.sendall(b"AUTH {PASSWORD}\\r\\nPING\\r\\n")
answer = b""
while answer.count(b"\\r\\n") < 2:
    answer += conn.recv(100)
print(answer.decode().split())
"""
RESOLVE = """
import socket
for name in ("runner-queue", "{QUEUE}"):
    try:
        print(name, socket.gethostbyname(name))
    except OSError:
        print(name, "unknown")
"""


def test_loopback_service_reaches_a_host_unix_socket(redis_socket):
    """A ClusterIP Service in front of a server outside the cluster: the pod dials the Service's
    DNS name and its TCP connection lands on the host's unix socket (redis, with a password)."""
    with standin(services={"runner-queue": (redis_socket, 6379)}) as kube:
        core = client.CoreV1Api(kube.api_client())
        core.create_namespaced_pod(NS, _pod("client", "", main={"command": ["python3", "-c", RESP_PING]}))
        core.create_namespaced_pod("default", _pod("elsewhere", "", main={"command": [
            "python3", "-c", RESOLVE.format(QUEUE=QUEUE)]}))
        assert _wait_phase(core, "client", {"Succeeded", "Failed"}).status.phase == "Succeeded", _logs(core, "client")
        lines = _logs(core, "client").splitlines()
        assert lines[-1] == "['+OK', '+PONG']"
        assert [line.split()[1] for line in lines[:3]] == ["127.0.1.1"] * 3  # the Service's loopback "cluster IP"
        assert _wait_phase(core, "elsewhere", {"Succeeded", "Failed"}, namespace="default").status.phase == "Succeeded"
        # From another namespace the bare name does not resolve (the DNS search path is that namespace's).
        assert _logs(core, "elsewhere", namespace="default").splitlines() == ["runner-queue unknown",
                                                                             f"{QUEUE} 127.0.1.1"]


def _scaled_object(name: str, address: str, **spec) -> dict:
    """A ScaledObject shaped as runner/_k8s/_keda.py renders it: lag wakes the Deployment, pending keeps it up."""
    common = {"address": address, "databaseIndex": "0", "stream": "inputs", "consumerGroup": "workers"}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicaCount": 0, "maxReplicaCount": 2, "pollingInterval": 1, "cooldownPeriod": 2,
                     "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                         "stabilizationWindowSeconds": 3}}}},
                     "triggers": [{"type": "redis-streams", "name": "backlog", "authenticationRef": {"name": "queue"},
                                   "metadata": common | {"lagCount": "1", "activationLagCount": "0"}},
                                  {"type": "redis-streams", "name": "in-progress",
                                   "authenticationRef": {"name": "queue"},
                                   "metadata": common | {"pendingEntriesCount": "1"}}]} | spec}


def test_keda_scales_a_deployment_on_a_redis_stream(redis_socket):
    with standin(services={"runner-queue": (redis_socket, 6379)}) as kube:
        api = kube.api_client()
        core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
        keda = ("keda.sh", "v1alpha1", NS, "scaledobjects")
        core.create_namespaced_secret(NS, {"metadata": {"name": "queue"}, "stringData": {"password": PASSWORD}})
        custom.create_namespaced_custom_object("keda.sh", "v1alpha1", NS, "triggerauthentications", {
            "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication", "metadata": {"name": "queue"},
            "spec": {"secretTargetRef": [{"parameter": "password", "name": "queue", "key": "password"}]}})
        for name in ("worker", "lost"):
            labels = {"app": name}
            pod = {"terminationGracePeriodSeconds": 1,
                   "containers": [{"name": "w", "image": IMAGE, "command": ["sleep", "infinity"]}]}
            apps.create_namespaced_deployment(NS, {"metadata": {"name": name}, "spec": {
                "replicas": 0, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod}}})
        custom.create_namespaced_custom_object(*keda, _scaled_object("worker", f"{QUEUE}:6379"))
        custom.create_namespaced_custom_object(*keda, _scaled_object("lost", "redis.elsewhere:6379"))
        queue = redis.Redis(unix_socket_path=redis_socket, password=PASSWORD)
        queue.xgroup_create("inputs", "workers", id="$", mkstream=True)

        def conditions(name: str) -> dict:
            status = custom.get_namespaced_custom_object(*keda, name).get("status") or {}
            return {c["type"]: c for c in status.get("conditions") or []}

        def replicas(want: int) -> bool:
            d = apps.read_namespaced_deployment("worker", NS)
            pods = core.list_namespaced_pod(NS, label_selector="app=worker").items
            return d.spec.replicas == want and (d.status.ready_replicas or 0) == want and len(pods) == want

        lost = _until("the lost ScaledObject's Ready condition", lambda: conditions("lost").get("Ready"))
        assert lost["status"] == "False" and lost["reason"] == "ScaledObjectCheckFailed"
        assert "'redis.elsewhere:6379' is not a loopback service" in lost["message"], lost["message"]
        assert _until("worker's Ready condition", lambda: conditions("worker").get("Ready"))["status"] == "True"
        assert conditions("worker")["Active"]["status"] == "False"

        ids = [queue.xadd("inputs", {"n": i}) for i in range(3)]  # lag 3: ceil(3/1), capped at maxReplicaCount 2
        _until("the scale-up to 2", lambda: replicas(2), 30)
        assert conditions("worker")["Active"]["status"] == "True"
        assert custom.get_namespaced_custom_object(*keda, "worker")["status"]["lastActiveTime"]

        queue.xreadgroup("workers", "w1", {"inputs": ">"}, count=10)  # lag 0, pending 3: still in progress
        time.sleep(3.5)  # past the cooldown and the stabilization window
        assert replicas(2)
        queue.xack("inputs", "workers", *ids)
        queue.xdel("inputs", *ids)
        _until("the scale-down to 0 after the cooldown", lambda: replicas(0), 20)
        assert conditions("worker")["Active"]["status"] == "False"

        custom.patch_namespaced_custom_object(*keda, "worker", {"spec": {"minReplicaCount": 1}})
        _until("the scale-up to minReplicaCount", lambda: replicas(1), 20)
        # Scaled up by someone else (as a provider may do ahead of KEDA's next poll): kept for the window.
        apps.patch_namespaced_deployment_scale("worker", NS, {"spec": {"replicas": 2}})
        time.sleep(1.5)
        assert apps.read_namespaced_deployment("worker", NS).spec.replicas == 2
        _until("the scale-down to minReplicaCount after the window", lambda: replicas(1), 20)
        queue.close()


# ---- RBAC -----------------------------------------------------------------------------------------

RULES = [{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list", "create", "delete"]},
         {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
         {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]}]


def test_rbac_holds_the_kubeconfigs_service_account_to_its_role():
    with standin(rbac=RULES, service_account="runner") as kube:
        admin = client.CoreV1Api(kube.api_client())
        user_api = config.new_client_from_config(kube.kubeconfig)
        user = client.CoreV1Api(user_api)
        user.create_namespaced_config_map(NS, {"metadata": {"name": "allowed"}})
        assert [c.metadata.name for c in user.list_namespaced_config_map(NS).items] == ["allowed"]

        def forbidden(call, message: str) -> None:
            with pytest.raises(ApiException) as e:
                call()
            assert e.value.status == 403 and message in json.loads(e.value.body)["message"], e.value.body

        forbidden(lambda: user.patch_namespaced_config_map("allowed", NS, {"data": {"a": "b"}}),
                  'configmaps "allowed" is forbidden: User "system:serviceaccount:runner:runner" cannot patch '
                  'resource "configmaps" in API group "" in the namespace "runner"')
        forbidden(lambda: user.list_namespaced_secret(NS), 'cannot list resource "secrets"')
        forbidden(lambda: user.list_namespaced_config_map("default"), 'in the namespace "default"')  # a Role's namespace only
        forbidden(lambda: user.list_config_map_for_all_namespaces(), "at the cluster scope")
        forbidden(lambda: user.list_node(), 'cannot list resource "nodes"')
        forbidden(lambda: user.connect_get_namespaced_pod_portforward("p", NS, ports="80"),
                  'cannot create resource "pods/portforward"')  # a connect subresource needs create
        forbidden(lambda: client.AppsV1Api(user_api).read_namespaced_deployment_scale("d", NS),
                  'cannot get resource "deployments/scale" in API group "apps"')
        admin.list_namespace()  # the tests' own client is an administrator
        admin.patch_namespaced_config_map("allowed", NS, {"data": {"a": "b"}})
        bad = client.ApiClient(kube.configuration())
        bad.configuration.api_key = {"authorization": "Bearer not-a-token"}
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(bad).list_namespaced_pod(NS)
        assert e.value.status == 401
        bad.close()
        user_api.close()


# ---- the HTTP add-on -------------------------------------------------------------------------------

SERVER = ("import http.server, socket, time\n"
          "time.sleep(1)\n"  # the pod runs before its server listens: the interceptor must wait for it
          "class H(http.server.BaseHTTPRequestHandler):\n"
          "    def do_GET(self):\n"
          "        b = (socket.gethostname() + ' ' + self.path).encode()\n"
          "        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers()\n"
          "        self.wfile.write(b)\n"
          "    def do_POST(self):\n"
          "        b = self.rfile.read(int(self.headers['Content-Length']))\n"
          "        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers()\n"
          "        self.wfile.write(b)\n"
          "http.server.ThreadingHTTPServer(('0.0.0.0', 8000), H).serve_forever()\n")


def _http(kube, host: str, method: str = "GET", path: str = "/", body: bytes | None = None) -> tuple[int, str]:
    return http_to(kube.web_url, host, method, path, body, timeout=60)


def test_the_http_add_on_wakes_its_deployment_routes_by_host_and_scales_back(kube_api, kube_standin):
    apps, custom = client.AppsV1Api(kube_api), client.CustomObjectsApi(kube_api)
    core = client.CoreV1Api(kube_api)
    labels = {"app": "site"}
    apps.create_namespaced_deployment(NS, {
        "metadata": {"name": "site"},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                     "name": "main", "image": IMAGE, "command": ["python3", "-c", SERVER],
                     "ports": [{"name": "http", "containerPort": 8000}]}]}}}})
    core.create_namespaced_service(NS, {"metadata": {"name": "site"}, "spec": {
        "selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}})
    custom.create_namespaced_custom_object("http.keda.sh", "v1alpha1", NS, "httpscaledobjects", {
        "apiVersion": "http.keda.sh/v1alpha1", "kind": "HTTPScaledObject", "metadata": {"name": "site"},
        "spec": {"hosts": ["site.example.test"], "pathPrefixes": ["/app"], "scaledownPeriod": 2,
                 "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "site", "service": "site",
                                    "port": 80},
                 "replicas": {"min": 0, "max": 2}}})
    assert _http(kube_standin, "other.example.test")[0] == 404
    assert _http(kube_standin, "site.example.test", path="/elsewhere")[0] == 404  # outside its path prefixes
    status, body = _http(kube_standin, "site.example.test:80", path="/app/x?y=1")
    assert status == 200 and body.endswith(" /app/x?y=1"), body
    assert apps.read_namespaced_deployment("site", NS).spec.replicas == 1
    assert _http(kube_standin, "SITE.example.test", "POST", "/app", b"x" * 100_000) == (200, "x" * 100_000)
    got = custom.get_namespaced_custom_object("http.keda.sh", "v1alpha1", NS, "httpscaledobjects", "site")
    assert got["status"]["conditions"][0]["type"] == "Ready"
    _until("scale-down to replicas.min", lambda: apps.read_namespaced_deployment("site", NS).spec.replicas == 0,
           timeout=30)

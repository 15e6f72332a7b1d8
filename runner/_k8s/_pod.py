"""The one pod-spec builder behind every workload (Deployment, Job, CronJob, sandbox Pod).

What every pod gets:
- `serviceAccountName` from the stack (workload identity to the bucket and registry), the stack's
  `pod_labels`, `enableServiceLinks: false` (no service env vars leaking into user code);
- a pod `securityContext` with the RuntimeDefault seccomp profile and a container one with
  `privileged: false` and `allowPrivilegeEscalation: false`. Images run as the user they were
  built for (root for Modal-style images), so `runAsNonRoot` is not forced;
- the image from the stack's registry (`image_ref`);
- env: the function's plain `env` as `value`s; the queue's address as RUNNER_QUEUE_URL and the
  queue's password as RUNNER_QUEUE_PASSWORD from the stack's queue Secret (`secretKeyRef`, key
  `password`); each runner Secret as an `envFrom.secretRef` to the Kubernetes Secret
  `secret_names(...)` names. No secret value is ever in a pod spec;
- resources: requests from cpu/memory (Modal's units: float cores, MiB), defaulting to Modal's
  0.25 CPU / 256 MiB so the cluster autoscaler can pack and scale; limits where the user gave
  one (`cpu=(req, limit)`), or, with `enforce_limits` (sandboxes), the given value itself;
  `nvidia.com/gpu` limits and the node selector / affinity / tolerations from `_placement`;
- `terminationGracePeriodSeconds` (default 120) long enough for the final volume upload.

Volumes. Each `{path: Volume}` mount is an emptyDir at `path`, filled before the main container
starts by one init container per volume running `runner-sync down BUCKET VOLUME PATH` and
uploaded by one native sidecar (an init container with `restartPolicy: Always`, Kubernetes
1.29+). A native sidecar starts before the main container and is stopped only after it exited, so
its final upload sees every write the main container made, and it does not keep a Job from
completing. The sidecar uploads:
- on commit: the main container writes "TOKEN up" to `$RUNNER_VOLUME_SYNC_DIR/request` (a shared
  emptyDir); the sidecar, polling five times a second, removes it, uploads every volume and writes
  "TOKEN ok" (or "TOKEN failed") to `$RUNNER_VOLUME_SYNC_DIR/done`; on reload, "TOKEN down" has
  it download every volume the same way (`Volume.commit()` and `.reload()` in runner._volume);
- on SIGTERM: `trap 'sync_up; exit $?' TERM`, with the idle wait as `sleep 0.2 & wait $!`, never a
  foreground sleep, which would delay the trap until the sleep ends. The exit status is the
  upload's, so a failed final upload shows in the pod's status instead of being hidden.
Uploads copy new and changed files and never delete in the bucket (another container may have
committed files this one never reloaded); a file deleted in a container stays in the bucket.

The sync tool is the cloud's own (`SYNC_TOOLS`, keyed by `StackOutputs.cloud`): `gsutil rsync`,
`aws s3 sync`, `azcopy sync`, or `cp -a` from a hostPath for the local stack's `file://` bucket.
A volume lives at `BUCKET/volumes/VOLUME` (VOLUME is the volume's name, or `.ephemeral/ID`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from collections.abc import Sequence
from typing import Any

from .._resources import FunctionOptions
from .._stack import StackOutputs
from ..exception import InvalidError
from ._meta import cpu_quantity, dns_name, labels, memory_quantity
from ._placement import GPU_RESOURCE, gpu_placement

__all__ = [
    "DEFAULT_CPU",
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_MEMORY_MIB",
    "SYNC_DIR",
    "SYNC_TOOLS",
    "WORKER_COMMAND",
    "SyncTool",
    "Workload",
    "image_ref",
    "pod_template",
    "secret_names",
    "sidecar_script",
]

WORKER_COMMAND: tuple[str, ...] = ("python", "-m", "runner._plane.worker")
DEFAULT_CPU = 0.25
DEFAULT_MEMORY_MIB = 256
DEFAULT_GRACE_SECONDS = 120
SYNC_DIR = "/run/runner-sync"
MAIN = "main"

# Env names the worker reads (a contract with runner._plane.worker).
ENV_APP, ENV_FUNCTION, ENV_RUN = "RUNNER_APP", "RUNNER_FUNCTION", "RUNNER_RUN_ID"
ENV_QUEUE_URL, ENV_QUEUE_PASSWORD = "RUNNER_QUEUE_URL", "RUNNER_QUEUE_PASSWORD"
ENV_MODE, ENV_SYNC_DIR, ENV_VOLUMES = "RUNNER_WORKER_MODE", "RUNNER_VOLUME_SYNC_DIR", "RUNNER_VOLUMES"
ENV_WEB_PORT = "RUNNER_WEB_PORT"
ENV_PLANE_FUNCTION, ENV_POD_NAME, ENV_STORE_URL = "RUNNER_PLANE_FUNCTION", "RUNNER_POD_NAME", "RUNNER_STORE_URL"


@dataclasses.dataclass(frozen=True)
class Workload:
    """What a provider knows about one function (or sandbox) when it renders its objects.

    `image` is the image's path under the stack's registry ("runner/demo:3f2a...") or a full
    reference that already starts with `registry_url`. `deployed` workloads (`runner deploy`) are
    named after app and function only, so deploying again replaces them in place; ephemeral ones
    (`runner run`) also carry the run id in their names."""

    app: str
    function: str
    run_id: str
    image: str
    options: FunctionOptions = dataclasses.field(default_factory=FunctionOptions)
    deployed: bool = False

    @property
    def name(self) -> str:
        """The base object name: DNS-1035, at most 63 characters."""
        parts = (self.app, self.function) if self.deployed else (self.app, self.function, self.run_id)
        return dns_name(*parts)

    @property
    def queue_key(self) -> str:
        """The function's key on the queue plane (runner._plane.Keys): its input stream and spec.
        A deployed function keeps its key across versions, so inputs queued before a redeploy are
        taken by the new version's pods instead of being stranded on the old one's stream."""
        parts = (self.app, self.function) if self.deployed else (self.app, self.function, self.run_id)
        return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class SyncTool:
    """One cloud's way to copy a volume between its bucket and a directory. `down` and `up` are sh
    snippets run with REMOTE (the volume's URL) and LOCAL (its mount path) set."""

    image: str | None  # None: the function's own image (it has sh and cp)
    down: str
    up: str
    env: tuple[tuple[str, str], ...] = ()


SYNC_TOOLS: dict[str, SyncTool] = {
    # `gsutil rsync` fails on a prefix that has no objects yet (a new volume): list it first.
    "gcp": SyncTool("gcr.io/google.com/cloudsdktool/google-cloud-cli:stable",
                    'if gsutil -q ls "$REMOTE/" >/dev/null 2>&1; then gsutil -m -q rsync -r "$REMOTE" "$LOCAL"; fi',
                    'gsutil -m -q rsync -r "$LOCAL" "$REMOTE"'),
    "aws": SyncTool("public.ecr.aws/aws-cli/aws-cli:latest",
                    'aws s3 sync --only-show-errors "$REMOTE" "$LOCAL"',
                    'aws s3 sync --only-show-errors "$LOCAL" "$REMOTE"'),
    # Workload identity: azcopy logs in with the federated token AKS projects into the pod.
    "azure": SyncTool("mcr.microsoft.com/azure-storage/azcopy:latest",
                      'azcopy sync "$REMOTE" "$LOCAL" --recursive=true',
                      'azcopy sync "$LOCAL" "$REMOTE" --recursive=true',
                      (("AZCOPY_AUTO_LOGIN_TYPE", "WORKLOAD"),)),
    # file:///P: P is mounted from the node (hostPath) at /bucket.
    "local": SyncTool(None,
                      'mkdir -p "$REMOTE" && cp -a "$REMOTE/." "$LOCAL/"',
                      'mkdir -p "$REMOTE" && cp -a "$LOCAL/." "$REMOTE/"'),
}
_LOCAL_BUCKET = "/bucket"


def image_ref(stack: StackOutputs, image: str) -> str:
    """`image` under the stack's registry, unless it already names it (as `REGISTRY/NAME:TAG`, or
    `REGISTRY:TAG` where the registry URL is one repository, as on ECR)."""
    registry = stack.registry_url.rstrip("/")
    return image if image.startswith((registry + "/", registry + ":")) else f"{registry}/{image.lstrip('/')}"


def _store_url(endpoint: str) -> str:
    """The queue endpoint as a store URL with the password from $(RUNNER_QUEUE_PASSWORD)."""
    scheme, _, rest = endpoint.partition("://")
    return f"{scheme}://:$({ENV_QUEUE_PASSWORD})@{rest.rpartition('@')[2]}"


def secret_names(w: Workload) -> list[str]:
    """The Kubernetes Secret names for `w.options.secrets`, in order: one Secret per runner Secret,
    per workload (so an ephemeral run's Secrets are owned, and garbage-collected, with it)."""
    return [dns_name(w.name, "secret", str(i)) for i in range(len(w.options.secrets))]


def _volume_key(volume: Any) -> str:
    return volume if isinstance(volume, str) else volume._key()


def _remote(stack: StackOutputs, key: str) -> str:
    if stack.cloud == "local":
        return f"{_LOCAL_BUCKET}/volumes/{key}"
    return f"{stack.bucket_url.rstrip('/')}/volumes/{key}"


def _tool(stack: StackOutputs) -> SyncTool:
    try:
        return SYNC_TOOLS[stack.cloud]
    except KeyError:
        raise InvalidError(f"no volume sync tool for cloud {stack.cloud!r}; known: {', '.join(SYNC_TOOLS)}") from None


def _down_script(tool: SyncTool) -> str:
    # Run as `sh -c SCRIPT runner-sync down BUCKET VOLUME PATH`: $0 is "runner-sync".
    return ('set -eu\n[ "$1" = down ] || { echo "runner-sync: usage: runner-sync down BUCKET VOLUME PATH" >&2; exit 2; }\n'
            'REMOTE="$2/volumes/$3"; LOCAL="$4"\n'
            f'{tool.down}\n'
            'echo "runner-sync: $3 synced down to $4"\n')


def sidecar_script(tool: SyncTool, pairs: Sequence[tuple[str, str]], sync_dir: str = SYNC_DIR) -> str:
    """The sync sidecar's sh script for `pairs` of (remote URL, mount path), taking requests in
    `sync_dir`; see the module docstring. A request is "TOKEN" or "TOKEN up" (commit: upload) or
    "TOKEN down" (reload: download)."""
    d = shlex.quote(sync_dir)
    ups = "\n".join(f"  sync_one {shlex.quote(remote)} {shlex.quote(local)} || status=1" for remote, local in pairs)
    downs = "\n".join(f"  fetch_one {shlex.quote(remote)} {shlex.quote(local)} || status=1" for remote, local in pairs)
    return f"""set -u
sync_one() {{
  REMOTE="$1"; LOCAL="$2"
  {tool.up}
}}
fetch_one() {{
  REMOTE="$1"; LOCAL="$2"
  {tool.down}
}}
sync_up() {{
  status=0
{ups}
  return $status
}}
sync_down() {{
  status=0
{downs}
  return $status
}}
trap 'sync_up; exit $?' TERM
while true; do
  sleep 0.2 & wait $!
  if [ -f {d}/request ]; then
    read -r token op < {d}/request; rm -f {d}/request
    if [ "${{op:-up}}" = down ]; then sync_down; else sync_up; fi
    if [ $? -eq 0 ]; then result=ok; else result=failed; fi
    echo "$token $result" > {d}/done.tmp && mv {d}/done.tmp {d}/done
  fi
done
"""


def _resources(options: FunctionOptions, gpu_count: int, enforce_limits: bool) -> dict[str, Any]:
    cpu_req, cpu_lim = options.cpu or (DEFAULT_CPU, None)
    mem_req, mem_lim = options.memory or (DEFAULT_MEMORY_MIB, None)
    if enforce_limits:
        cpu_lim = cpu_lim or (cpu_req if options.cpu else None)
        mem_lim = mem_lim or (mem_req if options.memory else None)
    limits: dict[str, Any] = {}
    if cpu_lim:
        limits["cpu"] = cpu_quantity(cpu_lim)
    if mem_lim:
        limits["memory"] = memory_quantity(mem_lim)
    if gpu_count:
        limits[GPU_RESOURCE] = str(gpu_count)
    out: dict[str, Any] = {"requests": {"cpu": cpu_quantity(cpu_req), "memory": memory_quantity(mem_req)}}
    if limits:
        out["limits"] = limits
    return out


_CONTAINER_SECURITY = {"privileged": False, "allowPrivilegeEscalation": False}


def pod_template(stack: StackOutputs, w: Workload, kind: str, *, command: Sequence[str],
                 mode: str | None = None, restart_policy: str = "Always",
                 grace_seconds: int = DEFAULT_GRACE_SECONDS, enforce_limits: bool = False,
                 ports: Sequence[dict[str, Any]] = (), readiness: dict[str, Any] | None = None,
                 extra_labels: dict[str, str] | None = None, queue: bool = True,
                 extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """A PodTemplateSpec (`{"metadata": ..., "spec": ...}`) for `w`; the Pod kind takes the same
    two keys. `kind` is the runner/kind label; `mode`, when given, is RUNNER_WORKER_MODE; `queue`
    gives the container the queue's address and password (workers need them, sandboxes must not
    have them: their code is not the app's). Raises InvalidError (an unknown GPU type, ...) before
    building anything."""
    options = w.options
    placement = gpu_placement(stack, options.gpu)
    tool = _tool(stack) if options.volumes else None

    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in options.env]
    env += [{"name": ENV_APP, "value": w.app}, {"name": ENV_FUNCTION, "value": w.function},
            {"name": ENV_RUN, "value": w.run_id}]
    if mode is not None:
        env.append({"name": ENV_MODE, "value": mode})
    env += [{"name": k, "value": v} for k, v in sorted((extra_env or {}).items())]
    if queue:
        env += [{"name": ENV_QUEUE_URL, "value": stack.queue_endpoint},
                {"name": ENV_QUEUE_PASSWORD,
                 "valueFrom": {"secretKeyRef": {"name": stack.queue_secret_name, "key": "password"}}},
                # Dict and Queue: the same server; $(VAR) is expanded by the kubelet, so the
                # password is still only in the Secret.
                {"name": ENV_STORE_URL, "value": _store_url(stack.queue_endpoint)},
                {"name": ENV_PLANE_FUNCTION, "value": w.queue_key},
                {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]

    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    init: list[dict[str, Any]] = []
    main_image = image_ref(stack, w.image)
    if options.volumes:
        assert tool is not None
        keys = {}
        pairs = []
        for i, (path, volume) in enumerate(options.volumes):
            key = _volume_key(volume)
            keys[key] = path
            vol = f"volume-{i}"
            volumes.append({"name": vol, "emptyDir": {}})
            mounts.append({"name": vol, "mountPath": path})
            pairs.append((_remote(stack, key), path))
        env += [{"name": ENV_VOLUMES, "value": json.dumps(keys, sort_keys=True)},
                {"name": ENV_SYNC_DIR, "value": SYNC_DIR}]
        volumes.append({"name": "runner-sync", "emptyDir": {}})
        mounts.append({"name": "runner-sync", "mountPath": SYNC_DIR})
        tool_mounts = list(mounts)
        if stack.cloud == "local":
            volumes.append({"name": "bucket", "hostPath": {"path": stack.bucket_url.removeprefix("file://"),
                                                         "type": "DirectoryOrCreate"}})
            tool_mounts.append({"name": "bucket", "mountPath": _LOCAL_BUCKET})
        tool_env = [{"name": k, "value": v} for k, v in tool.env]
        bucket = _LOCAL_BUCKET if stack.cloud == "local" else stack.bucket_url.rstrip("/")
        for i, (path, volume) in enumerate(options.volumes):
            init.append(_tool_container(f"volume-down-{i}", tool, tool_env, tool_mounts, main_image, {
                "command": ["sh", "-c", _down_script(tool), "runner-sync", "down", bucket, _volume_key(volume), path]}))
        sidecar = _tool_container("volume-up", tool, tool_env, tool_mounts, main_image, {
            "command": ["sh", "-c", sidecar_script(tool, pairs), "runner-sync-up"]})
        sidecar["restartPolicy"] = "Always"
        init.append(sidecar)

    main: dict[str, Any] = {
        "name": MAIN,
        "image": main_image,
        "command": list(command),
        "env": env,
        "resources": _resources(options, placement.gpu_count, enforce_limits),
        "securityContext": dict(_CONTAINER_SECURITY),
    }
    names = secret_names(w)
    if names:
        main["envFrom"] = [{"secretRef": {"name": n}} for n in names]
    if ports:
        main["ports"] = [dict(p) for p in ports]
    if readiness:
        main["readinessProbe"] = readiness
    if mounts:
        main["volumeMounts"] = mounts

    spec: dict[str, Any] = {
        "serviceAccountName": stack.service_account,
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": int(grace_seconds),
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [main],
    }
    if init:
        spec["initContainers"] = init
    if volumes:
        spec["volumes"] = volumes
    if placement.node_selector:
        spec["nodeSelector"] = dict(placement.node_selector)
    if placement.affinity:
        spec["affinity"] = placement.affinity
    if placement.tolerations:
        spec["tolerations"] = [dict(t) for t in placement.tolerations]

    pod_labels = {**stack.pod_labels, **labels(w.app, w.function, w.run_id, kind), **(extra_labels or {})}
    return {"metadata": {"labels": pod_labels}, "spec": spec}


def _tool_container(name: str, tool: SyncTool, env: list[dict[str, Any]], mounts: list[dict[str, Any]],
                    main_image: str, extra: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": tool.image or main_image, **extra,
                         "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                         "securityContext": dict(_CONTAINER_SECURITY),
                         "volumeMounts": [dict(m) for m in mounts]}
    if env:
        c["env"] = [dict(e) for e in env]
    return c


def seconds(value: float) -> int:
    """A duration in whole seconds, rounded up (Kubernetes takes integers)."""
    return max(1, math.ceil(value))


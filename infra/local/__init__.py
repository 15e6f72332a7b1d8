"""The local program (`runner:cloud` = local): a registry, the queue and the volumes root on this
machine's Docker, for runner's docker provider; see stack.py for what and why, README.md for use.

Config keys (all optional; `pulumi config set runner:KEY VALUE`):

    runner:dataDir        absolute path; default $RUNNER_HOME/local-stack (~/.runner/local-stack)
    runner:registryPort   127.0.0.1 port of the registry; default 5000
    runner:queuePort      also publish the queue on 127.0.0.1:PORT; default: unix socket only
    runner:registryImage  default registry:2.8.3
    runner:queueImage     default redis:7.4-alpine
    runner:queueMemoryMb  the queue container's memory limit in MB; default 1024
    runner:queuePassword  (secret) the queue password; default a random one (pulumi_random)

There is no cluster, so the contract's kubeconfig is "", gpu_types and pod_labels are {}, and
namespace and service_account are the names runner's docker provider uses ("runner").
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.common import export_contract

from .stack import REGISTRY_IMAGE, LocalRunner, LocalRunnerArgs

__all__ = ["REGISTRY_IMAGE", "LocalRunner", "LocalRunnerArgs", "args_from_config", "program"]


def _port(config: pulumi.Config, key: str) -> int | None:
    raw = config.get(key)
    if raw is None:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise pulumi.RunError(f"stack config runner:{key} is {raw!r}; set a port number from 1 to 65535: "
                              f"`pulumi config set runner:{key} 5000`")
    return port


def args_from_config() -> LocalRunnerArgs:
    """`LocalRunnerArgs` from the stack config; a bad value is one `pulumi.RunError` line naming its key."""
    config = pulumi.Config("runner")
    overrides: dict[str, Any] = {}
    data_dir = config.get("dataDir")
    if data_dir is not None:
        if not data_dir.startswith("/"):
            raise pulumi.RunError(f"stack config runner:dataDir is {data_dir!r}; set an absolute path: "
                                  "`pulumi config set runner:dataDir /srv/runner`")
        overrides["data_dir"] = data_dir.rstrip("/") or "/"
    registry_port = _port(config, "registryPort")
    if registry_port is not None:
        overrides["registry_port"] = registry_port
    queue_port = _port(config, "queuePort")
    if queue_port is not None:
        if queue_port == overrides.get("registry_port", LocalRunnerArgs.registry_port):
            raise pulumi.RunError(f"stack config runner:queuePort is {queue_port}, the registry's port; "
                                  "choose another: `pulumi config set runner:queuePort 6379`")
        overrides["queue_port"] = queue_port
    for key, field in (("registryImage", "registry_image"), ("queueImage", "queue_image")):
        value = config.get(key)
        if value is not None:
            if not value or any(c.isspace() for c in value):
                raise pulumi.RunError(f"stack config runner:{key} is {value!r}; set an image reference "
                                      f"such as {getattr(LocalRunnerArgs, field)}")
            overrides[field] = value
    memory = config.get("queueMemoryMb")
    if memory is not None:
        if not memory.isdigit() or not 64 <= int(memory) <= 1 << 20:
            raise pulumi.RunError(f"stack config runner:queueMemoryMb is {memory!r}; set megabytes, "
                                  "at least 64: `pulumi config set runner:queueMemoryMb 1024`")
        overrides["queue_memory_mb"] = int(memory)
    return LocalRunnerArgs(**overrides)


def program() -> None:
    """Declare the local stack and export the contract (`runner._stack`)."""
    args = args_from_config()
    local = LocalRunner("runner-local", args)
    export_contract({
        "cloud": "local",
        "kubeconfig": "",  # no cluster: the docker provider talks to the Docker daemon
        "registry_url": local.registry_url,
        "bucket_url": local.bucket_url,
        "namespace": local.namespace,
        "service_account": "runner",  # no identity system: containers run as the invoking user
        "pod_labels": {},
        "queue_endpoint": local.queue_endpoint,
        "queue_secret_name": local.queue_secret_name,
        "gpu_types": {},  # see README.md: `--gpus` needs no node selector or toleration
        "web_domain": "",  # no cluster, so no front door: a local deploy serves on 127.0.0.1 itself
        "web_endpoint": "",
    })

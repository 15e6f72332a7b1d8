"""The stack-outputs contract between the infra/ Pulumi programs and the runner.

Every program under infra/ (gcp, aws, azure, local) exports exactly the keys in `OUTPUT_KEYS`
(through `infra.common.export_contract`), and the runner reads them back with `read_outputs`, so
the runner never branches on the cloud to find its cluster, registry, bucket or queue. This
module is that one definition; it imports only the standard library because the runner must read
outputs without any Pulumi package installed.

    cloud              "gcp" | "aws" | "azure" | "local"
    kubeconfig         a kubeconfig (YAML) for the cluster; a Pulumi secret; may be "" for local
    registry_url       where images are pushed: "REGION-docker.pkg.dev/PROJECT/REPO", ...
    bucket_url         gs://B, s3://B, https://ACCOUNT.blob.core.windows.net/CONTAINER, file:///P
    namespace          the Kubernetes namespace the runner works in
    service_account    the Kubernetes ServiceAccount its pods run as (workload identity)
    pod_labels         labels every runner pod must carry, e.g. {"azure.workload.identity/use": "true"}
                       on AKS; {} where the cloud needs none
    queue_endpoint     redis://runner-queue.runner.svc.cluster.local:6379/0
    queue_secret_name  the Secret in `namespace` whose key `password` authenticates to the queue
    gpu_types          Modal GPU name ("H100", "A100-80GB", "L4", "T4", "A10G", ...) ->
                       {"node_selector": {label: value}, "tolerations": [toleration, ...]}
    web_domain         optional: the wildcard DNS domain of deployed web endpoints, each served at
                       http://APP-FUNCTION.DOMAIN through the stack's front door (the KEDA HTTP
                       add-on's interceptor), which scales them from zero; "" (or absent): the
                       stack has no front door, and deployed endpoints are reachable in-cluster only
    web_endpoint       optional: the front door's own address (http://IP or http://HOST), where
                       *.web_domain must resolve; "" when there is none

`load_outputs` accepts what `pulumi stack output --json --show-secrets` prints; keys it does not
know are ignored, so a newer infra program can add outputs without breaking an older runner, and
the optional keys (`OPTIONAL_KEYS`) may be absent, so a stack made before them still loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from typing import Any

from .exception import InvalidError

__all__ = ["CLOUDS", "OPTIONAL_KEYS", "OUTPUT_KEYS", "SECRET_KEYS", "STACK_OUTPUTS_ENV", "StackOutputs", "is_dns_name",
           "load_outputs", "read_outputs"]

CLOUDS = ("gcp", "aws", "azure", "local")
STACK_OUTPUTS_ENV = "RUNNER_STACK_OUTPUTS"
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+")
_TODO = ("run `pulumi up` on infra/ (see docs/infrastructure.md) or pass --stack-outputs FILE "
         f"(or set {STACK_OUTPUTS_ENV})")


@dataclasses.dataclass(frozen=True)
class StackOutputs:
    """What the infra/ programs give the runner; see the module docstring for each field."""

    cloud: str
    kubeconfig: str = dataclasses.field(repr=False)
    registry_url: str
    bucket_url: str
    namespace: str
    service_account: str
    pod_labels: dict[str, str]
    queue_endpoint: str
    queue_secret_name: str
    gpu_types: dict[str, dict[str, Any]]
    web_domain: str = ""
    web_endpoint: str = ""


OUTPUT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StackOutputs))
# The fields with a default, which a stack made before them does not export.
OPTIONAL_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StackOutputs)
                                       if f.default is not dataclasses.MISSING)
SECRET_KEYS: tuple[str, ...] = ("kubeconfig",)
# Keys that must hold a non-empty string (kubeconfig may be "" for local; the optional ones "").
_NONEMPTY = tuple(k for k in OUTPUT_KEYS if k not in ("kubeconfig", "gpu_types", "pod_labels", *OPTIONAL_KEYS))


def is_dns_name(value: str) -> bool:
    """A lower-case DNS name of two labels or more (`apps.example.com`), as `web_domain` must be."""
    return bool(_DOMAIN.fullmatch(value))


def _gpu_types_ok(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for name, placement in value.items():
        if not isinstance(name, str) or not isinstance(placement, dict):
            return False
        selector = placement.get("node_selector")
        tolerations = placement.get("tolerations")
        if not isinstance(selector, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
            return False
        if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
            return False
    return True


def load_outputs(data: Any) -> StackOutputs:
    """A `StackOutputs` from the JSON object `pulumi stack output --json --show-secrets` prints.

    Raises InvalidError with one line naming every missing or ill-typed key.
    """
    if not isinstance(data, dict):
        raise InvalidError(f"stack outputs must be a JSON object, not {type(data).__name__}: {_TODO}")
    missing = [k for k in OUTPUT_KEYS if k not in data and k not in OPTIONAL_KEYS]
    hidden = [k for k in OUTPUT_KEYS if data.get(k) == "[secret]"]
    bad = []
    for key in OUTPUT_KEYS:
        if key not in data or key in hidden:
            continue
        value = data[key]
        if key == "gpu_types":
            if not _gpu_types_ok(value):
                bad.append("gpu_types (an object of GPU name -> {node_selector: {..}, tolerations: [..]})")
        elif key == "pod_labels":
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                bad.append("pod_labels (an object of label -> value)")
        elif key == "cloud":
            if value not in CLOUDS:
                bad.append(f"cloud ({value!r} is not one of {', '.join(CLOUDS)})")
        elif not isinstance(value, str):
            bad.append(f"{key} (a string, not {type(value).__name__})")
        elif key in _NONEMPTY and not value:
            bad.append(f"{key} (empty)")
        elif key == "web_domain" and value and not is_dns_name(value):
            bad.append(f"web_domain ({value!r} is not a DNS name such as apps.example.com)")
    problems = []
    if missing:
        problems.append("are missing " + ", ".join(missing))
    if hidden:
        problems.append("hide " + ", ".join(hidden) + " (read them with --show-secrets)")
    if bad:
        problems.append("have ill-typed " + ", ".join(bad))
    if problems:
        raise InvalidError(f"stack outputs {'; '.join(problems)}: {_TODO}")
    return StackOutputs(**{k: data[k] for k in OUTPUT_KEYS if k in data})


def read_outputs(path: str | None = None, *, stack: str | None = None,
                 project_dir: str | None = None) -> StackOutputs:
    """The stack outputs from `path`, else the file named by RUNNER_STACK_OUTPUTS, else the Pulumi CLI.

    The CLI runs `pulumi stack output --json --show-secrets [--stack STACK]` in `project_dir`
    (default: the current directory), the directory holding Pulumi.yaml: on `stack` when given,
    else on the currently selected stack. A `stack` asks for that stack, so RUNNER_STACK_OUTPUTS is
    not consulted then; `path` and `stack` together are an InvalidError.
    """
    if path is not None and stack is not None:
        raise InvalidError(f"read stack outputs from a file ({path}) or from stack {stack}, not both")
    if stack is None:
        path = path or os.environ.get(STACK_OUTPUTS_ENV) or None
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise InvalidError(f"cannot read stack outputs from {path}: {e.strerror or e}: {_TODO}") from None
        return load_outputs(_parse(text, path))
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        unset = f" and {STACK_OUTPUTS_ENV} is unset" if stack is None else ""
        raise InvalidError(f"no stack outputs: the pulumi CLI is not on PATH{unset}: {_TODO}")
    cmd = [pulumi, "stack", "output", "--json", "--show-secrets", *(["--stack", stack] if stack is not None else [])]
    what = "`pulumi stack output" + (f" --stack {stack}`" if stack is not None else "`")
    try:
        done = subprocess.run(cmd, cwd=project_dir, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InvalidError(f"{what} could not run: {e}: {_TODO}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise InvalidError(f"{what} failed in {project_dir or os.getcwd()}: {why}: {_TODO}")
    return load_outputs(_parse(done.stdout, what))


def _parse(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidError(f"stack outputs from {source} are not valid JSON ({e}): {_TODO}") from None

"""`AwsClusterArgs`: what the AWS program builds, with its defaults, read from the stack config.

Every field has a default sized for a small team that pays only for what runs: two on-demand
system nodes, everything else from Karpenter, GPU pools at zero until a pod asks for a GPU. A bad
config value stops the program with one `pulumi.RunError` line naming the key and what to set.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

import pulumi

from .karpenter import GPU_FAMILIES

__all__ = ["AwsClusterArgs", "from_config"]

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_DURATION = re.compile(r"^([0-9]+(s|m|h))+$")
_QUANTITY = re.compile(r"^[0-9]+(Ki|Mi|Gi|Ti)?$")
_ALIAS = re.compile(r"^(al2023|bottlerocket)@[A-Za-z0-9.\-]+$")


@dataclasses.dataclass
class AwsClusterArgs:
    """The AWS cluster, registry and bucket; defaults in brackets are what `pulumi up` builds."""

    region: str  # aws:region, required: where everything lives (GPU families differ per region)
    cluster_name: str = "runner"  # the EKS cluster's name, also its Karpenter discovery tag value
    kubernetes_version: str = "1.31"  # Karpenter 1.1 supports up to 1.31
    vpc_cidr: str = "10.0.0.0/16"
    az_count: int = 3  # private + public subnets in this many zones (2 or 3): more spot pools
    # The managed node group for system pods (CoreDNS, Karpenter, KEDA, the queue): on-demand,
    # never scaled to zero, because Karpenter cannot launch the node it itself runs on.
    system_instance_type: str = "m6i.large"
    system_min_nodes: int = 2  # two, so Karpenter's two replicas sit on different nodes
    system_max_nodes: int = 3
    # Karpenter pools.
    spot: bool = True  # capacity-type [spot, on-demand]: spot first, on-demand fallback
    gpu_families: list[str] = dataclasses.field(default_factory=lambda: ["p5", "g5", "g6"])
    gpu_limit: int = 8  # per GPU family pool: at most this many GPUs at once
    cpu_limit: int = 64  # vCPUs of the CPU pool
    memory_limit: str = "256Gi"  # memory of the CPU pool
    consolidate_after: str = "60s"  # how long an empty (or, for CPU, underused) node lingers
    ami_alias: str = "al2023@latest"  # EC2NodeClass AMI; pin e.g. al2023@v20250116 for production
    # Kubernetes API access from outside the VPC (where `runner` and `pulumi` run).
    api_allowed_cidrs: list[str] = dataclasses.field(default_factory=lambda: ["0.0.0.0/0"])
    # Registry and bucket.
    immutable_tags: bool = False  # ECR tag immutability (runner may re-push a tag)
    force_destroy: bool = True  # `pulumi destroy` deletes the bucket's objects and the images too
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # added to every AWS resource


def _fail(key: str, problem: str, todo: str) -> pulumi.RunError:
    return pulumi.RunError(f"stack config {key} {problem}; {todo}")


def _get(config: pulumi.Config, name: str, kind: str) -> Any:
    """Config value `runner:NAME` of `kind`, or None; a value of the wrong type is a clear error."""
    getter = {"str": config.get, "int": config.get_int, "bool": config.get_bool, "object": config.get_object}[kind]
    try:
        return getter(name)
    except pulumi.ConfigTypeError as e:
        raise _fail(f"runner:{name}", f"is not a valid {kind} ({e.value!r})",
                    f"e.g. `pulumi config set runner:{name} ...` (see infra/aws/README.md)") from None


def from_config() -> AwsClusterArgs:
    """The args from stack config `aws:region` and `runner:*`; see infra/aws/README.md."""
    region = pulumi.Config("aws").get("region")
    if not region:
        raise _fail("aws:region", "is not set", "`pulumi config set aws:region us-east-1` (any region with EKS)")
    config = pulumi.Config("runner")
    defaults = AwsClusterArgs(region=region)
    values: dict[str, Any] = {"region": region,
                              "cluster_name": f"runner-{pulumi.get_stack()}"[:32].rstrip("-")}
    fields = {  # config key -> (field, kind)
        "clusterName": ("cluster_name", "str"), "kubernetesVersion": ("kubernetes_version", "str"),
        "vpcCidr": ("vpc_cidr", "str"), "azCount": ("az_count", "int"),
        "systemInstanceType": ("system_instance_type", "str"), "systemMinNodes": ("system_min_nodes", "int"),
        "systemMaxNodes": ("system_max_nodes", "int"), "spot": ("spot", "bool"),
        "gpuFamilies": ("gpu_families", "object"), "gpuLimit": ("gpu_limit", "int"), "cpuLimit": ("cpu_limit", "int"),
        "memoryLimit": ("memory_limit", "str"), "consolidateAfter": ("consolidate_after", "str"),
        "amiAlias": ("ami_alias", "str"), "apiAllowedCidrs": ("api_allowed_cidrs", "object"),
        "immutableTags": ("immutable_tags", "bool"), "forceDestroy": ("force_destroy", "bool"),
        "tags": ("tags", "object"),
    }
    for key, (field, kind) in fields.items():
        value = _get(config, key, kind)
        if value is not None:
            values[field] = value
    args = dataclasses.replace(defaults, **values)
    _check(args)
    return args


def _check(a: AwsClusterArgs) -> None:
    if not _NAME.match(a.cluster_name):
        raise _fail("runner:clusterName", f"is {a.cluster_name!r}",
                    "use 2 to 32 lower-case letters, digits and dashes, starting with a letter")
    if not re.match(r"^1\.[0-9]{2}$", a.kubernetes_version):
        raise _fail("runner:kubernetesVersion", f"is {a.kubernetes_version!r}", "use an EKS version such as 1.31")
    try:
        net = ipaddress.ip_network(a.vpc_cidr)
    except ValueError:
        net = None
    if net is None or net.version != 4 or not 16 <= net.prefixlen <= 20:
        raise _fail("runner:vpcCidr", f"is {a.vpc_cidr!r}", "use an IPv4 block from /16 to /20, e.g. 10.0.0.0/16")
    if a.az_count not in (2, 3):
        raise _fail("runner:azCount", f"is {a.az_count}", "use 2 or 3")
    if not 1 <= a.system_min_nodes <= a.system_max_nodes:
        raise _fail("runner:systemMinNodes", f"is {a.system_min_nodes} (systemMaxNodes {a.system_max_nodes})",
                    "use 1 <= runner:systemMinNodes <= runner:systemMaxNodes")
    if not isinstance(a.gpu_families, list) or not all(f in GPU_FAMILIES for f in a.gpu_families) \
            or len(set(a.gpu_families)) != len(a.gpu_families):
        raise _fail("runner:gpuFamilies", f"is {a.gpu_families!r}",
                    f"use a JSON list of distinct families from {', '.join(GPU_FAMILIES)} (or [] for none)")
    for key, value in (("runner:gpuLimit", a.gpu_limit), ("runner:cpuLimit", a.cpu_limit)):
        if value < 1:
            raise _fail(key, f"is {value}", "use a positive whole number")
    if not _QUANTITY.match(a.memory_limit):
        raise _fail("runner:memoryLimit", f"is {a.memory_limit!r}", "use a quantity such as 256Gi")
    if not _DURATION.match(a.consolidate_after):
        raise _fail("runner:consolidateAfter", f"is {a.consolidate_after!r}", "use a duration such as 60s, 5m or 1h")
    if not _ALIAS.match(a.ami_alias) or len(a.ami_alias) > 30:
        raise _fail("runner:amiAlias", f"is {a.ami_alias!r}", "use al2023@latest, al2023@vYYYYMMDD or bottlerocket@...")
    if not isinstance(a.api_allowed_cidrs, list) or not a.api_allowed_cidrs or not all(
            _is_cidr(c) for c in a.api_allowed_cidrs):
        raise _fail("runner:apiAllowedCidrs", f"is {a.api_allowed_cidrs!r}",
                    'use a JSON list of IPv4 CIDRs, e.g. ["203.0.113.0/24"]')
    if not isinstance(a.tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in a.tags.items()):
        raise _fail("runner:tags", f"is {a.tags!r}", 'use a JSON object of strings, e.g. {"team": "ml"}')


def _is_cidr(value: Any) -> bool:
    try:
        return isinstance(value, str) and ipaddress.ip_network(value).version == 4
    except ValueError:
        return False

"""Karpenter on EKS, as plain data: the Helm values, the EC2NodeClass and NodePools, IAM policies.

Karpenter, not a fixed node group, gives the cluster its burst CPU and all of its GPU capacity:
it launches an EC2 instance when a pod cannot be scheduled and removes it when it is empty, so
an idle cluster holds no GPU node at all. Every function here is pure (cluster name, region and
ARNs in, dicts out), so tests validate the manifests against Karpenter's own CRD schemas and
compare them with golden files without running Pulumi; `cluster.py` turns them into resources.

    EC2NodeClass `runner`   AMI alias (AL2023 by default; Karpenter picks the NVIDIA variant
                            for GPU instance types), the node instance profile, subnets and
                            security groups found by the tag `karpenter.sh/discovery: CLUSTER`,
                            IMDSv2 with hop limit 1 (pods cannot borrow the node's role)
    NodePool `cpu`          c/m/r generation 6+, consolidates when empty or underutilized
    NodePool `gpu-FAMILY`   one per GPU family (p5 H100, g5 A10G, g6 L4, ...), tainted
                            `nvidia.com/gpu=present:NoSchedule`, consolidates only when empty
                            (a running GPU job is never moved to save money)

Spot with on-demand fallback: a NodePool whose `karpenter.sh/capacity-type` allows both makes
Karpenter choose spot when EC2 has it (price-capacity-optimized) and on-demand otherwise.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "CHART",
    "CHART_VERSION",
    "GPU_FAMILIES",
    "GPU_LABEL",
    "GPU_TAINT",
    "INTERRUPTION_EVENTS",
    "NODE_CLASS",
    "NODE_MANAGED_POLICIES",
    "SERVICE_ACCOUNT",
    "controller_policy",
    "cpu_node_pool",
    "gpu_node_pool",
    "gpu_types",
    "helm_values",
    "interruption_queue_policy",
    "node_class",
]

CHART = "oci://public.ecr.aws/karpenter/karpenter"
CHART_VERSION = "1.1.1"  # supports Kubernetes 1.25 to 1.31; the chart installs its CRDs
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"
NODE_CLASS = "runner"

# The well-known label Karpenter puts on every GPU node (lower-case GPU model), which the
# runner's pods select on; Karpenter refuses NodePool labels in its domain, so selecting on it
# is the only way to say "an H100" without naming instance types.
GPU_LABEL = "karpenter.k8s.aws/instance-gpu-name"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

# EC2 family -> (Modal GPU name, value of GPU_LABEL on its instances). Families whose
# instances carry one GPU model only, so a pod selecting the model gets exactly that GPU.
GPU_FAMILIES: dict[str, tuple[str, str]] = {
    "p5": ("H100", "h100"),
    "g5": ("A10G", "a10g"),
    "g6": ("L4", "l4"),
    "g6e": ("L40S", "l40s"),
    "g4dn": ("T4", "t4"),
    "p4d": ("A100-40GB", "a100"),
}

# What a GPU pool may hold per GPU of `gpu_limit`: p5.48xlarge's ratio (192 vCPU, 2 TiB for 8
# GPUs), the largest of the families above, so the GPU count is what binds.
_CPU_PER_GPU = 24
_MEMORY_GIB_PER_GPU = 256

# The managed policies every Karpenter node's role carries (as in Karpenter's getting started).
NODE_MANAGED_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
)

# The EventBridge events Karpenter acts on before EC2 takes an instance away: rule name ->
# event pattern. Each rule targets the interruption queue.
INTERRUPTION_EVENTS: dict[str, dict[str, Any]] = {
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "instance-state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
}


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "runner",
            "app.kubernetes.io/managed-by": "pulumi"}


def helm_values(cluster_name: str, queue_name: str, replicas: int) -> dict[str, Any]:
    """Values of the Karpenter chart: the cluster, the interruption queue, the service account
    that EKS Pod Identity binds to the controller role (no IRSA annotation)."""
    return {
        "settings": {"clusterName": cluster_name, "interruptionQueue": queue_name},
        "serviceAccount": {"name": SERVICE_ACCOUNT},
        "replicas": replicas,
        "controller": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                                     "limits": {"memory": "512Mi"}}},
    }


def node_class(cluster_name: str, instance_profile: Any, ami_alias: str) -> dict[str, Any]:
    """The one EC2NodeClass every NodePool launches from (`instance_profile` may be an Output)."""
    discovery = {"karpenter.sh/discovery": cluster_name}
    return {
        "apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass",
        "metadata": {"name": NODE_CLASS, "labels": _labels(NODE_CLASS)},
        "spec": {
            "amiSelectorTerms": [{"alias": ami_alias}],
            "instanceProfile": instance_profile,
            "subnetSelectorTerms": [{"tags": dict(discovery)}],
            "securityGroupSelectorTerms": [{"tags": dict(discovery)}],
            # IMDSv2 only, one hop: containers cannot reach the node role's credentials; runner
            # pods get their own through EKS Pod Identity.
            "metadataOptions": {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled",
                                "httpPutResponseHopLimit": 1, "httpTokens": "required"},
            # Room for CUDA images on the root volume, encrypted.
            "blockDeviceMappings": [{"deviceName": "/dev/xvda", "rootVolume": True,
                                     "ebs": {"volumeSize": "200Gi", "volumeType": "gp3", "encrypted": True,
                                             "deleteOnTermination": True}}],
            "tags": {**discovery, "runner/cluster": cluster_name},
        },
    }


def _capacity(spot: bool) -> dict[str, Any]:
    return {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"] if spot else ["on-demand"]}


def _pool(name: str, requirements: list[dict[str, Any]], limits: dict[str, Any], policy: str,
          consolidate_after: str, taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": NODE_CLASS},
        "requirements": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                         {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}, *requirements],
        "expireAfter": "720h",
    }
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool",
        "metadata": {"name": name, "labels": _labels(name)},
        "spec": {
            "template": {"metadata": {"labels": {"runner/pool": name}}, "spec": spec},
            "limits": limits,
            "disruption": {"consolidationPolicy": policy, "consolidateAfter": consolidate_after},
        },
    }


def cpu_node_pool(spot: bool, cpu_limit: int, memory_limit: str, consolidate_after: str) -> dict[str, Any]:
    """Burst CPU capacity for functions and sandboxes, beyond the system node group."""
    return _pool("cpu", [
        _capacity(spot),
        {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]},
        {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["5"]},
    ], {"cpu": str(cpu_limit), "memory": memory_limit}, "WhenEmptyOrUnderutilized", consolidate_after)


def gpu_node_pool(family: str, spot: bool, gpu_limit: int, consolidate_after: str) -> dict[str, Any]:
    """GPU capacity of one EC2 family, from zero nodes to `gpu_limit` GPUs."""
    _, label = GPU_FAMILIES[family]
    limits = {"nvidia.com/gpu": str(gpu_limit), "cpu": str(gpu_limit * _CPU_PER_GPU),
              "memory": f"{gpu_limit * _MEMORY_GIB_PER_GPU}Gi"}
    return _pool(f"gpu-{family}", [
        _capacity(spot),
        {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": [family]},
        {"key": GPU_LABEL, "operator": "In", "values": [label]},
    ], limits, "WhenEmpty", consolidate_after, taints=[dict(GPU_TAINT)])


def gpu_types(families: list[str]) -> dict[str, dict[str, Any]]:
    """The contract's `gpu_types`: Modal GPU name -> the node selector and toleration of its pool."""
    out = {}
    for family in families:
        gpu, label = GPU_FAMILIES[family]
        out[gpu] = {"node_selector": {GPU_LABEL: label}, "tolerations": [dict(GPU_TOLERATION)]}
    return out


def interruption_queue_policy(queue_arn: str) -> str:
    """The SQS queue policy: EventBridge (and SQS itself) may send to the queue, over TLS only."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "EventBridgeSendsInterruptions", "Effect": "Allow",
         "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
         "Action": "sqs:SendMessage", "Resource": queue_arn},
        {"Sid": "DenyHTTP", "Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": queue_arn,
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]})


def controller_policy(cluster_name: str, cluster_arn: str, region: str, queue_arn: str,
                      node_role_arn: str, instance_profile_arn: str) -> str:
    """The Karpenter controller's IAM policy, scoped to this cluster's tags, queue and node role.

    Launching is scoped by the tag Karpenter puts on what it creates (`kubernetes.io/cluster/NAME:
    owned`), so the controller can terminate only instances it launched for this cluster. The
    instance profile is made by Pulumi, so the controller needs no IAM write permission at all;
    only `iam:PassRole` on the node role.
    """
    owned = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}
    requested = {f"aws:RequestTag/kubernetes.io/cluster/{cluster_name}": "owned"}
    statements = [
        {"Sid": "Describe", "Effect": "Allow", "Resource": "*", "Action": [
            "ec2:DescribeAvailabilityZones", "ec2:DescribeImages", "ec2:DescribeInstances",
            "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes", "ec2:DescribeLaunchTemplates",
            "ec2:DescribeSecurityGroups", "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets"],
         "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "LaunchFromSharedResources", "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": [f"arn:aws:ec2:{region}::image/*", f"arn:aws:ec2:{region}::snapshot/*",
                      f"arn:aws:ec2:{region}:*:security-group/*", f"arn:aws:ec2:{region}:*:subnet/*",
                      f"arn:aws:ec2:{region}:*:capacity-reservation/*"]},
        {"Sid": "LaunchWithOwnedLaunchTemplate", "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": f"arn:aws:ec2:{region}:*:launch-template/*", "Condition": {"StringEquals": owned}},
        {"Sid": "CreateTaggedResources", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
         "Resource": [f"arn:aws:ec2:{region}:*:{kind}/*" for kind in
                      ("fleet", "instance", "volume", "network-interface", "launch-template", "spot-instances-request")],
         "Condition": {"StringEquals": requested, "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "TagOnCreate", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": [f"arn:aws:ec2:{region}:*:{kind}/*" for kind in
                      ("fleet", "instance", "volume", "network-interface", "launch-template", "spot-instances-request")],
         "Condition": {"StringEquals": {**requested, "ec2:CreateAction": ["RunInstances", "CreateFleet",
                                                                          "CreateLaunchTemplate"]}}},
        {"Sid": "TagOwnedInstances", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": f"arn:aws:ec2:{region}:*:instance/*", "Condition": {"StringEquals": owned}},
        {"Sid": "DeleteOwned", "Effect": "Allow", "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
         "Resource": [f"arn:aws:ec2:{region}:*:instance/*", f"arn:aws:ec2:{region}:*:launch-template/*"],
         "Condition": {"StringEquals": owned, "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "PassNodeRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": node_role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        {"Sid": "ReadInstanceProfile", "Effect": "Allow", "Action": "iam:GetInstanceProfile",
         "Resource": instance_profile_arn},
        {"Sid": "Interruptions", "Effect": "Allow",
         "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"], "Resource": queue_arn},
        {"Sid": "Cluster", "Effect": "Allow", "Action": "eks:DescribeCluster", "Resource": cluster_arn},
        {"Sid": "AmiParameters", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": f"arn:aws:ssm:{region}::parameter/aws/service/*"},
        {"Sid": "Pricing", "Effect": "Allow", "Action": "pricing:GetProducts", "Resource": "*"},
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})

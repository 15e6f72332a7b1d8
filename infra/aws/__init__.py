"""The AWS program: EKS with Karpenter, ECR, S3, and the runner platform on top.

`program()` reads the stack config (`aws:region`, `runner:*`; see infra/aws/README.md) into
`AwsClusterArgs`, builds one `AwsCluster` component, puts `infra.common.RunnerPlatform` on its
Kubernetes provider and exports the contract of `runner._stack`. Pods reach AWS through EKS Pod
Identity (associations, not service-account annotations), so the platform's service account
carries no annotation; the NVIDIA device plugin is installed because EKS does not provide one.
"""

from __future__ import annotations

from infra.common import PlatformArgs, RunnerPlatform, export_cluster
from infra.common.manifests import GPU_NODE_LABEL_KEYS

from .cluster import AwsCluster
from .config import AwsClusterArgs, from_config
from .karpenter import GPU_LABEL

__all__ = ["AwsCluster", "AwsClusterArgs", "from_config", "program"]


def program() -> None:
    """Build the AWS stack from config and export the runner's stack outputs."""
    args = from_config()
    platform_args = PlatformArgs(install_device_plugin=True, gpu_node_label_keys=(GPU_LABEL, *GPU_NODE_LABEL_KEYS),
                                 queue_storage_class="gp3",
                                 # The in-tree controller makes a Network Load Balancer, known by a host
                                 # name only: the web domain is config runner:webDomain (a wildcard
                                 # CNAME to web_endpoint), as sslip.io maps IPs, not names.
                                 web_service_annotations={"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"})
    cluster = AwsCluster("runner", args, runner_namespace=platform_args.namespace,
                         runner_service_account=platform_args.service_account)
    platform = RunnerPlatform("runner", platform_args, cluster.provider)
    export_cluster("aws", cluster, platform)

"""IAM policy documents of the AWS program, as pure functions returning JSON strings.

Pods get AWS credentials through EKS Pod Identity, not IRSA: an association names (namespace,
service account) -> role, the role trusts one service principal (`pods.eks.amazonaws.com`), and
there is no per-cluster OIDC provider, thumbprint or service-account annotation to keep in step.
That serves Karpenter's controller, the EBS CSI driver and the runner's own pods alike.
"""

from __future__ import annotations

import json

__all__ = ["POD_IDENTITY", "assume_role", "runner_policy"]

POD_IDENTITY = "pods.eks.amazonaws.com"


def assume_role(service: str) -> str:
    """The trust policy letting AWS service `service` assume the role (Pod Identity also tags the session)."""
    actions = ["sts:AssumeRole", "sts:TagSession"] if service == POD_IDENTITY else "sts:AssumeRole"
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": actions}]})


def runner_policy(bucket_arn: str, repository_arn: str) -> str:
    """What runner pods may do: read and write objects of the Volumes bucket, push and pull images
    of the one ECR repository. `ecr:GetAuthorizationToken` cannot be scoped to a repository (it
    returns a registry login); every other statement names the bucket or the repository."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "ListVolumesBucket", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": bucket_arn},
        {"Sid": "VolumesObjects", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts"],
         "Resource": f"{bucket_arn}/*"},
        {"Sid": "RegistryLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {"Sid": "Images", "Effect": "Allow",
         "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                    "ecr:DescribeImages", "ecr:ListImages", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                    "ecr:CompleteLayerUpload", "ecr:PutImage"],
         "Resource": repository_arn},
    ]})

"""The AWS program (infra/aws) under Pulumi mocks: EKS + Karpenter, ECR, S3, Pod Identity, the contract.

The Karpenter EC2NodeClass and NodePools are validated against Karpenter's own CRD schemas
(vendored in tests/schemas/karpenter/, see their headers) with `jsonschema`, strictly (an unknown
field fails, where the API server would silently prune it), and against the CRDs'
x-kubernetes-validations: there is no CEL evaluator here, so each rule the rendered objects reach
is checked by a Python predicate keyed on the rule's message, transition rules (`oldSelf`) are
skipped because they only apply to updates, and a rule without a predicate fails the test.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pulumi
import pytest
import yaml
from infra_harness import ROOT, assert_golden, run, sdk_argument_problems, sdk_problems, validate_manifest

from runner._stack import OUTPUT_KEYS, load_outputs

ACCOUNT, REGION = "123456789012", "us-east-1"
CLUSTER = "runner-test"  # the default cluster name: runner-<stack>, and the harness' stack is "test"
SCHEMAS = ROOT / "tests" / "schemas" / "karpenter"

NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
NODECLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
RELEASE = "kubernetes:helm.sh/v3:Release"
COMPONENT = "runner:aws:AwsCluster"
ROLE = "aws:iam/role:Role"
ASSOCIATION = "aws:eks/podIdentityAssociation:PodIdentityAssociation"

HOOKS = {
    "aws:eks/cluster:Cluster": lambda r: {
        "arn": f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/{r.inputs['name']}",
        "endpoint": "https://ABCDEF.gr7.us-east-1.eks.amazonaws.com",
        "certificateAuthority": {"data": "Q0EtREFUQQ=="},
        "vpcConfig": {**r.inputs["vpcConfig"], "clusterSecurityGroupId": "sg-0cluster"}},
    ROLE: lambda r: {"arn": f"arn:aws:iam::{ACCOUNT}:role/{r.name}", "name": r.name},
    "aws:iam/instanceProfile:InstanceProfile": lambda r: {
        "arn": f"arn:aws:iam::{ACCOUNT}:instance-profile/{r.name}", "name": r.name},
    "aws:sqs/queue:Queue": lambda r: {"arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{r.inputs['name']}",
                                      "url": f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{r.inputs['name']}"},
    "aws:ecr/repository:Repository": lambda r: {
        "arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{r.inputs['name']}",
        "repositoryUrl": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{r.inputs['name']}"},
    "aws:s3/bucket:Bucket": lambda r: {"bucket": r.inputs["bucketPrefix"] + "0abc",
                                       "arn": f"arn:aws:s3:::{r.inputs['bucketPrefix']}0abc"},
    "aws:cloudwatch/eventRule:EventRule": lambda r: {"name": r.name, "arn": f"arn:aws:events:::rule/{r.name}"},
}
ZONES = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
CALLS = {"aws:index/getAvailabilityZones:getAvailabilityZones":
         lambda a: {"id": REGION, "names": ZONES, "zoneIds": [f"use1-az{i}" for i in range(4)]}}


def _program():
    import infra.aws

    return infra.aws.program


def run_aws(**config: Any):
    values = {"runner:cloud": "aws", "aws:region": REGION, **{f"runner:{k}": v for k, v in config.items()}}
    return run(_program(), config=values, secret_config={"runner:queuePassword": "pw"}, hooks=HOOKS, calls=CALLS)


@pytest.fixture(scope="module")
def stack():
    """The program with its defaults, run once for the read-only checks below."""
    return run_aws()


# --- Karpenter CRD schemas and their CEL rules ------------------------------------------------------


def _crd_schema(filename: str) -> dict[str, Any]:
    text = (SCHEMAS / filename).read_text()
    crd = yaml.safe_load(text[text.index("---\n"):])
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists properties (strict like validate_manifest)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


CRDS = {"NodePool": "karpenter.sh_nodepools.yaml", "EC2NodeClass": "karpenter.k8s.aws_ec2nodeclasses.yaml"}


def _domain(key: str) -> str:
    return re.match(r"^([^/]+)", key).group(1)


def _listed(rule: str) -> list[str]:
    """The first ["..."] list in a CEL rule (the allowed label keys)."""
    found = re.search(r"\[([^\]]*)\]", rule)
    return re.findall(r'"([^"]+)"', found.group(1)) if found else []


def _label_rule(message: str, rule: str):
    """A predicate on one label key for Karpenter's label-restriction rules."""
    allowed = _listed(rule)
    if message == 'label domain "kubernetes.io" is restricted':
        return lambda k: k in allowed or _domain(k).endswith("node.kubernetes.io") or _domain(k).endswith(
            "node-restriction.kubernetes.io") or not _domain(k).endswith("kubernetes.io")
    if message == 'label domain "k8s.io" is restricted':
        return lambda k: _domain(k).endswith("kops.k8s.io") or not _domain(k).endswith("k8s.io")
    m = re.fullmatch(r'label domain "([^"]+)" is restricted', message)
    if m:
        return lambda k: k in allowed or not _domain(k).endswith(m.group(1))
    m = re.fullmatch(r'label "([^"]+)" is restricted', message)
    if m:
        return lambda k: k != m.group(1)
    return None


def _terms_rule(message: str):
    """Predicates on a list of selector terms (subnets, security groups, AMIs)."""
    m = re.fullmatch(r"expected at least one, got none, \[(.*)\]", message)
    if m:
        fields = re.findall(r"'(\w+)'", m.group(1))
        return lambda terms: all(any(f in t for f in fields) for t in terms)
    if message.endswith("cannot be empty") and "SelectorTerms" in message:
        return lambda terms: len(terms) != 0
    others = {"subnetSelectorTerms": {"id": ["tags"]},
              "securityGroupSelectorTerms": {"id": ["tags", "name"], "name": ["tags", "id"]}}
    m = re.fullmatch(r"'(\w+)' is mutually exclusive, cannot be set with a combination of other fields in (\w+)",
                     message)
    if m and m.group(2) in others:  # as the rules are written: !self.all(x, has(x.F) && (has(x.G) || ...))
        field, rest = m.group(1), others[m.group(2)][m.group(1)]
        return lambda terms: not all(field in t and any(o in t for o in rest) for t in terms)
    if m and m.group(2) == "amiSelectorTerms":  # !self.exists(x, has(x.F) && (has(any other)))
        rest = {"id": ["alias", "tags", "name", "owner"], "alias": ["id", "tags", "name", "owner"]}[m.group(1)]
        return lambda terms: not any(m.group(1) in t and any(o in t for o in rest) for t in terms)
    if message == "'alias' is mutually exclusive, cannot be set with a combination of other amiSelectorTerms":
        return lambda terms: not (any("alias" in t for t in terms) and len(terms) != 1)
    return None


def _ami_family_rule(message: str):
    m = re.fullmatch(r"if set, amiFamily must be '(\w+)' or 'Custom' when using an? \w+ alias", message)
    if not m:
        return None
    family = m.group(1)

    def check(spec: dict) -> bool:
        aliased = any(t.get("alias", "").split("@")[0] == family.lower() for t in spec["amiSelectorTerms"])
        return "amiFamily" not in spec or not aliased or spec["amiFamily"] in ("Custom", family)

    return check


_RESTRICTED_TAG = re.compile(r"tag contains a restricted tag matching (\S+)")
# Rules keyed by message whose predicate is not derived from the message's pattern.
_FIXED = {
    "requirements with operator 'In' must have a value defined":
        lambda reqs: all(r["operator"] != "In" or len(r.get("values", [])) != 0 for r in reqs),
    "requirements operator 'Gt' or 'Lt' must have a single positive integer value":
        lambda reqs: all(r["operator"] not in ("Gt", "Lt") or (len(r.get("values", [])) == 1
                                                            and int(r["values"][0]) >= 0) for r in reqs),
    "requirements with 'minValues' must have at least that many values specified in the 'values' field":
        lambda reqs: all(not (r["operator"] == "In" and "minValues" in r) or len(r["values"]) >= r["minValues"]
                         for r in reqs),
    "group may not be empty": lambda v: v != "",
    "kind may not be empty": lambda v: v != "",
    "name may not be empty": lambda v: v != "",
    "instanceProfile cannot be empty": lambda v: v != "",
    "role cannot be empty": lambda v: v != "",
    "empty tag keys or values aren't supported": lambda tags: all(k != "" and v != "" for k, v in tags.items()),
    "empty tag keys aren't supported": lambda tags: all(k != "" for k in tags),
    "'alias' is improperly formatted, must match the format 'family@version'":
        lambda v: re.match(r"^[a-zA-Z0-9]*@.*$", v) is not None,
    "family is not supported, must be one of the following: 'al2', 'al2023', 'bottlerocket', 'windows2019', "
    "'windows2022'": lambda v: v.split("@")[0] in ("al2", "al2023", "bottlerocket", "windows2019", "windows2022"),
    "must specify exactly one of ['role', 'instanceProfile']": lambda s: ("role" in s) != ("instanceProfile" in s),
    "must specify amiFamily if amiSelectorTerms does not contain an alias":
        lambda s: any("alias" in t for t in s["amiSelectorTerms"]) or "amiFamily" in s,
    "must have only one blockDeviceMappings with rootVolume":
        lambda bdms: sum(1 for b in bdms if b.get("rootVolume") is True) <= 1,
    "snapshotID or volumeSize must be defined": lambda ebs: "snapshotID" in ebs or "volumeSize" in ebs,
}


def _predicate(message: str, rule: str):
    if message in _FIXED:
        return _FIXED[message]
    label = _label_rule(message, rule)
    if label is not None:  # on a labels map (self.all over keys) or on one requirement key (self)
        return lambda v: all(label(k) for k in v) if isinstance(v, dict) else label(v)
    m = _RESTRICTED_TAG.fullmatch(message)
    if m:
        prefix = m.group(1).rstrip("/")
        return lambda tags: all(not k.startswith(prefix) if prefix.endswith("cluster") else k != prefix
                                for k in tags)
    return _terms_rule(message) or _ami_family_rule(message)


def _cel(schema: dict, value: Any, path: str, problems: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: evaluated on updates only
        check = _predicate(rule["message"], rule["rule"])
        if check is None:
            problems.append(f"{path}: no Python check for CEL rule {rule['message']!r}")
        elif not check(value):
            problems.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else None)
            if sub:
                _cel(sub, item, f"{path}.{key}", problems)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _cel(schema["items"], item, f"{path}[{i}]", problems)


def validate_karpenter(manifest: dict[str, Any]) -> None:
    """AssertionError naming the object, the path and the schema's or rule's complaint."""
    import jsonschema

    schema = _crd_schema(CRDS[manifest["kind"]])
    name = manifest["metadata"]["name"]
    errors = sorted(jsonschema.Draft7Validator(_strict(schema)).iter_errors(manifest), key=str)
    if errors:
        e = errors[0]
        raise AssertionError(f"{manifest['kind']} {name}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
    problems: list[str] = []
    _cel(schema, manifest, manifest["kind"], problems)
    assert not problems, f"{manifest['kind']} {name}: " + "; ".join(problems)


def test_vendored_crds_are_upstream_files_with_provenance():
    # The bodies are the upstream files, character for character as read (their sizes there).
    for filename, size in (("karpenter.sh_nodepools.yaml", 33558), ("karpenter.k8s.aws_ec2nodeclasses.yaml", 76389)):
        text = (SCHEMAS / filename).read_text()
        header, body = text[:text.index("---\n")], text[text.index("---\n"):]
        assert "github.com/aws/karpenter-provider-aws" in header and f"pkg/apis/crds/{filename}" in header
        assert "Apache License 2.0" in header and re.search(r"commit [0-9a-f]{40}", header)
        assert len(body) == size, filename


def test_karpenter_objects_validate_against_the_crds(stack):
    objects = [m for m in stack.k8s_manifests() if m["kind"] in CRDS]
    assert sorted(m["metadata"]["name"] for m in objects) == ["cpu", "gpu-g5", "gpu-g6", "gpu-p5", "runner"]
    for manifest in objects:
        validate_karpenter(manifest)


def _pool(stack, name: str) -> dict[str, Any]:
    return next(m for m in stack.k8s_manifests() if m["kind"] == "NodePool" and m["metadata"]["name"] == name)


@pytest.mark.parametrize("change,complaint", [
    (lambda m: m["spec"].update(replicas=2), "Additional properties are not allowed"),
    (lambda m: m["spec"]["template"]["spec"]["requirements"][2].update(values=[]),
     "requirements with operator 'In' must have a value defined"),
    (lambda m: m["spec"]["template"]["metadata"]["labels"].update({"karpenter.sh/gpu": "yes"}),
     'label domain "karpenter.sh" is restricted'),
    (lambda m: m["spec"]["template"]["spec"]["requirements"].append({"key": "kubernetes.io/hostname",
                                                                      "operator": "Exists"}),
     'label "kubernetes.io/hostname" is restricted'),
    (lambda m: m["spec"]["disruption"].update(consolidationPolicy="Never"), "is not one of"),
    (lambda m: m["spec"]["template"]["spec"]["taints"][0].update(effect="NoPlease"), "is not one of"),
])
def test_the_crd_check_rejects_broken_node_pools(stack, change, complaint):
    broken = copy.deepcopy(_pool(stack, "gpu-p5"))
    change(broken)
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        validate_karpenter(broken)


@pytest.mark.parametrize("change,complaint", [
    (lambda s: s.update(role="KarpenterNodeRole"), "must specify exactly one of ['role', 'instanceProfile']"),
    (lambda s: s["amiSelectorTerms"].append({"id": "ami-123"}), "'alias' is mutually exclusive"),
    (lambda s: s["amiSelectorTerms"][0].update(alias="ubuntu@latest"), "family is not supported"),
    (lambda s: s.update(amiFamily="Bottlerocket"), "amiFamily must be 'AL2023' or 'Custom'"),
    (lambda s: s["tags"].update({"karpenter.sh/nodepool": "x"}), "restricted tag matching karpenter.sh/nodepool"),
    (lambda s: s.update(subnetSelectorTerms=[]), "subnetSelectorTerms cannot be empty"),
])
def test_the_crd_check_rejects_broken_node_classes(stack, change, complaint):
    broken = copy.deepcopy(stack.one(NODECLASS).inputs)
    change(broken["spec"])
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        validate_karpenter(broken)


# --- what the program declares ---------------------------------------------------------------------


def test_contract_outputs_exist_and_kubeconfig_is_secret(stack):
    assert set(stack.exports) == set(OUTPUT_KEYS)
    assert stack.is_secret("kubeconfig") and not stack.is_secret("bucket_url")
    outputs = load_outputs(stack.exports)  # what the runner reads back
    assert outputs.cloud == "aws" and outputs.pod_labels == {}
    assert outputs.registry_url == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{CLUSTER}/images"
    assert outputs.bucket_url == f"s3://{CLUSTER}-volumes-0abc"
    assert (outputs.namespace, outputs.service_account, outputs.queue_secret_name) == ("runner", "runner",
                                                                                        "runner-queue-auth")
    assert outputs.queue_endpoint == "redis://runner-queue.runner.svc.cluster.local:6379/0"


def test_kubeconfig_authenticates_with_aws_eks_get_token(stack):
    config = yaml.safe_load(stack.exports["kubeconfig"])
    [cluster] = config["clusters"]
    assert cluster["cluster"] == {"server": "https://ABCDEF.gr7.us-east-1.eks.amazonaws.com",
                                  "certificate-authority-data": "Q0EtREFUQQ=="}
    [user] = config["users"]
    exec_ = user["user"]["exec"]
    assert exec_["command"] == "aws" and exec_["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    assert exec_["args"] == ["eks", "get-token", "--cluster-name", CLUSTER, "--region", REGION, "--output", "json"]
    assert config["current-context"] == CLUSTER
    for provider in stack.of_type("pulumi:providers:kubernetes"):
        assert provider.is_secret("kubeconfig") and provider.inputs["kubeconfig"] == stack.exports["kubeconfig"]


def test_gpu_capacity_is_karpenter_from_zero_on_spot_with_taints(stack):
    # No fixed GPU node group: the one managed group is the on-demand system group.
    [group] = stack.of_type("aws:eks/nodeGroup:NodeGroup")
    assert group.inputs["capacityType"] == "ON_DEMAND" and group.inputs["instanceTypes"] == ["m6i.large"]
    assert group.inputs["scalingConfig"] == {"minSize": 2, "desiredSize": 2, "maxSize": 3}
    gpu_types = stack.exports["gpu_types"]
    assert set(gpu_types) == {"H100", "A10G", "L4"}
    for family, gpu, label in (("p5", "H100", "h100"), ("g5", "A10G", "a10g"), ("g6", "L4", "l4")):
        spec = _pool(stack, f"gpu-{family}")["spec"]
        requirements = {r["key"]: r for r in spec["template"]["spec"]["requirements"]}
        assert requirements["karpenter.sh/capacity-type"]["values"] == ["spot", "on-demand"]
        assert requirements["karpenter.k8s.aws/instance-family"]["values"] == [family]
        assert spec["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present",
                                                       "effect": "NoSchedule"}]
        assert spec["limits"] == {"nvidia.com/gpu": "8", "cpu": "192", "memory": "2048Gi"}
        # Scale back to zero: an empty GPU node goes after a minute; busy ones are never consolidated.
        assert spec["disruption"] == {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "60s"}
        # The contract's placement lands on this pool and only there, and tolerates its taint.
        selector = gpu_types[gpu]["node_selector"]
        assert selector == {"karpenter.k8s.aws/instance-gpu-name": label}
        assert requirements["karpenter.k8s.aws/instance-gpu-name"]["values"] == [label]
        [toleration] = gpu_types[gpu]["tolerations"]
        assert toleration["key"] == "nvidia.com/gpu" and toleration["effect"] == "NoSchedule"
        assert toleration["operator"] == "Exists"
    cpu = _pool(stack, "cpu")["spec"]
    assert cpu["limits"] == {"cpu": "64", "memory": "256Gi"} and "taints" not in cpu["template"]["spec"]
    assert cpu["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"
    assert {r["key"]: r["values"] for r in cpu["template"]["spec"]["requirements"]}[
        "karpenter.k8s.aws/instance-category"] == ["c", "m", "r"]


def test_interruption_queue_is_wired_to_karpenter(stack):
    queue = stack.one("aws:sqs/queue:Queue")
    assert queue.inputs["name"] == CLUSTER and queue.inputs["sqsManagedSseEnabled"] is True
    queue_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{CLUSTER}"
    release = next(r for r in stack.of_type(RELEASE) if r.inputs["name"] == "karpenter")
    assert release.inputs["chart"] == "oci://public.ecr.aws/karpenter/karpenter"
    assert re.fullmatch(r"1\.1\.\d+", release.inputs["version"]) and release.inputs["namespace"] == "kube-system"
    assert release.inputs["values"]["settings"] == {"clusterName": CLUSTER, "interruptionQueue": CLUSTER}
    patterns = sorted(json.loads(r.inputs["eventPattern"])["detail-type"][0]
                      for r in stack.of_type("aws:cloudwatch/eventRule:EventRule"))
    assert patterns == ["AWS Health Event", "EC2 Instance Rebalance Recommendation",
                        "EC2 Instance State-change Notification", "EC2 Spot Instance Interruption Warning"]
    targets = stack.of_type("aws:cloudwatch/eventTarget:EventTarget")
    assert len(targets) == 4 and {t.inputs["arn"] for t in targets} == {queue_arn}
    rules = {r.name for r in stack.of_type("aws:cloudwatch/eventRule:EventRule")}
    assert {t.inputs["rule"] for t in targets} == rules
    policy = json.loads(stack.one("aws:sqs/queuePolicy:QueuePolicy").inputs["policy"])
    allow = next(s for s in policy["Statement"] if s["Effect"] == "Allow")
    assert "events.amazonaws.com" in allow["Principal"]["Service"] and allow["Resource"] == queue_arn
    assert allow["Action"] == "sqs:SendMessage"


def _role(stack, logical: str) -> Any:
    return stack.one(ROLE, f"runner-{logical}")


def _inline_policy(stack, logical: str) -> dict[str, Any]:
    return json.loads(stack.one("aws:iam/rolePolicy:RolePolicy", f"runner-{logical}").inputs["policy"])


def test_karpenter_identity_and_node_role(stack):
    node_role = _role(stack, "karpenter-node")
    attached = {a.inputs["policyArn"] for a in stack.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                if a.inputs["role"] == node_role.name}
    assert {p.rsplit("/", 1)[1] for p in attached} == {"AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy",
                                                       "AmazonEC2ContainerRegistryReadOnly",
                                                       "AmazonSSMManagedInstanceCore"}
    profile = stack.one("aws:iam/instanceProfile:InstanceProfile")
    assert profile.inputs["role"] == node_role.name
    access = stack.one("aws:eks/accessEntry:AccessEntry")
    assert access.inputs == {**access.inputs, "type": "EC2_LINUX", "clusterName": CLUSTER,
                             "principalArn": f"arn:aws:iam::{ACCOUNT}:role/{node_role.name}"}
    node_class = stack.one(NODECLASS).inputs["spec"]
    assert node_class["instanceProfile"] == profile.name
    assert node_class["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": CLUSTER}}]
    assert node_class["securityGroupSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": CLUSTER}}]
    assert node_class["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
    assert node_class["metadataOptions"]["httpPutResponseHopLimit"] == 1
    # The controller: Pod Identity for kube-system/karpenter, passes only the node role.
    controller = _role(stack, "karpenter-controller")
    assert json.loads(controller.inputs["assumeRolePolicy"])["Statement"][0]["Principal"] == {
        "Service": "pods.eks.amazonaws.com"}
    assoc = next(a for a in stack.of_type(ASSOCIATION) if a.inputs["serviceAccount"] == "karpenter")
    assert assoc.inputs["namespace"] == "kube-system" and assoc.inputs["roleArn"].endswith(controller.name)
    statements = {s["Sid"]: s for s in _inline_policy(stack, "karpenter-controller")["Statement"]}
    assert statements["PassNodeRole"]["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/{node_role.name}"
    assert statements["Interruptions"]["Resource"] == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{CLUSTER}"
    assert statements["DeleteOwned"]["Condition"]["StringEquals"] == {
        f"aws:ResourceTag/kubernetes.io/cluster/{CLUSTER}": "owned"}
    assert not [s for s in statements.values() if any(a.startswith("iam:Create") for a in _actions(s))]


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


def test_runner_pods_reach_only_their_bucket_and_repository(stack):
    role = _role(stack, "runner")
    assoc = next(a for a in stack.of_type(ASSOCIATION) if a.inputs["serviceAccount"] == "runner")
    assert assoc.inputs["namespace"] == "runner" and assoc.inputs["roleArn"].endswith(role.name)
    bucket_arn = f"arn:aws:s3:::{CLUSTER}-volumes-0abc"
    repo_arn = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{CLUSTER}/images"
    for statement in _inline_policy(stack, "runner")["Statement"]:
        assert statement["Effect"] == "Allow"
        if _actions(statement) == ["ecr:GetAuthorizationToken"]:
            assert statement["Resource"] == "*"  # cannot be scoped; a login, not an image
        else:
            assert statement["Resource"] in (bucket_arn, f"{bucket_arn}/*", repo_arn), statement
            assert not [a for a in _actions(statement) if "*" in a]
    # Pod Identity needs no annotation; nothing cluster-wide is granted to the runner.
    account = stack.one("kubernetes:core/v1:ServiceAccount").inputs["metadata"]
    assert "annotations" not in account
    assert not [m for m in stack.k8s_manifests() if m["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_bucket_is_private_versioned_encrypted(stack):
    bucket = stack.one("aws:s3/bucket:Bucket")
    assert "acl" not in bucket.inputs and "policy" not in bucket.inputs
    block = stack.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                          "restrictPublicBuckets"))
    assert stack.one("aws:s3/bucketVersioning:BucketVersioning").inputs["versioningConfiguration"] == {
        "status": "Enabled"}
    [rule] = stack.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
                       ).inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    assert stack.one("aws:s3/bucketOwnershipControls:BucketOwnershipControls").inputs["rule"] == {
        "objectOwnership": "BucketOwnerEnforced"}
    for part in ("bucketPublicAccessBlock:BucketPublicAccessBlock", "bucketVersioning:BucketVersioning"):
        assert stack.one(f"aws:s3/{part}").inputs["bucket"] == bucket.name + "_id"
    assert not stack.of_type("aws:s3/bucketPolicy:BucketPolicy") and not stack.of_type("aws:s3/bucketAcl:BucketAcl")


def test_registry_is_private_and_scanned(stack):
    repo = stack.one("aws:ecr/repository:Repository").inputs
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True} and repo["imageTagMutability"] == "MUTABLE"
    assert not stack.of_type("aws:ecr/repositoryPolicy:RepositoryPolicy")
    assert not [r for r in stack.resources if r.type.startswith("aws:ecrpublic")]


def test_network_and_cluster(stack):
    subnets = stack.of_type("aws:ec2/subnet:Subnet")
    private = [s for s in subnets if "kubernetes.io/role/internal-elb" in s.inputs["tags"]]
    public = [s for s in subnets if "kubernetes.io/role/elb" in s.inputs["tags"]]
    assert len(private) == len(public) == 3
    assert sorted(s.inputs["availabilityZone"] for s in private) == ZONES[:3]
    for s in private:
        assert s.inputs["tags"]["karpenter.sh/discovery"] == CLUSTER and not s.inputs.get("mapPublicIpOnLaunch")
    cidrs = [s.inputs["cidrBlock"] for s in subnets]
    assert len(set(cidrs)) == 6 and sorted(cidrs)[0] == "10.0.0.0/18"
    [nat] = stack.of_type("aws:ec2/natGateway:NatGateway")
    routes = {r.name: r.inputs["routes"] for r in stack.of_type("aws:ec2/routeTable:RouteTable")}
    assert routes["runner-private"] == [{"cidrBlock": "0.0.0.0/0", "natGatewayId": f"{nat.name}_id"}]
    assert stack.one("aws:ec2/tag:Tag").inputs == {**stack.one("aws:ec2/tag:Tag").inputs, "resourceId": "sg-0cluster",
                                                  "key": "karpenter.sh/discovery", "value": CLUSTER}
    eks = stack.one("aws:eks/cluster:Cluster").inputs
    assert eks["accessConfig"] == {"authenticationMode": "API", "bootstrapClusterCreatorAdminPermissions": True}
    assert eks["version"] == "1.31" and eks["upgradePolicy"] == {"supportType": "STANDARD"}
    assert sorted(eks["vpcConfig"]["subnetIds"]) == sorted(f"{s.name}_id" for s in private)
    addons = {a.inputs["addonName"] for a in stack.of_type("aws:eks/addon:Addon")}
    assert addons == {"eks-pod-identity-agent", "aws-ebs-csi-driver"}


def test_kubernetes_manifests_validate_and_match_golden(stack):
    manifests = stack.k8s_manifests()
    builtin = [m for m in manifests if m["kind"] not in CRDS]
    assert {m["kind"] for m in builtin} == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret", "Service",
                                            "StatefulSet", "NetworkPolicy", "DaemonSet", "StorageClass"}
    for manifest in builtin:
        validate_manifest(manifest)
    # The queue's volume is on the gp3 class this program makes; the device plugin covers Karpenter's GPU label.
    sts = next(m for m in builtin if m["kind"] == "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "gp3"
    plugin = next(m for m in builtin if m["kind"] == "DaemonSet")
    terms = plugin["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "karpenter.k8s.aws/instance-gpu-name", "operator": "Exists"} in [t["matchExpressions"][0]
                                                                                   for t in terms]
    keda = next(r for r in stack.of_type(RELEASE) if r.inputs["name"] == "keda")
    assert keda.inputs["namespace"] == "keda"
    assert_golden("aws-platform", builtin)
    assert_golden("aws-karpenter", [m for m in manifests if m["kind"] in CRDS])
    karpenter = next(r for r in stack.of_type(RELEASE) if r.inputs["name"] == "karpenter")
    assert_golden("aws-karpenter-release", karpenter.inputs)


def test_children_are_parented_to_the_component(stack):
    component = stack.one(COMPONENT)
    assert component.parent_type == "pulumi:pulumi:Stack"
    platform = stack.one("runner:platform:RunnerPlatform")
    for r in stack.resources:
        if r is component or r is platform:
            continue
        assert r.parent in (component.urn, platform.urn), (r.type, r.name, r.parent_type)
    providers = {p.name: f"{p.urn}::{p.name}_id" for p in stack.of_type("pulumi:providers:kubernetes")}
    for r in stack.resources:
        if r.type.startswith("kubernetes:") and r.parent == component.urn:
            expected = providers["runner-k8s-bootstrap"] if r.type.endswith("StorageClass") else providers["runner-k8s"]
            assert r.provider == expected, r.name
    aws_children = [r for r in stack.children_of(component) if r.type.startswith("aws:")]
    assert len(aws_children) > 50


def test_every_argument_exists_in_the_installed_sdk(stack):
    aws = pytest.importorskip("pulumi_aws")
    problems = sdk_problems(stack, aws)
    assert not problems, "\n".join(problems)
    versioning = stack.one("aws:s3/bucketVersioning:BucketVersioning").inputs  # an `InitArgs` class
    assert sdk_argument_problems({**versioning, "versioningConfig": {}}, aws.s3.BucketVersioningInitArgs, "v") == [
        "v.versioningConfig is not an argument of BucketVersioningInitArgs"]


# --- config ----------------------------------------------------------------------------------------


def test_config_changes_what_is_built():
    recorded = run_aws(spot=False, gpuFamilies=["g6e"], gpuLimit=2, azCount=2, clusterName="ml",
                       systemMinNodes=1, immutableTags=True)
    pools = {m["metadata"]["name"]: m for m in recorded.k8s_manifests() if m["kind"] == "NodePool"}
    assert set(pools) == {"cpu", "gpu-g6e"}
    for pool in pools.values():
        capacity = next(r for r in pool["spec"]["template"]["spec"]["requirements"]
                        if r["key"] == "karpenter.sh/capacity-type")
        assert capacity["values"] == ["on-demand"]
        validate_karpenter(pool)
    assert pools["gpu-g6e"]["spec"]["limits"]["nvidia.com/gpu"] == "2"
    assert recorded.exports["gpu_types"] == {"L40S": {
        "node_selector": {"karpenter.k8s.aws/instance-gpu-name": "l40s"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}
    assert len(recorded.of_type("aws:ec2/subnet:Subnet")) == 4
    assert recorded.one("aws:eks/cluster:Cluster").inputs["name"] == "ml"
    karpenter = next(r for r in recorded.of_type(RELEASE) if r.inputs["name"] == "karpenter")
    assert karpenter.inputs["values"]["replicas"] == 1
    assert recorded.one("aws:ecr/repository:Repository").inputs["imageTagMutability"] == "IMMUTABLE"


def test_no_gpu_families_means_no_gpu_pools():
    recorded = run_aws(gpuFamilies=[])
    assert [m["metadata"]["name"] for m in recorded.k8s_manifests() if m["kind"] == "NodePool"] == ["cpu"]
    assert recorded.exports["gpu_types"] == {}


@pytest.mark.parametrize("config,expect", [
    ({"aws:region": None}, "stack config aws:region is not set; `pulumi config set aws:region us-east-1`"),
    ({"runner:gpuFamilies": ["p3"]}, "stack config runner:gpuFamilies is ['p3']; use a JSON list of distinct"),
    ({"runner:azCount": 5}, "stack config runner:azCount is 5; use 2 or 3"),
    ({"runner:spot": "maybe"}, "stack config runner:spot is not a valid bool ('maybe')"),
    ({"runner:consolidateAfter": "soon"}, "stack config runner:consolidateAfter is 'soon'; use a duration"),
    ({"runner:vpcCidr": "10.0.0.0/24"}, "stack config runner:vpcCidr is '10.0.0.0/24'; use an IPv4 block"),
    ({"runner:amiAlias": "ubuntu@latest"}, "stack config runner:amiAlias is 'ubuntu@latest'"),
    ({"runner:systemMinNodes": 4}, "stack config runner:systemMinNodes is 4 (systemMaxNodes 3)"),
])
def test_bad_config_is_one_clear_line(config, expect):
    values = {"runner:cloud": "aws", "aws:region": REGION, **config}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(pulumi.RunError) as e:
        run(_program(), config=values, hooks=HOOKS, calls=CALLS)
    assert str(e.value).startswith(expect) and "\n" not in str(e.value)


def test_defaults_are_documented_in_the_readme():
    from infra.aws import AwsClusterArgs

    readme = (ROOT / "infra" / "aws" / "README.md").read_text()
    defaults = AwsClusterArgs(region=REGION)
    for key, value in (("runner:gpuFamilies", '["p5", "g5", "g6"]'), ("runner:gpuLimit", defaults.gpu_limit),
                       ("runner:cpuLimit", defaults.cpu_limit), ("runner:spot", "true"),
                       ("runner:systemInstanceType", defaults.system_instance_type),
                       ("runner:consolidateAfter", defaults.consolidate_after)):
        assert re.search(rf"`{re.escape(key)}`\s*\|[^|]*`{re.escape(str(value))}`", readme), key


def test_main_entry_runs_the_aws_program():
    import infra.__main__

    recorded = run(infra.__main__.main, config={"runner:cloud": "aws", "aws:region": REGION},
                   secret_config={"runner:queuePassword": "pw"}, hooks=HOOKS, calls=CALLS)
    assert recorded.exports["cloud"] == "aws" and recorded.one(COMPONENT)

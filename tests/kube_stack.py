"""A whole stack on loopback for the kubernetes provider: the API stand-in (tests/kube_standin), a
real redis-server as the stack's queue (a unix socket with a password, which pods reach at the
queue Service's cluster DNS name through the stand-in's loopback services), the Role of
infra.common.manifests.RUNNER_RULES enforced on the kubeconfig's user, Debian's registry on
127.0.0.1 as the stack's registry, a directory as its bucket, and the stack outputs file that
ties them together, exactly as `pulumi stack output --json --show-secrets` would print them.

    with KubeStack(tmp_path) as stack:          # or the `kube_stack` fixture (tests/conftest.py)
        subprocess.run(["runner", "run", "app.py"], env={**os.environ, **stack.env})

`stack.env` selects the provider (RUNNER_PROVIDER=kubernetes), names the outputs file
(RUNNER_STACK_OUTPUTS) and says where this machine reaches the queue (RUNNER_QUEUE_ADDRESS: the
socket itself; on a real cluster the provider port-forwards to the queue's pod instead).

`python tests/kube_stack.py` brings one up and prints that env, for trying the provider by hand.
"""

from __future__ import annotations

import base64
import contextlib
import json
import pathlib
import secrets
import shutil
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE, HERE.parent):  # tests/ for the fixtures, the checkout for infra.common
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from helpers import redis_on_socket, serve_registry  # noqa: E402
from kube_standin import KubeStandin  # noqa: E402

QUEUE_SERVICE = "runner-queue"
QUEUE_SECRET = "runner-queue"
NAMESPACE = "runner"
WEB_DOMAIN = "web.runner.test"  # RFC 2606's .test: never resolves, so a test cannot reach outside by it


class KubeStack:
    def __init__(self, root: pathlib.Path | None = None, max_containers: int = 4):
        self._own_root = root is None
        self.root = pathlib.Path(root or tempfile.mkdtemp(prefix="kstack-", dir="/tmp"))
        self.max_containers = max_containers
        self._stack = contextlib.ExitStack()
        self.env: dict[str, str] = {}

    def __enter__(self) -> KubeStack:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        self.password = secrets.token_hex(16)
        self.socket, _ = self._stack.enter_context(redis_on_socket("kq-", password=self.password))
        registry_root = self.root / "registry"
        registry_root.mkdir(parents=True, exist_ok=True)
        self.registry = self._stack.enter_context(serve_registry(registry_root))
        self.bucket = self.root / "bucket"
        self.bucket.mkdir(parents=True, exist_ok=True)
        from infra.common.manifests import RUNNER_RULES

        # The runner gets exactly the Role the infra programs give its ServiceAccount.
        self.kube = self._stack.enter_context(
            KubeStandin(services={QUEUE_SERVICE: (self.socket, 6379)}, namespace=NAMESPACE, rbac=RUNNER_RULES))
        from kubernetes import client

        client.CoreV1Api(self.kube.api_client()).create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": QUEUE_SECRET},
            "data": {"password": base64.b64encode(self.password.encode()).decode()}})
        outputs = {
            "cloud": "local",
            "kubeconfig": pathlib.Path(self.kube.kubeconfig).read_text(),
            "registry_url": self.registry,
            "bucket_url": f"file://{self.bucket}",
            "namespace": NAMESPACE,
            "service_account": "default",
            "pod_labels": {},
            "queue_endpoint": f"redis://{QUEUE_SERVICE}.{NAMESPACE}.svc.cluster.local:6379/0",
            "queue_secret_name": QUEUE_SECRET,
            "gpu_types": {},
            # The front door is the stand-in's HTTP add-on on 127.0.0.1: a client sends a deployed
            # endpoint's host in the Host header there (nothing resolves these names).
            "web_domain": WEB_DOMAIN,
            "web_endpoint": self.kube.web_url,
        }
        self.outputs = self.root / "stack-outputs.json"
        self.outputs.write_text(json.dumps(outputs, indent=2))
        self.env = {
            "RUNNER_PROVIDER": "kubernetes",
            "RUNNER_STACK_OUTPUTS": str(self.outputs),
            "RUNNER_QUEUE_ADDRESS": f"unix://{self.socket}?db=0",
            "RUNNER_KUBE_MAX_CONTAINERS": str(self.max_containers),
        }

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def main() -> None:
    with KubeStack() as stack:
        for k, v in stack.env.items():
            print(f"export {k}={v}")
        print("# Ctrl-C stops the stack", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

"""Pulumi programs that give the runner a Kubernetes cluster on infrastructure you own.

`Pulumi.yaml` at the repository root points here (`main: infra/`); `infra/__main__.py` reads the
stack config key `runner:cloud` and runs `infra.<cloud>.program()`, importing only that cloud's
package so each user installs only their cloud's Pulumi SDK (`pip install 'runner[gcp]'`, ...).

    infra/common   what every cloud shares: the in-cluster platform (`RunnerPlatform`) and
                   `export_contract`, which exports the outputs defined in `runner._stack`
    infra/gcp, infra/aws, infra/azure, infra/local
                   one package per cloud, each exposing `program() -> None`
"""

"""The versions every program pins, once: images and charts whose tags would otherwise move.

Plain constants with no imports, so a program that needs a pin but not Kubernetes (infra/local)
does not import `pulumi_kubernetes` to get it.
"""

__all__ = ["DEVICE_PLUGIN_IMAGE", "KEDA_CHART", "KEDA_CHART_VERSION", "KEDA_REPO", "REDIS_IMAGE"]

REDIS_IMAGE = "redis:7.4-alpine"
KEDA_REPO = "https://kedacore.github.io/charts"
KEDA_CHART = "keda"
KEDA_CHART_VERSION = "2.16.1"
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"

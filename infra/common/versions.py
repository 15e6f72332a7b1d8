"""The versions every program pins, once: images and charts whose tags would otherwise move.

Plain constants with no imports, so a program that needs a pin but not Kubernetes (infra/local)
does not import `pulumi_kubernetes` to get it.
"""

__all__ = ["DEVICE_PLUGIN_IMAGE", "HTTP_ADDON_CHART", "HTTP_ADDON_CHART_VERSION", "KEDA_CHART", "KEDA_CHART_VERSION",
           "KEDA_REPO", "REDIS_IMAGE"]

REDIS_IMAGE = "redis:7.4-alpine"
KEDA_REPO = "https://kedacore.github.io/charts"
KEDA_CHART = "keda"
KEDA_CHART_VERSION = "2.16.1"
# The KEDA HTTP add-on (interceptor, scaler, operator for HTTPScaledObjects), from the same repo;
# 0.10 is the release made against KEDA 2.16.
HTTP_ADDON_CHART = "keda-add-ons-http"
HTTP_ADDON_CHART_VERSION = "0.10.0"
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"

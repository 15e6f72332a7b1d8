"""The queue password every program uses, decided the same way on every cloud and locally."""

from __future__ import annotations

import pulumi

__all__ = ["queue_password"]


def queue_password(name: str, given: pulumi.Input[str] | None, parent: pulumi.Resource) -> pulumi.Input[str]:
    """`given` when set, else config secret `runner:queuePassword`, else a new
    `pulumi_random.RandomPassword` `<name>-queue-password` (32 letters and digits) under `parent`.

    The caller wraps the result in `pulumi.Output.secret` where it is used.
    """
    if given is not None:
        return given
    configured = pulumi.Config("runner").get_secret("queuePassword")
    if configured is not None:
        return configured
    import pulumi_random  # only needed when no password is given

    return pulumi_random.RandomPassword(f"{name}-queue-password", length=32, special=False,
                                        opts=pulumi.ResourceOptions(parent=parent)).result

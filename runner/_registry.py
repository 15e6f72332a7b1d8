"""An image registry shared between machines: built images are pushed there, and found there again.

With `RUNNER_REGISTRY` set (`127.0.0.1:5000`, `registry.example.com/team`), the docker provider
names images `<registry>/runner-image:<id>`, where the id chains the content keys of the image's
steps (see `runner._image`). Before building it asks the registry for that tag (Docker Registry
HTTP API v2, `HEAD /v2/<name>/manifests/<tag>`): a tag the registry has is pulled (or found on
this machine already) instead of built, and a built image is pushed. Containers then start from
the registry reference.

The probe speaks plain HTTP to loopback registries (127.0.0.0/8, localhost, [::1]) and HTTPS to
any other; Docker itself allows plain HTTP for 127.0.0.0/8 by default, and for other hosts only
when the daemon lists them in `insecure-registries`. A registry that wants credentials for the
probe is asked through the Docker daemon instead, with the credentials of `docker login`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from .exception import ImageBuildError, InvalidError, ProviderError

REGISTRY_ENV = "RUNNER_REGISTRY"
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.oci.image.index.v1+json"
)
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]+)?")
_TODO = f"start it, fix {REGISTRY_ENV}, or unset {REGISTRY_ENV} to keep images on this machine only"


class Registry:
    """Where images are pushed and found: `Registry("127.0.0.1:5000/team", docker_client)`."""

    def __init__(self, address: str, client: Any):
        self.address, self.host, self.prefix = _parse(address)
        self.client = client

    @classmethod
    def from_env(cls, client: Any) -> Registry | None:
        address = os.environ.get(REGISTRY_ENV, "").strip()
        return cls(address, client) if address else None

    def __repr__(self) -> str:
        return f"Registry({self.address})"

    def reference(self, local_tag: str) -> str:
        """`runner-image:<id>` -> `<registry>/runner-image:<id>`."""
        return f"{self.address}/{local_tag}"

    # ---- the registry's HTTP API -----------------------------------------------------------
    def has(self, ref: str) -> bool:
        """Whether the registry holds `ref` (a reference from `reference`)."""
        import requests

        name, tag = self._name_tag(ref)
        url = f"{self._api_base()}/v2/{name}/manifests/{tag}"
        session = requests.Session()
        # Loopback never goes through a proxy; elsewhere the environment's proxy and CA settings apply.
        session.trust_env = not _is_loopback(self.host)
        try:
            with session:
                resp = session.head(url, headers={"Accept": MANIFEST_TYPES}, timeout=(5, 30), allow_redirects=True)
        except requests.exceptions.SSLError as exc:
            raise ProviderError(
                f"the image registry {self.address} ({REGISTRY_ENV}) fails TLS verification at {self._api_base()}/v2/ "
                f"({_reason(exc)}); "
                "point REQUESTS_CA_BUNDLE at the CA that signed its certificate, or fix RUNNER_REGISTRY"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ProviderError(
                f"the image registry {self.address} ({REGISTRY_ENV}) does not answer at {self._api_base()}/v2/ "
                f"({_reason(exc)}); {_TODO}"
            ) from None
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        if resp.status_code in (401, 403):
            return self._daemon_has(ref)
        raise ProviderError(
            f"the image registry {self.address} ({REGISTRY_ENV}) answered HTTP {resp.status_code} to {url}; {_TODO}"
        )

    def _daemon_has(self, ref: str) -> bool:
        """Ask through the Docker daemon, which sends the credentials of `docker login`."""
        import docker.errors

        try:
            self.client.api.inspect_distribution(ref)
            return True
        except docker.errors.APIError as exc:
            text = str(exc).lower()
            if exc.status_code == 404 or "manifest unknown" in text or "not found" in text:
                return False
            raise ProviderError(
                f"the image registry {self.address} ({REGISTRY_ENV}) wants credentials and refuses them "
                f"({_short(exc)}); run `docker login {self.host}`, or unset {REGISTRY_ENV}"
            ) from None

    # ---- through the Docker daemon ---------------------------------------------------------
    def fetch(self, ref: str, local_tag: str) -> None:
        """Make `ref`, which the registry holds, available on this machine: found already, found
        under its local tag, or pulled. It is then also tagged `local_tag`, so images that extend
        it build on it."""
        import docker.errors

        from ._output import output

        if not self._local(ref):
            if self._local(local_tag):
                self.client.api.tag(local_tag, *ref.rsplit(":", 1))
            else:
                output().status(f"pulling {ref}")
                try:
                    self._stream(self.client.api.pull(*ref.rsplit(":", 1), stream=True, decode=True))
                    self.client.images.get(ref)
                except (docker.errors.DockerException, _StreamError) as exc:
                    raise ImageBuildError(
                        f"the image registry {self.address} ({REGISTRY_ENV}) has {ref}, but docker cannot pull it "
                        f"({_short(exc)}); a registry speaking plain HTTP outside 127.0.0.0/8 must be in the daemon's "
                        f"insecure-registries, one that wants credentials needs `docker login {self.host}`"
                    ) from None
        if not self._local(local_tag):
            self.client.api.tag(ref, *local_tag.rsplit(":", 1))

    def push(self, local_tag: str, ref: str) -> None:
        """Tag the built image `local_tag` as `ref` and push it to the registry."""
        import docker.errors

        from ._output import output

        repo, tag = ref.rsplit(":", 1)
        output().status(f"pushing {ref}")
        try:
            self.client.api.tag(local_tag, repo, tag)
            self._stream(self.client.api.push(repo, tag=tag, stream=True, decode=True))
        except (docker.errors.DockerException, _StreamError) as exc:
            raise ImageBuildError(
                f"the image was built, but pushing it to the image registry {self.address} ({REGISTRY_ENV}) failed "
                f"({_short(exc)}); a registry speaking plain HTTP outside 127.0.0.0/8 must be in the daemon's "
                f"insecure-registries, one that wants credentials needs `docker login {self.host}`; "
                f"or unset {REGISTRY_ENV}"
            ) from None

    # ---- helpers ---------------------------------------------------------------------------
    def _local(self, ref: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    @staticmethod
    def _stream(lines) -> None:
        """Drain a pull or push progress stream; an error is reported in it, not raised."""
        for line in lines:
            if isinstance(line, dict) and line.get("error"):
                raise _StreamError(line.get("error"))

    def _name_tag(self, ref: str) -> tuple[str, str]:
        path, tag = ref[len(self.host) + 1:].rsplit(":", 1)
        return path, tag

    def _api_base(self) -> str:
        if _is_loopback(self.host):
            return f"http://{self.host}"
        host = self.host
        if host in ("docker.io", "index.docker.io"):
            host = "registry-1.docker.io"
        return f"https://{host}"


class _StreamError(Exception):
    pass


def _parse(address: str) -> tuple[str, str, str]:
    """`host[:port][/prefix]` -> (address, host, prefix), or a clear InvalidError."""
    hint = (
        f"{REGISTRY_ENV}={address!r} is not a registry address; write host[:port][/path], "
        "e.g. 127.0.0.1:5000 or registry.example.com/team (no scheme; path in lower case)"
    )
    if "://" in address:
        raise InvalidError(hint)
    address = address.strip().rstrip("/")
    host, _, prefix = address.partition("/")
    if not _HOST.fullmatch(host) or (prefix and not all(_COMPONENT.fullmatch(p) for p in prefix.split("/"))):
        raise InvalidError(hint)
    if not ("." in host or ":" in host or host == "localhost"):
        # Docker would read `name/...` as a repository on Docker Hub, not as a host.
        raise InvalidError(
            f"{REGISTRY_ENV}={address!r}: {host!r} is not a registry host for Docker (no dot, no port, not "
            f"localhost); write e.g. {host}:5000, or docker.io/{address} for Docker Hub"
        )
    return address, host, prefix


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    """The root of a requests failure ('Connection refused'), not its wrapping."""
    import requests

    found = re.search(r"\[(?:Errno -?\d+|SSL[^\]]*)\] ([^'\"()]+)", str(exc))
    if found:
        return found.group(1).strip()
    if isinstance(exc, requests.exceptions.Timeout):
        return "no answer in time"
    return _short(exc)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

"""Credentials for pulling a private base image: `Image.from_registry(tag, secret=)`,
`Image.from_aws_ecr(tag, secret=)` and `Image.from_gcp_artifact_registry(tag, secret=)`.

Each returns an `Image.base_auth`: a callable that the docker provider calls only when the base
must be pulled, and that returns docker's auth_config (`{"username": ..., "password": ...}`).

    from_registry              the secret holds REGISTRY_USERNAME and REGISTRY_PASSWORD
    from_aws_ecr               AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and optionally
                               AWS_SESSION_TOKEN); ECR's GetAuthorizationToken (boto3) gives a
                               token good for 12 hours
    from_gcp_artifact_registry SERVICE_ACCOUNT_JSON, a service account's key file; google-auth
                               trades it for an access token (cloud-platform scope), sent as the
                               password of the user `oauth2accesstoken`

With no secret, ECR and GCP use this machine's own credentials (boto3's usual chain: environment,
~/.aws, an instance role; Google's application default credentials).

Secret values are read at pull time and never leave the auth config: not in the image id (which
does not change when a password does), a repr, a log line or an error message. Inside a container
(where the app's module is imported again, and secrets need not be there) nothing is checked.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from ._context import is_local
from .exception import ImageBuildError, InvalidError

REGISTRY_KEYS = ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
GCP_KEYS = ("SERVICE_ACCOUNT_JSON",)
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GCP_USER = "oauth2accesstoken"
SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")

# <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]
_ECR_HOST = re.compile(r"(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")
_GCP_HOST = re.compile(r"(?:[a-z0-9-]+-docker\.pkg\.dev|(?:[a-z0-9-]+\.)?gcr\.io)")


def registry_host(tag: str) -> str:
    """The registry a reference names, as Docker reads it: `ghcr.io/a/b:1` -> ghcr.io,
    `ubuntu:22.04` -> docker.io."""
    first, sep, _ = tag.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


class RegistryAuth:
    """An `Image.base_auth`: called when the base is pulled; its repr names the secret's keys only."""

    what = "registry"

    def __init__(self, method: str, tag: str, secret: Any):
        self.method = method  # "Image.from_registry", for messages
        self.host = registry_host(tag)
        self.secret = secret

    def __repr__(self) -> str:
        source = repr(self.secret) if self.secret is not None else "this machine's credentials"
        return f"<{self.what} credentials for {self.host} from {source}>"

    def __call__(self) -> dict[str, str]:
        raise NotImplementedError

    def _values(self, keys: tuple[str, ...]) -> dict[str, str]:
        values = self.secret.env()
        missing = [k for k in keys if not values.get(k)]
        if missing:
            raise InvalidError(
                f"{self.method}(secret=...): the secret lacks {', '.join(missing)}; "
                f"a {self.what} secret holds {', '.join(keys)}"
            )
        return values


def _check_tag(method: str, tag: Any) -> None:
    if not isinstance(tag, str) or not tag or any(c.isspace() for c in tag):
        raise InvalidError(f"{method}: {tag!r} is not an image reference such as 'ubuntu:22.04'")


def _check_secret(method: str, secret: Any, required: bool) -> None:
    from ._secret import Secret

    if secret is None and required:
        raise InvalidError(f"{method}: pass secret=runner.Secret(...) with the registry's credentials")
    if secret is not None and not isinstance(secret, Secret):
        raise InvalidError(f"{method}(secret=...) takes a runner.Secret, got {type(secret).__name__}")


def _reason(exc: BaseException) -> str:
    return _first_line(str(exc)) or type(exc).__name__


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:240] if lines else ""


# ---- any registry: a user name and a password ---------------------------------------------------
class BasicAuth(RegistryAuth):
    what = "registry"

    def __call__(self) -> dict[str, str]:
        values = self._values(REGISTRY_KEYS)
        return {"username": values["REGISTRY_USERNAME"], "password": values["REGISTRY_PASSWORD"]}


def basic_auth(tag: str, secret: Any) -> BasicAuth:
    _check_secret("Image.from_registry", secret, required=True)
    auth = BasicAuth("Image.from_registry", tag, secret)
    if is_local():
        auth._values(REGISTRY_KEYS)
    return auth


# ---- AWS Elastic Container Registry ---------------------------------------------------------------
class EcrAuth(RegistryAuth):
    what = "AWS ECR"

    def __init__(self, tag: str, secret: Any, region: str):
        super().__init__("Image.from_aws_ecr", tag, secret)
        self.region = region  # from the tag: a token is good for the registries of its region

    def __call__(self) -> dict[str, str]:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError:
            raise InvalidError("Image.from_aws_ecr needs boto3 to log in to ECR: pip install 'runner[aws]'") from None
        if self.secret is not None:
            values = self._values(AWS_KEYS)
            session = boto3.session.Session(
                aws_access_key_id=values["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=values.get("AWS_SESSION_TOKEN") or None,
                region_name=self.region,
            )
        else:
            session = boto3.session.Session(region_name=self.region)
        config = botocore.config.Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 3})
        try:
            answer = session.client("ecr", region_name=self.region, config=config).get_authorization_token()
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            said = ": ".join(x for x in (error.get("Code"), _first_line(error.get("Message") or "")) if x)
            raise ImageBuildError(
                f"AWS ECR refused GetAuthorizationToken in {self.region} ({said or _reason(exc)})"
            ) from None
        except botocore.exceptions.NoCredentialsError:
            raise ImageBuildError(
                "Image.from_aws_ecr: no AWS credentials on this machine; pass secret= with AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and AWS_REGION"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ImageBuildError(f"AWS ECR GetAuthorizationToken in {self.region} failed ({_reason(exc)})") from None
        try:
            token = answer["authorizationData"][0]["authorizationToken"]
            username, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
            sep = ""
        if not sep:
            raise ImageBuildError(f"AWS ECR in {self.region} answered without a token of the form user:password")
        return {"username": username, "password": password}


def ecr_auth(tag: str, secret: Any) -> EcrAuth:
    method = "Image.from_aws_ecr"
    _check_tag(method, tag)
    _check_secret(method, secret, required=False)
    host = registry_host(tag)
    found = _ECR_HOST.fullmatch(host)
    if not found:
        raise InvalidError(
            f"{method}: {tag!r} does not name an ECR registry; write "
            "<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>"
        )
    auth = EcrAuth(tag, secret, found.group("region"))
    if secret is not None and is_local():
        region = auth._values(AWS_KEYS)["AWS_REGION"]
        if region != auth.region:
            raise InvalidError(
                f"{method}: the secret's AWS_REGION is {region}, but the registry {host} is in {auth.region}; "
                "an ECR login is good for the registries of its own region only"
            )
    return auth


# ---- Google Artifact Registry (and Container Registry) --------------------------------------------
class GcpAuth(RegistryAuth):
    what = "GCP Artifact Registry"

    def __call__(self) -> dict[str, str]:
        try:
            import google.auth
            import google.auth.exceptions
            import google.auth.transport.requests
            import google.oauth2.service_account
            import requests
        except ImportError:
            raise InvalidError(
                "Image.from_gcp_artifact_registry needs google-auth to log in: pip install 'runner[gcp]'"
            ) from None
        try:
            if self.secret is not None:
                info = _service_account(self.method, self._values(GCP_KEYS)["SERVICE_ACCOUNT_JSON"])
                credentials = google.oauth2.service_account.Credentials.from_service_account_info(
                    info, scopes=[GCP_SCOPE])
            else:
                credentials, _ = google.auth.default(scopes=[GCP_SCOPE])
        except google.auth.exceptions.DefaultCredentialsError:
            raise ImageBuildError(
                "Image.from_gcp_artifact_registry: no Google credentials on this machine; pass secret= with "
                "SERVICE_ACCOUNT_JSON (a service account's key file)"
            ) from None
        except ValueError as exc:  # an unreadable private key; the message holds no key material
            raise InvalidError(
                f"{self.method}(secret=...): SERVICE_ACCOUNT_JSON is not a usable service account key "
                f"({_reason(exc)})"
            ) from None
        with requests.Session() as session:
            try:
                credentials.refresh(google.auth.transport.requests.Request(session))
            except google.auth.exceptions.GoogleAuthError as exc:
                raise ImageBuildError(
                    f"Google refused an access token for {self.host} ({_google_reason(exc)})"
                ) from None
        if not credentials.token:
            raise ImageBuildError(f"Google answered without an access token for {self.host}")
        return {"username": GCP_USER, "password": credentials.token}


def _google_reason(exc: BaseException) -> str:
    # RefreshError("invalid_grant: Invalid JWT Signature.", {...response...}): the first part only.
    args = getattr(exc, "args", ())
    return (_first_line(args[0]) if args and isinstance(args[0], str) else "") or _reason(exc)


def _service_account(method: str, text: str) -> dict:
    """The key file's fields, or an InvalidError that names what is wrong and quotes none of it."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidError(
            f"{method}(secret=...): SERVICE_ACCOUNT_JSON is not JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); it holds the content of a service account's key file"
        ) from None
    if not isinstance(info, dict):
        raise InvalidError(f"{method}(secret=...): SERVICE_ACCOUNT_JSON is not a JSON object")
    kind = info.get("type", "service_account")
    if kind != "service_account":
        kind = kind if isinstance(kind, str) and kind.replace("_", "").isalnum() else "?"
        raise InvalidError(
            f"{method}(secret=...): SERVICE_ACCOUNT_JSON is a {kind!r} credential, not a service account's key file"
        )
    missing = [f for f in SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(f), str) or not info.get(f)]
    if missing:
        raise InvalidError(f"{method}(secret=...): SERVICE_ACCOUNT_JSON lacks {', '.join(missing)}")
    return info


def gcp_auth(tag: str, secret: Any) -> GcpAuth:
    method = "Image.from_gcp_artifact_registry"
    _check_tag(method, tag)
    _check_secret(method, secret, required=False)
    host = registry_host(tag)
    if not _GCP_HOST.fullmatch(host):
        raise InvalidError(
            f"{method}: {tag!r} does not name an Artifact Registry; write "
            "<location>-docker.pkg.dev/<project>/<repository>/<image>:<tag> (or gcr.io/<project>/<image>:<tag>)"
        )
    auth = GcpAuth(method, tag, secret)
    if secret is not None and is_local():
        _service_account(method, auth._values(GCP_KEYS)["SERVICE_ACCOUNT_JSON"])
    return auth

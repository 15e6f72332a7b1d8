"""Private base images: `Image.from_registry(tag, secret=)`, `Image.from_aws_ecr`,
`Image.from_gcp_artifact_registry`.

Everything is exercised up to the point where a real cloud would answer, and only on 127.0.0.1:
ECR's GetAuthorizationToken goes to a fake endpoint here (AWS_ENDPOINT_URL_ECR), whose request is
checked against an SigV4 signature made with the secret's keys; Google's token request comes from
the real google-auth flow, with a throwaway RSA key and a service account whose token_uri is a
small server here, which checks the signed JWT. A real registry (`docker-registry serve`) with
htpasswd auth serves a private base image for the end-to-end test.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from helpers import serve_registry
from helpers import untag as _untag
import runner
from runner import Image, Secret
from runner._registry_auth import GCP_SCOPE, registry_host
from runner.exception import ImageBuildError, InvalidError

ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
ECR_TAG = f"{ECR_HOST}/team/app:1.2"
GCP_TAG = "europe-west4-docker.pkg.dev/acme-project/images/app:1.2"


# ---- a tiny HTTP server on 127.0.0.1 ----------------------------------------------------------------
class FakeServer:
    """Answers every request with `self.answer` (status, JSON body) and records what it was sent."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answer: tuple[int, dict] = (200, {})
        self.content_type = "application/json"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                        "body": body})
                status, payload = server.answer(server.requests[-1]) if callable(server.answer) else server.answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # never through a proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = FakeServer()
    yield server
    server.close()


def _never_in(texts, *values):
    for text in texts:
        for value in values:
            assert value not in text, f"a secret value shows in {text!r}"


# ---- from_registry(secret=) ---------------------------------------------------------------------
def test_a_registry_secret_gives_basic_auth_and_stays_out_of_ids_and_reprs():
    one = Secret.from_dict({"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": "pw-one-5d1e"})
    two = Secret.from_dict({"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": "pw-two-77aa"})
    image = Image.from_registry("ghcr.io/acme/base:1", secret=one)
    assert image.base_auth() == {"username": "alice", "password": "pw-one-5d1e"}
    extended = Image.from_registry("ghcr.io/acme/base:1", two).env({"A": "1"}).pip_install("six")  # Modal: positional
    assert extended.base_auth() == {"username": "alice", "password": "pw-two-77aa"}  # kept through steps
    public = Image.from_registry("ghcr.io/acme/base:1")
    assert public.base_auth is None
    assert image.object_id == public.object_id  # the id names the content, not the credentials
    assert extended.object_id == public.env({"A": "1"}).pip_install("six").object_id
    assert "REGISTRY_PASSWORD" in repr(image.base_auth) and "ghcr.io" in repr(image.base_auth)
    _never_in([repr(image), repr(image.base_auth), repr(extended), repr(extended.base_auth), image.object_id,
               json.dumps([s.key() for s, _ in extended.chain()])], "pw-one-5d1e", "pw-two-77aa", "alice")


def test_a_registry_secret_missing_keys_is_refused_naming_them():
    with pytest.raises(InvalidError, match="REGISTRY_PASSWORD") as info:
        Image.from_registry("ghcr.io/acme/base:1", secret=Secret.from_dict({"REGISTRY_USERNAME": "alice-3f1"}))
    assert "REGISTRY_USERNAME" not in str(info.value).split("lacks")[1].split(";")[0]
    assert "alice-3f1" not in str(info.value)
    with pytest.raises(InvalidError, match="REGISTRY_USERNAME, REGISTRY_PASSWORD"):
        Image.from_registry("ghcr.io/acme/base:1", secret=Secret.from_dict({"OTHER": "x"}))
    with pytest.raises(InvalidError, match="runner.Secret"):
        Image.from_registry("ghcr.io/acme/base:1", secret={"REGISTRY_USERNAME": "a", "REGISTRY_PASSWORD": "b"})


def test_in_a_container_the_secret_is_not_checked(monkeypatch):
    """Inside a container the app's module is imported again, where secrets need not be present."""
    monkeypatch.setenv("RUNNER_IS_REMOTE", "1")
    empty = Secret.from_dict({})
    assert Image.from_registry("ghcr.io/acme/base:1", secret=empty).base == "ghcr.io/acme/base:1"
    assert Image.from_aws_ecr(ECR_TAG, secret=empty).base == ECR_TAG
    assert Image.from_gcp_artifact_registry(GCP_TAG, secret=empty).base == GCP_TAG


@pytest.mark.parametrize("tag, host", [
    ("ubuntu:22.04", "docker.io"), ("acme/app:1", "docker.io"), ("ghcr.io/acme/app", "ghcr.io"),
    ("127.0.0.1:5000/base:tag", "127.0.0.1:5000"), ("localhost/x", "localhost"),
    (f"{ECR_HOST}/app@sha256:{'0' * 64}", ECR_HOST),
])
def test_registry_host(tag, host):
    assert registry_host(tag) == host


# ---- AWS ECR ---------------------------------------------------------------------------------------
AWS_SECRET = {"AWS_ACCESS_KEY_ID": "AKIATESTKEY000000001", "AWS_SECRET_ACCESS_KEY": "secret-key-9c4e1f",
              "AWS_REGION": "eu-west-1", "AWS_SESSION_TOKEN": "session-token-51aa"}


@pytest.mark.parametrize("tag", [
    "ubuntu:22.04", "ghcr.io/acme/app:1", "12345.dkr.ecr.eu-west-1.amazonaws.com/app:1",
    f"{ECR_HOST}.evil.example/app:1", "123456789012.dkr.ecr.eu-west-1.amazonaws.org/app:1", "a b",
])
def test_ecr_wants_an_ecr_registry_host(tag):
    with pytest.raises(InvalidError, match="from_aws_ecr"):
        Image.from_aws_ecr(tag, secret=Secret.from_dict(AWS_SECRET))


def test_ecr_secret_checks_name_keys_and_regions_but_no_values():
    with pytest.raises(InvalidError, match="AWS_SECRET_ACCESS_KEY, AWS_REGION") as info:
        Image.from_aws_ecr(ECR_TAG, secret=Secret.from_dict({"AWS_ACCESS_KEY_ID": "AKIATESTKEY000000001"}))
    assert "AKIATEST" not in str(info.value)
    with pytest.raises(InvalidError, match="us-east-1.*eu-west-1"):
        Image.from_aws_ecr(ECR_TAG, secret=Secret.from_dict({**AWS_SECRET, "AWS_REGION": "us-east-1"}))
    image = Image.from_aws_ecr(f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/app@sha256:{'a' * 64}",
                               Secret.from_dict(AWS_SECRET))
    values = [v for k, v in AWS_SECRET.items() if k != "AWS_REGION"]
    _never_in([repr(image), repr(image.base_auth), image.object_id], *values)
    with pytest.raises(InvalidError, match="add_python"):
        Image.from_aws_ecr(ECR_TAG, secret=Secret.from_dict(AWS_SECRET), add_python="3.11")


@pytest.fixture
def fake_ecr(fake_server, monkeypatch, tmp_path):
    pytest.importorskip("boto3")
    # This machine's AWS settings must not leak in: no profile, no config file, our endpoint.
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", fake_server.url)
    fake_server.content_type = "application/x-amz-json-1.1"
    token = base64.b64encode(b"AWS:ecr-password-0d9b").decode()
    fake_server.answer = (200, {"authorizationData": [{
        "authorizationToken": token, "expiresAt": time.time() + 43200, "proxyEndpoint": f"https://{ECR_HOST}"}]})
    return fake_server


def _check_sigv4(request: dict, key_id: str, secret_key: str, token: str | None, region: str) -> None:
    """The request carries a SigV4 signature for ECR in `region`, made with exactly these keys."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {k.lower(): v for k, v in request["headers"].items()}
    authorization = headers["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 ")
    fields = dict(part.strip().split("=", 1) for part in authorization[len("AWS4-HMAC-SHA256 "):].split(","))
    key, date, scope_region, service, terminator = fields["Credential"].split("/")
    assert (key, scope_region, service, terminator) == (key_id, region, "ecr", "aws4_request")
    assert date == request["headers"]["X-Amz-Date"][:8]
    signed = fields["SignedHeaders"].split(";")
    assert "host" in signed and "x-amz-date" in signed and "x-amz-target" in signed
    if token:
        assert "x-amz-security-token" in signed and headers["x-amz-security-token"] == token
    else:
        assert "x-amz-security-token" not in headers
    again = AWSRequest(method=request["method"], url=f"http://{headers['host']}{request['path']}",
                       data=request["body"], headers={h: headers[h] for h in signed})
    again.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(key_id, secret_key, token), "ecr", region)
    expected = signer.signature(signer.string_to_sign(again, signer.canonical_request(again)), again)
    assert fields["Signature"] == expected, "not signed with the secret's AWS_SECRET_ACCESS_KEY"


def test_ecr_login_asks_get_authorization_token_with_the_secrets_keys(fake_ecr):
    image = Image.from_aws_ecr(ECR_TAG, secret=Secret.from_dict(AWS_SECRET))
    assert image.base_auth() == {"username": "AWS", "password": "ecr-password-0d9b"}
    (request,) = fake_ecr.requests
    assert request["path"] == "/"
    assert request["headers"]["X-Amz-Target"] == "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
    assert json.loads(request["body"] or b"{}") == {}
    _check_sigv4(request, "AKIATESTKEY000000001", "secret-key-9c4e1f", "session-token-51aa", "eu-west-1")


def test_ecr_without_a_secret_uses_this_machines_credentials(fake_ecr, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAAMBIENT000000002")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret-2b7d")
    image = Image.from_aws_ecr(ECR_TAG)
    assert "this machine's credentials" in repr(image.base_auth)
    assert image.base_auth() == {"username": "AWS", "password": "ecr-password-0d9b"}
    (request,) = fake_ecr.requests
    _check_sigv4(request, "AKIAAMBIENT000000002", "ambient-secret-2b7d", None, "eu-west-1")  # the tag's region


def test_ecr_refusal_is_one_clear_line_without_secrets(fake_ecr):
    fake_ecr.answer = (400, {"__type": "UnrecognizedClientException",
                             "message": "The security token included in the request is invalid."})
    image = Image.from_aws_ecr(ECR_TAG, secret=Secret.from_dict(AWS_SECRET))
    with pytest.raises(ImageBuildError) as info:
        image.base_auth()
    message = str(info.value)
    assert "\n" not in message and "eu-west-1" in message
    assert "UnrecognizedClientException" in message and "security token included in the request is invalid" in message
    _never_in([message], "AKIATEST", "secret-key-9c4e1f", "session-token-51aa")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_ecr_token_that_is_not_user_password_is_refused(fake_ecr):
    fake_ecr.answer = (200, {"authorizationData": [{"authorizationToken": "@@not base64@@"}]})
    with pytest.raises(ImageBuildError, match="user:password"):
        Image.from_aws_ecr(ECR_TAG, secret=Secret.from_dict(AWS_SECRET)).base_auth()


def test_ecr_without_boto3_says_what_to_install(monkeypatch):
    image = Image.from_aws_ecr(ECR_TAG, secret=Secret.from_dict(AWS_SECRET))  # defining needs no boto3
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` now raises ImportError
    with pytest.raises(InvalidError, match=r"pip install 'runner\[aws\]'"):
        image.base_auth()


# ---- GCP Artifact Registry -----------------------------------------------------------------------
def _rsa_key() -> tuple[str, object]:
    """(PEM of a throwaway private key, its public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def fake_google(fake_server, monkeypatch):
    """A service account whose token_uri is the fake server; the server checks the JWT it is sent."""
    pytest.importorskip("google.oauth2.service_account")
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    pem, public = _rsa_key()
    token_uri = f"{fake_server.url}/token"
    info = {
        "type": "service_account", "project_id": "acme-project", "private_key_id": "key-id-4d2c",
        "private_key": pem, "client_email": "puller@acme-project.iam.gserviceaccount.com",
        "client_id": "1234567890", "token_uri": token_uri,
    }
    fake_server.claims = []

    def answer(request):
        form = urllib.parse.parse_qs(request["body"].decode())
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        header, payload, signature = form["assertion"][0].split(".")
        public.verify(_b64url(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        fake_server.claims.append((json.loads(_b64url(header)), json.loads(_b64url(payload))))
        return 200, {"access_token": "ya29.fake-access-token-e7", "expires_in": 3600, "token_type": "Bearer"}

    fake_server.answer = answer
    fake_server.info = info
    return fake_server


@pytest.mark.parametrize("tag", [
    "ubuntu:22.04", "ghcr.io/acme/app:1", "pkg.dev/acme/app:1", "us-docker.pkg.dev.evil.example/acme/app:1",
    "gcr.io.evil.example/acme/app", f"{ECR_TAG}",
])
def test_gcp_wants_an_artifact_registry_host(tag):
    with pytest.raises(InvalidError, match="from_gcp_artifact_registry"):
        Image.from_gcp_artifact_registry(tag, secret=Secret.from_dict({"SERVICE_ACCOUNT_JSON": "{}"}))


@pytest.mark.parametrize("tag", [GCP_TAG, "us-docker.pkg.dev/p/r/i", "gcr.io/p/i:1", "eu.gcr.io/p/i"])
def test_gcp_hosts_accepted(tag):
    image = Image.from_gcp_artifact_registry(tag)  # no secret: this machine's credentials, checked at pull time
    assert image.base == tag and image.base_auth is not None


def test_gcp_secret_checks_quote_nothing_of_the_key():
    def make(value: str):
        return Image.from_gcp_artifact_registry(GCP_TAG, secret=Secret.from_dict({"SERVICE_ACCOUNT_JSON": value}))

    with pytest.raises(InvalidError, match="lacks SERVICE_ACCOUNT_JSON"):
        Image.from_gcp_artifact_registry(GCP_TAG, secret=Secret.from_dict({"JSON": "{}"}))
    with pytest.raises(InvalidError, match="not JSON") as info:
        make("private-key-material-not-json-6a")
    assert "private-key-material" not in str(info.value)
    with pytest.raises(InvalidError, match="lacks client_email, private_key"):
        make(json.dumps({"type": "service_account", "token_uri": "https://oauth2.googleapis.com/token"}))
    with pytest.raises(InvalidError, match="'authorized_user' credential"):
        make(json.dumps({"type": "authorized_user", "refresh_token": "refresh-0c1"}))


def test_gcp_login_signs_a_jwt_for_the_service_account(fake_google):
    secret = Secret.from_dict({"SERVICE_ACCOUNT_JSON": json.dumps(fake_google.info)})
    image = Image.from_gcp_artifact_registry(GCP_TAG, secret=secret)
    assert image.base_auth() == {"username": "oauth2accesstoken", "password": "ya29.fake-access-token-e7"}
    (request,) = fake_google.requests
    assert request["path"] == "/token"
    ((header, claims),) = fake_google.claims
    assert header["alg"] == "RS256" and header["kid"] == "key-id-4d2c"
    assert claims["iss"] == "puller@acme-project.iam.gserviceaccount.com"
    assert claims["aud"] == "https://oauth2.googleapis.com/token"  # google-auth signs for Google's endpoint
    assert claims["scope"] == GCP_SCOPE
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    _never_in([repr(image), repr(image.base_auth), image.object_id], "PRIVATE KEY", "key-id-4d2c")


def test_gcp_without_a_secret_uses_application_default_credentials(fake_google, tmp_path, monkeypatch):
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(fake_google.info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    assert Image.from_gcp_artifact_registry(GCP_TAG).base_auth() == {
        "username": "oauth2accesstoken", "password": "ya29.fake-access-token-e7"}
    assert fake_google.claims[0][1]["iss"] == "puller@acme-project.iam.gserviceaccount.com"


def test_gcp_refusal_is_one_clear_line_without_the_key(fake_google):
    fake_google.answer = (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
    secret = Secret.from_dict({"SERVICE_ACCOUNT_JSON": json.dumps(fake_google.info)})
    with pytest.raises(ImageBuildError) as info:
        Image.from_gcp_artifact_registry(GCP_TAG, secret=secret).base_auth()
    message = str(info.value)
    assert "\n" not in message and "invalid_grant" in message and "europe-west4-docker.pkg.dev" in message
    _never_in([message], "PRIVATE KEY", fake_google.info["private_key"][40:80])
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_gcp_unreadable_private_key_is_refused_without_quoting_it(fake_google):
    bad_key = "-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5LTNm\n-----END PRIVATE KEY-----\n"
    info = {**fake_google.info, "private_key": bad_key}
    with pytest.raises(InvalidError, match="not a usable service account key") as raised:
        Image.from_gcp_artifact_registry(GCP_TAG, secret=Secret.from_dict({"SERVICE_ACCOUNT_JSON": json.dumps(info)})
                                         ).base_auth()
    assert "bm90LWEta2V5LTNm" not in str(raised.value)
    assert not fake_google.requests


def test_gcp_without_google_auth_says_what_to_install(monkeypatch):
    image = Image.from_gcp_artifact_registry(GCP_TAG)
    monkeypatch.setitem(sys.modules, "google.oauth2.service_account", None)
    with pytest.raises(InvalidError, match=r"pip install 'runner\[gcp\]'"):
        image.base_auth()


# ---- end to end: a private registry with htpasswd auth ------------------------------------------------
USER, PASSWORD, WRONG = "puller", "right-password-8e3a", "wrong-password-c51f"


def _htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the registry accepts no other hash)."""
    try:
        import bcrypt
    except ImportError:
        bcrypt = None
    if bcrypt is not None:
        return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=8)).decode()}"
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    reason = ("neither python's bcrypt (pip install bcrypt) nor htpasswd (apache2-utils) is here to write the "
              "registry's bcrypt htpasswd file")
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory):
    """A registry on 127.0.0.1 that wants USER/PASSWORD, holding python:3.11-slim-bookworm as
    <address>/base:tag; the tag is removed from this machine again."""
    from conftest import require_docker

    require_docker()
    import docker

    root = tmp_path_factory.mktemp("private-registry")
    (root / "htpasswd").write_text(_htpasswd_line(USER, PASSWORD) + "\n")
    auth = f"auth:\n  htpasswd:\n    realm: runner-test\n    path: {root / 'htpasswd'}\n"
    client = docker.from_env()
    try:
        with serve_registry(root, auth, ready_status=401) as address:  # 401: up, and wants credentials
            try:
                client.images.get("python:3.11-slim-bookworm")
            except docker.errors.ImageNotFound:
                pytest.fail("python:3.11-slim-bookworm is not on this machine (scripts/seed_base_image.sh builds it)")
            client.login(registry=address, username=USER, password=PASSWORD)
            ref = f"{address}/base:tag"
            client.images.get("python:3.11-slim-bookworm").tag(f"{address}/base", "tag")
            for line in client.api.push(f"{address}/base", tag="tag", stream=True, decode=True,
                                        auth_config={"username": USER, "password": PASSWORD}):
                assert "error" not in line, line
            client.images.remove(ref)
            yield ref
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)


def _forget(image: Image) -> None:
    """Remove the base and every step's image from this daemon, so the base must be pulled."""
    ids = {f"runner-image:{digest[:40]}" for _, digest in image.chain()}
    _untag(lambda tag: tag == image.base or tag in ids)


def _app(image: Image):
    app = runner.App("tests-registry-auth", image=image)

    @app.function(serialized=True)
    def probe() -> str:
        import os
        import sys

        return f"{sys.version_info[0]}.{sys.version_info[1]} {os.environ.get('FROM_PRIVATE_BASE')}"

    return app, probe


def test_a_private_base_is_pulled_with_the_secret_and_refused_without_it(private_registry, docker_provider):
    ref = private_registry
    good = Secret.from_dict({"REGISTRY_USERNAME": USER, "REGISTRY_PASSWORD": PASSWORD})
    wrong = Secret.from_dict({"REGISTRY_USERNAME": USER, "REGISTRY_PASSWORD": WRONG})
    for secret in (wrong, None):
        image = Image.from_registry(ref, secret=secret).env({"FROM_PRIVATE_BASE": "yes"})
        _forget(image)
        app, probe = _app(image)
        with pytest.raises(ImageBuildError) as info, app.run():
            probe.remote()
        message = str(info.value)
        assert "\n" not in message, message
        assert ref in message and ("unauthorized" in message or "no basic auth credentials" in message), message
        _never_in([message], PASSWORD, WRONG)

    image = Image.from_registry(ref, secret=good).env({"FROM_PRIVATE_BASE": "yes"})
    _forget(image)
    app, probe = _app(image)
    try:
        with app.run():
            assert probe.remote() == "3.11 yes"
    finally:
        _forget(image)

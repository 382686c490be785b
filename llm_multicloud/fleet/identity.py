"""Local stand-ins for the clouds' identity services, verified with the clouds' own libraries.

For tests, examples and outage rehearsals of credentials (``Fleet.set_authorizer``);
they need the extras of the schemes they verify (botocore, google-auth, azure-core).

* :class:`TokenAuthority` — an OAuth 2.0 token endpoint on 127.0.0.1 that issues
  short-lived bearer tokens (seconds): the JWT-bearer grant of Google service
  accounts (the assertion is verified with google-auth against the account's
  public key) and the client-credentials grant (what Entra ID's v2 token endpoint
  speaks). It remembers what it issued, so a fleet region can reject unknown,
  expired and revoked tokens.
* :class:`EntraLikeCredential` — an ``azure.core.credentials.TokenCredential``
  implementation that fetches from the authority (client credentials), returning
  azure-core's own ``AccessToken``.
* :func:`sigv4_verifier` — a fleet authorizer that recomputes the SigV4 signature
  of what it received with botocore (service, region, the body's SHA-256) and
  refuses anything that does not match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import ssl
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .server import AuthCheck

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def rsa_service_account(
    token_uri: str, email: str = "lmc-test@lmc-test-project.iam.gserviceaccount.com"
) -> dict[str, Any]:
    """A service-account key file's content, with a freshly generated RSA key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pub = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return {
        "type": "service_account",
        "project_id": "lmc-test-project",
        "private_key_id": secrets.token_hex(8),
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_uri,
        "_public_key": pub,
    }


class TokenAuthority:
    """Issues tokens that live ``ttl_s`` seconds; thread-safe; 127.0.0.1 only.

    With ``tls=True`` it serves HTTPS with a certificate from a throwaway CA
    (``trustme``; its PEM at :attr:`ca_path`) and speaks enough of a Microsoft Entra
    authority for ``azure.identity.ClientSecretCredential(tenant, client, secret,
    authority=authority.authority_url, disable_instance_discovery=True,
    connection_verify=authority.ca_path)``: the OpenID configuration document at
    ``/{tenant}/v2.0/.well-known/openid-configuration`` and the token endpoint it names.
    """

    def __init__(self, ttl_s: float = 2.0, *, tls: bool = False) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, str]] = {}  # token -> (expires_at, subject)
        self._clients: dict[str, str] = {}  # client_id -> secret
        self._accounts: dict[str, str] = {}  # client_email -> public key PEM
        self.revoked: set[str] = set()  # subjects
        self.issued: dict[str, int] = {}
        self.scopes_seen: set[str] = set()
        self.refused = 0
        authority = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                tenant = self.path.strip("/").split("/")[0]
                if not self.path.endswith("/.well-known/openid-configuration"):
                    self._reply(404, {"error": "not_found"})
                    return
                base = f"{authority.authority_url}/{tenant}"
                self._reply(
                    200,
                    {
                        "issuer": f"{base}/v2.0",
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    },
                )

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                self._reply(*authority._grant(form))

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.ca_path: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if tls:
            import trustme

            ca = trustme.CA()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self._tmp = tempfile.TemporaryDirectory(prefix="lmc-authority-")
            self.ca_path = os.path.join(self._tmp.name, "ca.pem")
            ca.cert_pem.write_to_path(self.ca_path)
        scheme = "https" if tls else "http"
        #: an Entra-style authority (TLS mode): https://localhost:PORT
        self.authority_url = f"{scheme}://localhost:{port}"
        #: the OAuth token endpoint (service accounts' token_uri, client credentials)
        self.url = f"{scheme}://127.0.0.1:{port}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-authority", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- registration -------------------------------------------------------------------
    def add_client(self, client_id: str, secret: str) -> None:
        self._clients[client_id] = secret

    def add_service_account(self, info: dict[str, Any]) -> None:
        self._accounts[info["client_email"]] = info["_public_key"]

    def revoke(self, subject: str) -> None:
        """The subject's tokens stop working and it gets no new ones."""
        with self._lock:
            self.revoked.add(subject)
            for tok, (_, sub) in list(self._tokens.items()):
                if sub == subject:
                    del self._tokens[tok]

    # -- the token endpoint ---------------------------------------------------------------
    def issue(self, subject: str, ttl_s: float | None = None) -> tuple[str, float]:
        ttl = self.ttl_s if ttl_s is None else ttl_s
        tok = "at-" + secrets.token_urlsafe(24)
        exp = time.time() + ttl
        with self._lock:
            self._tokens[tok] = (exp, subject)
            self.issued[subject] = self.issued.get(subject, 0) + 1
        return tok, exp

    def _grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type")
        if form.get("scope"):
            self.scopes_seen.update(form["scope"].split())
        subject: str | None = None
        if grant == JWT_BEARER:
            subject = self._verify_assertion(form.get("assertion", ""))
        elif grant == "client_credentials":
            cid = form.get("client_id", "")
            if cid in self._clients and hmac.compare_digest(self._clients[cid], form.get("client_secret", "")):
                subject = cid
        if subject is None or subject in self.revoked:
            self.refused += 1
            return 400, {"error": "invalid_grant", "error_description": "the grant was refused"}
        tok, exp = self.issue(subject)
        return 200, {"access_token": tok, "token_type": "Bearer", "expires_in": max(round(exp - time.time()), 1)}

    def _verify_assertion(self, assertion: str) -> str | None:
        from google.auth import jwt as google_jwt

        jwt: Any = google_jwt
        try:
            claims = jwt.decode(assertion, verify=False)
            pub = self._accounts.get(claims.get("iss", ""))
            if pub is None:
                return None
            # google-auth addresses its assertion to Google's token endpoint whatever token_uri says
            verified = jwt.decode(assertion, certs=pub, audience=GOOGLE_TOKEN_AUDIENCE)
        except Exception:
            return None
        return str(verified["iss"])

    # -- what a resource server asks --------------------------------------------------------
    def valid(self, token: str) -> bool:
        with self._lock:
            got = self._tokens.get(token)
        return got is not None and time.time() < got[0]

    def bearer_authorizer(self) -> Callable[[AuthCheck], bool]:
        def check(req: AuthCheck) -> bool:
            scheme, _, tok = req.headers.get("authorization", "").partition(" ")
            return scheme.lower() == "bearer" and self.valid(tok.strip())

        return check


class EntraLikeCredential:
    """An azure-core ``TokenCredential``: client credentials against the local authority
    (what ``ClientSecretCredential`` does against login.microsoftonline.com)."""

    def __init__(self, authority_url: str, client_id: str, secret: str) -> None:
        self.url = authority_url
        self.client_id = client_id
        self._secret = secret
        self.calls = 0
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken
        from azure.core.exceptions import ClientAuthenticationError

        self.calls += 1
        self.scopes = list(scopes)
        data = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._secret,
                "scope": " ".join(scopes),
            }
        ).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, data=data), timeout=5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ClientAuthenticationError(message=f"token request refused: HTTP {exc.code}") from None
        return AccessToken(body["access_token"], int(time.time() + body["expires_in"]))

    def close(self) -> None:
        pass


_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})"
)


def sigv4_verifier(
    access_key: str, secret_key: str, region: str, service: str = "bedrock", seen: list[str] | None = None
) -> Callable[[AuthCheck], bool]:
    """Recompute the signature with botocore over what arrived; any change to the body,
    a signed header, the path or the query, another region or key: refused."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    def check(req: AuthCheck) -> bool:
        m = _AUTH_RE.fullmatch(req.headers.get("authorization", ""))
        if m is None:
            return False
        akid, day, reg, svc, signed, signature = m.groups()
        if akid != access_key or reg != region or svc != service:
            return False
        amz_date = req.headers.get("x-amz-date", "")
        if not amz_date.startswith(day):
            return False
        # The declared body hash must be the hash of the bytes that arrived.
        if req.headers.get("x-amz-content-sha256") != hashlib.sha256(req.body).hexdigest():
            return False
        names = signed.split(";")
        headers = {n: req.headers[n] for n in names if n in req.headers}
        if len(headers) != len(names):
            return False
        url = f"http://{req.headers['host']}{req.path}" + (f"?{req.query}" if req.query else "")
        aws = AWSRequest(method=req.method, url=url, headers=headers, data=req.body)
        aws.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(access_key, secret_key), service, region)
        expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
        ok = hmac.compare_digest(expected, signature)
        if ok and seen is not None:
            seen.append(signature)
        return ok

    return check

"""``kind: aws`` (SigV4) and ``kind: aws-api-key`` (Bedrock API keys as bearer).

Install ``llm-multicloud[aws]``. SigV4 signs the exact bytes that are sent — method,
URL, every header that goes out, and the body's SHA-256 — with botocore's
``SigV4Auth`` for service ``bedrock`` and the endpoint's region, so a retry, a hedge
or a resumed stream is signed again for its own body. Credentials come from
botocore's standard chain (environment, shared config/profile, container and
instance roles, web identity) or a ``profile``; resolving and refreshing them may
call STS or the instance metadata service, so it runs in a daemon thread, ahead of
expiry, never on the event loop. Signing itself is a few HMACs, done inline.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

from .base import Credential, CredentialUnavailable, OutgoingRequest, Token, TokenCredential, key_identity
from .static import EnvKey, StaticKey

EXTRA = "aws"
SERVICE = "bedrock"
#: re-read botocore's credentials this often when they do not say when they expire
RENEW_S = 300.0
_SIGNING = ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")


def _botocore() -> tuple[Any, Any, Any]:
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.session import Session
    except ImportError:
        raise ImportError("auth kind 'aws' needs botocore: pip install 'llm-multicloud[aws]'") from None
    return SigV4Auth, AWSRequest, Session


class AwsSigV4(TokenCredential):
    """SigV4 request signing; the "token" is a frozen set of AWS credentials."""

    kind = "aws"
    regional_quota = True

    def __init__(
        self,
        *,
        region: str | None = None,
        service: str = SERVICE,
        profile: str | None = None,
        session: Any = None,
        _shared: AwsSigV4 | None = None,
    ) -> None:
        self._sigv4, self._request_cls, session_cls = _botocore()
        self.region = region
        self.service = service
        self.profile = profile
        self._session: Any = session if session is not None else (_shared._session if _shared else None)
        self._session_cls = session_cls
        self._frozen: Any = None
        super().__init__(f"aws:{profile or 'default-chain'}")

    def bind(self, region: str) -> AwsSigV4:
        """This credential for one endpoint's region (same session and identity chain)."""
        if self.region is not None:
            return self
        return AwsSigV4(region=region, service=self.service, profile=self.profile, _shared=self)

    def fetch(self) -> Token:
        if self._session is None:
            self._session = self._session_cls(profile=self.profile)
        creds = self._session.get_credentials()
        if creds is None:
            raise CredentialUnavailable(
                "aws (SigV4): no AWS credentials found in botocore's chain "
                "(environment, profile, container/instance role, web identity)"
            )
        frozen = creds.get_frozen_credentials() if hasattr(creds, "get_frozen_credentials") else creds
        if not frozen.access_key or not frozen.secret_key:
            raise CredentialUnavailable("aws (SigV4): the AWS credentials are incomplete")
        expiry = getattr(creds, "_expiry_time", None)  # RefreshableCredentials: when they lapse
        exp = expiry.timestamp() if expiry is not None else time.time() + RENEW_S
        self._frozen = frozen
        return Token(frozen.access_key, exp)

    def render(self, req: OutgoingRequest, token: Token) -> None:
        frozen = self._frozen
        assert self.region is not None, "AwsSigV4 used before bind(region)"
        body = req.body or b""
        headers = [(k, v) for k, v in req.headers if k.lower() not in _SIGNING]
        headers.append(("x-amz-content-sha256", hashlib.sha256(body).hexdigest()))
        aws = self._request_cls(method=req.method, url=req.url, headers=dict(headers), data=body)
        self._sigv4(frozen, self.service, self.region).add_auth(aws)
        req.headers = headers
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            value = aws.headers.get(name)
            if value is not None:
                req.set_header(name, value)

    def secrets(self) -> Iterable[str]:
        f = self._frozen
        return tuple(s for s in ((f.secret_key, f.token) if f is not None else ()) if s)

    def describe(self) -> str:
        where = self.region or "region of the endpoint"
        return f"aws (SigV4, {self.service}, {where}, profile {self.profile or 'default'})"


def aws(*, profile: str | None = None, region: str | None = None, service: str = SERVICE) -> AwsSigV4:
    """SigV4 signing with botocore's credential chain (``region``: default, the endpoint's)."""
    return AwsSigV4(profile=profile, region=region, service=service)


def aws_api_key(key: str | None = None, *, env: str = "AWS_BEARER_TOKEN_BEDROCK") -> Credential:
    """A Bedrock API key, sent as a bearer token (literal, or from ``env`` on each use)."""
    cred: Credential = StaticKey(key) if key is not None else EnvKey(env)
    cred.kind = "aws-api-key"
    if key is not None:
        cred.identity = key_identity("bedrock-key", key)
    return cred

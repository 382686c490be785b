"""``kind: gcp``: Google access tokens via ``google-auth`` (Application Default Credentials).

Install ``llm-multicloud[gcp]``. Without ``credentials_file`` this is ADC:
``GOOGLE_APPLICATION_CREDENTIALS`` (a service-account key or a workload identity
federation config), gcloud's user credentials, or the metadata server. Scope:
``https://www.googleapis.com/auth/cloud-platform``.

google-auth's own ``valid`` flag treats a token as expired 3m45s early, which would
refresh short-lived tokens on every request; the shared refresh rules of
:class:`~llm_multicloud.auth.base.TokenCredential` decide instead, from ``expiry``.
"""

from __future__ import annotations

import datetime
import json
import threading
from typing import Any

from .base import OutgoingRequest, Token, TokenCredential

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
EXTRA = "gcp"


def _modules() -> tuple[Any, Any]:
    try:
        import google.auth
        import google.auth.transport.requests as transport
    except ImportError:
        raise ImportError("auth kind 'gcp' needs google-auth and requests: pip install 'llm-multicloud[gcp]'") from None
    return google.auth, transport


def _from_file(path: str, scopes: list[str]) -> Any:
    """Credentials from a key or configuration file, by its declared type (google-auth's
    generic loader is deprecated: it would accept any type from an untrusted file)."""
    with open(path, encoding="utf-8") as fh:
        info = json.load(fh)
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        from google.oauth2 import service_account

        sa: Any = service_account.Credentials
        return sa.from_service_account_info(info, scopes=scopes)
    if kind == "external_account":  # workload identity federation
        source = info.get("credential_source") or {}
        if str(source.get("environment_id", "")).startswith("aws"):
            from google.auth import aws

            federated: Any = aws.Credentials
            return federated.from_info(info, scopes=scopes)
        from google.auth import identity_pool

        pool: Any = identity_pool.Credentials
        return pool.from_info(info, scopes=scopes)
    if kind == "authorized_user":
        from google.oauth2 import credentials as user

        users: Any = user.Credentials
        return users.from_authorized_user_info(info, scopes=scopes)
    raise ValueError(
        f"credentials_file type {kind!r} is not supported; use service_account, external_account or authorized_user"
    )


class GcpCredential(TokenCredential):
    """Bearer tokens from google-auth credentials (ADC, a file, or an object from code)."""

    kind = "gcp"
    regional_quota = True

    def __init__(
        self,
        credentials: Any = None,
        *,
        credentials_file: str | None = None,
        scopes: tuple[str, ...] = (CLOUD_PLATFORM,),
    ) -> None:
        _modules()
        self._creds = credentials
        self._file = credentials_file
        self.scopes = tuple(scopes)
        self._mutex = threading.Lock()
        self._quota_project: str | None = None
        if credentials is not None:
            label = f"{type(credentials).__name__}:{id(credentials):x}"
        else:
            label = f"file:{credentials_file}" if credentials_file else "adc"
        self._label = label
        super().__init__(f"gcp:{label}")

    def _credentials(self) -> Any:
        google_auth, _ = _modules()
        if self._creds is None:
            if self._file:
                creds = _from_file(self._file, list(self.scopes))
            else:
                creds, _ = google_auth.default(scopes=list(self.scopes))
            self._creds = creds
        else:
            import google.auth.credentials as gac

            scoped: Any = gac.with_scopes_if_required
            self._creds = scoped(self._creds, list(self.scopes))
        return self._creds

    def fetch(self) -> Token:
        _, transport = _modules()
        with self._mutex:  # google-auth credentials are not thread-safe
            creds = self._credentials()
            creds.refresh(transport.Request())
            token, expiry = creds.token, creds.expiry
            self._quota_project = getattr(creds, "quota_project_id", None)
        exp = None
        if isinstance(expiry, datetime.datetime):
            exp = (expiry if expiry.tzinfo else expiry.replace(tzinfo=datetime.UTC)).timestamp()
        return Token(str(token), exp)

    def render(self, req: OutgoingRequest, token: Token) -> None:
        req.set_header("authorization", f"Bearer {token.value}")
        if self._quota_project:
            req.set_header("x-goog-user-project", self._quota_project)

    def describe(self) -> str:
        return f"gcp ({self._label})"


def gcp(
    credentials: Any = None, *, credentials_file: str | None = None, scopes: tuple[str, ...] = (CLOUD_PLATFORM,)
) -> GcpCredential:
    """Google bearer tokens: ADC by default, a credentials file, or google-auth
    ``Credentials`` from code (a service account, impersonation...)."""
    return GcpCredential(credentials, credentials_file=credentials_file, scopes=scopes)

"""``kind: azure``: Microsoft Entra ID tokens from an ``azure.identity`` credential.

Install ``llm-multicloud[azure]``. The credential is ``DefaultAzureCredential``
unless the catalog names another (``managed_identity``, ``workload_identity``,
``client_secret``) or code passes any object with azure-core's ``get_token`` —
sync (``azure.identity``, run in a daemon thread) or async (``azure.identity.aio``,
run on the event loop). Scope: ``https://cognitiveservices.azure.com/.default``.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from .base import CredentialUnavailable, Token, TokenCredential

DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"
EXTRA = "azure"


def _identity_module() -> Any:
    try:
        import azure.identity as identity
    except ImportError:
        raise ImportError("auth kind 'azure' needs azure-identity: pip install 'llm-multicloud[azure]'") from None
    return identity


def build_credential(spec: dict[str, Any]) -> Any:
    """An azure.identity credential from catalog settings (no secret in the catalog:
    a client secret comes from the environment variable named by client_secret_env)."""
    identity = _identity_module()
    which = spec.get("credential", "default")
    kw: dict[str, Any] = {}
    if spec.get("authority"):
        kw["authority"] = spec["authority"]
    if which == "default":
        if spec.get("client_id"):
            kw["managed_identity_client_id"] = spec["client_id"]
        return identity.DefaultAzureCredential(**kw)
    if which == "managed_identity":
        return identity.ManagedIdentityCredential(client_id=spec.get("client_id"))
    if which == "workload_identity":
        for k in ("tenant_id", "client_id", "token_file_path"):
            if spec.get(k):
                kw[k] = spec[k]
        return identity.WorkloadIdentityCredential(**kw)
    if which == "client_secret":
        env = spec.get("client_secret_env") or "AZURE_CLIENT_SECRET"
        secret = os.environ.get(env)
        if not secret:
            raise CredentialUnavailable(f"azure (client_secret): environment variable {env!r} is not set or empty")
        return identity.ClientSecretCredential(spec["tenant_id"], spec["client_id"], secret, **kw)
    raise ValueError(f"unknown azure credential {which!r}")


class AzureCredential(TokenCredential):
    """Bearer tokens from an azure-core ``TokenCredential`` (sync or async) for one scope."""

    kind = "azure"
    regional_quota = True

    def __init__(
        self, credential: Any, *, scope: str = DEFAULT_SCOPE, label: str | None = None, identity: str | None = None
    ) -> None:
        get_token = getattr(credential, "get_token", None)
        if not callable(get_token):
            raise TypeError(
                f"an azure credential has get_token(*scopes) (azure.identity...), got {type(credential).__name__}"
            )
        self._cred = credential
        self.scope = scope
        self._label = label or type(credential).__name__
        super().__init__(f"azure:{identity or f'{self._label}:{id(credential):x}'}")
        self.blocking = not inspect.iscoroutinefunction(get_token)

    def fetch(self) -> Token:
        tok = self._cred.get_token(self.scope)
        return Token(tok.token, float(tok.expires_on))

    async def afetch(self) -> Token:
        tok = await self._cred.get_token(self.scope)
        return Token(tok.token, float(tok.expires_on))

    def describe(self) -> str:
        return f"azure ({self._label}, scope {self.scope})"


def azure(credential: Any = None, *, scope: str = DEFAULT_SCOPE) -> AzureCredential:
    """Entra ID bearer tokens: ``credential`` is any azure-core token credential
    (default: ``azure.identity.DefaultAzureCredential()``)."""
    if credential is None:
        credential = build_credential({})
    return AzureCredential(credential, scope=scope)

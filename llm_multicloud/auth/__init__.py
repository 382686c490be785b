"""Credentials: one per endpoint, applied to the final request of every attempt.

Kinds (``auth: {kind: ...}`` in the catalog, or an object from code)::

    static        api_key / api_key_env / api_key_file (the default)     no extra
    provider      lmc.auth.provider(fn): any sync or async callable       no extra
    azure         azure.identity credential + scope (Entra ID)            [azure]
    gcp           google-auth Application Default Credentials             [gcp]
    aws           SigV4 over the exact bytes, service bedrock             [aws]
    aws-api-key   Bedrock API key as a bearer token                       no extra

Only this package touches secrets on their way out; see docs/auth.md.
The cloud SDKs are imported when a credential of their kind is built, never by
``import llm_multicloud``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio

from .base import Credential, CredentialUnavailable, OutgoingRequest, Token, TokenCredential
from .provider import provider
from .static import EnvKey, FileKey, NoAuth, StaticKey

__all__ = [
    "Credential",
    "CredentialUnavailable",
    "EnvKey",
    "FileKey",
    "NoAuth",
    "OutgoingRequest",
    "Refresher",
    "StaticKey",
    "Token",
    "TokenCredential",
    "aws",
    "aws_api_key",
    "azure",
    "build",
    "gcp",
    "provider",
    "send",
]

KINDS = ("static", "provider", "azure", "gcp", "aws", "aws-api-key", "none")
#: the optional extra each kind needs (pip install 'llm-multicloud[extra]')
EXTRAS = {"azure": "azure", "gcp": "gcp", "aws": "aws"}
_FIELDS: dict[str, set[str]] = {
    "static": {"api_key", "api_key_env", "api_key_file", "header"},
    "aws-api-key": {"api_key", "api_key_env", "api_key_file"},
    "azure": {"credential", "scope", "client_id", "tenant_id", "client_secret_env", "authority", "token_file_path"},
    "gcp": {"credentials_file", "scopes"},
    "aws": {"profile", "region", "service"},
    "none": set(),
    "provider": set(),
}
_AZURE_CREDENTIALS = ("default", "managed_identity", "workload_identity", "client_secret")


def azure(credential: Any = None, *, scope: str | None = None) -> Credential:
    """Entra ID tokens from an ``azure.identity`` (or any azure-core) credential. Needs ``[azure]``
    unless ``credential`` is given."""
    from .azure_entra import DEFAULT_SCOPE, AzureCredential, build_credential

    return AzureCredential(credential if credential is not None else build_credential({}), scope=scope or DEFAULT_SCOPE)


def gcp(credentials: Any = None, *, credentials_file: str | None = None) -> Credential:
    """Google access tokens (ADC, a credentials file, or google-auth credentials). Needs ``[gcp]``."""
    from .gcp_adc import GcpCredential

    return GcpCredential(credentials, credentials_file=credentials_file)


def aws(*, profile: str | None = None, region: str | None = None) -> Credential:
    """SigV4 signing for Bedrock with botocore's credential chain. Needs ``[aws]``."""
    from .aws_sigv4 import AwsSigV4

    return AwsSigV4(profile=profile, region=region)


def aws_api_key(key: str | None = None, *, env: str = "AWS_BEARER_TOKEN_BEDROCK") -> Credential:
    """A Bedrock API key as a bearer token (literal, or read from ``env`` on each use)."""
    from .aws_sigv4 import aws_api_key as make

    return make(key, env=env)


def bind(cred: Credential, region: str) -> Credential:
    """The credential as used by one endpoint (SigV4 takes the endpoint's region)."""
    b = getattr(cred, "bind", None)
    return b(region) if callable(b) else cred


def build(
    *,
    where: str,
    region: str,
    auth: Any,
    api_key: str | None,
    api_key_env: str | None,
    api_key_file: str | None,
    header: str,
    problems: list[str],
    cache: dict[str, Credential] | None = None,
) -> Credential:
    """The credential of one catalog endpoint; what is wrong goes to ``problems`` (one
    line each, secret-free, with the fix). Endpoints with the same cloud ``auth:``
    settings share one credential object (``cache``): one token, one refresh."""
    given = [n for n, v in (("api_key", api_key), ("api_key_env", api_key_env), ("api_key_file", api_key_file)) if v]
    if isinstance(auth, Credential):
        if given:
            problems.append(f"{where}: give auth or {given[0]}, not both")
        return bind(auth, region)
    if auth is not None and not isinstance(auth, Mapping):
        problems.append(
            f"{where}.auth: must be a mapping with kind: ({', '.join(KINDS)}) or a credential object from code "
            f"such as lmc.auth.provider(fn) (got {type(auth).__name__})"
        )
        return NoAuth()
    if auth is None:
        if len(given) > 1:
            problems.append(f"{where}: give one of api_key, api_key_env, api_key_file (got {', '.join(given)})")
        return _static(where, api_key, api_key_env, api_key_file, header, problems, kind="static")
    spec = dict(auth)
    kind = str(spec.pop("kind", "static")).strip().lower()
    if kind not in KINDS:
        problems.append(f"{where}.auth.kind: {kind!r} is not a credential kind; use one of: {', '.join(KINDS)}")
        return NoAuth()
    if given and kind not in ("static", "aws-api-key"):
        problems.append(f"{where}: {given[0]} is a static key; remove it or use auth kind static (got kind {kind})")
    unknown = sorted(set(spec) - _FIELDS[kind])
    if unknown:
        allowed = ", ".join(sorted(_FIELDS[kind])) or "none"
        problems.append(f"{where}.auth: unknown field(s) {unknown} for kind {kind} (allowed: {allowed})")
        return NoAuth()
    ckey = None
    if cache is not None and kind in ("azure", "gcp", "aws"):
        import json

        ckey = json.dumps([kind, spec, region if kind == "aws" else None], sort_keys=True, default=str)
        if ckey in cache:
            return cache[ckey]
    try:
        cred = _build_kind(where, kind, spec, region, api_key, api_key_env, api_key_file, header, problems)
        if ckey is not None and cache is not None:
            cache[ckey] = cred
        return cred
    except ImportError:
        extra = EXTRAS.get(kind, kind)
        problems.append(
            f"{where}.auth: kind {kind} needs the optional extra [{extra}]: pip install 'llm-multicloud[{extra}]'"
        )
    except CredentialUnavailable as exc:
        problems.append(f"{where}.auth: {exc}")
    return NoAuth()


def _build_kind(
    where: str,
    kind: str,
    spec: dict[str, Any],
    region: str,
    api_key: str | None,
    api_key_env: str | None,
    api_key_file: str | None,
    header: str,
    problems: list[str],
) -> Credential:
    if kind == "none":
        return NoAuth()
    if kind == "provider":
        problems.append(
            f"{where}.auth: kind provider takes a callable, which YAML cannot hold; "
            "pass auth=lmc.auth.provider(fn) in the catalog dict from code"
        )
        return NoAuth()
    if kind in ("static", "aws-api-key"):
        key = spec.get("api_key", api_key)
        env = spec.get("api_key_env", api_key_env)
        path = spec.get("api_key_file", api_key_file)
        if kind == "aws-api-key" and not (key or env or path):
            env = "AWS_BEARER_TOKEN_BEDROCK"
        if key is not None and hasattr(key, "get_secret_value"):
            key = key.get_secret_value()
        return _static(where, key, env, path, str(spec.get("header", header)), problems, kind=kind)
    if kind == "azure":
        from .azure_entra import DEFAULT_SCOPE, AzureCredential, build_credential

        which = spec.get("credential", "default")
        if which not in _AZURE_CREDENTIALS:
            problems.append(f"{where}.auth.credential: {which!r} is not one of {', '.join(_AZURE_CREDENTIALS)}")
            return NoAuth()
        if which == "client_secret" and not (spec.get("tenant_id") and spec.get("client_id")):
            problems.append(
                f"{where}.auth: credential client_secret needs tenant_id and client_id (and client_secret_env)"
            )
            return NoAuth()
        ident = ":".join(str(spec.get(k) or "") for k in ("tenant_id", "client_id"))
        return AzureCredential(
            build_credential(spec), scope=spec.get("scope", DEFAULT_SCOPE), label=which, identity=f"{which}:{ident}"
        )
    if kind == "gcp":
        from .gcp_adc import CLOUD_PLATFORM, GcpCredential

        scopes = spec.get("scopes") or [CLOUD_PLATFORM]
        return GcpCredential(credentials_file=spec.get("credentials_file"), scopes=tuple(scopes))
    if kind == "aws":
        from .aws_sigv4 import SERVICE, AwsSigV4

        return AwsSigV4(
            profile=spec.get("profile"), region=spec.get("region") or region, service=spec.get("service", SERVICE)
        )
    raise AssertionError(kind)  # pragma: no cover - KINDS is checked above


def _static(
    where: str,
    key: str | None,
    env: str | None,
    path: str | None,
    header: str,
    problems: list[str],
    *,
    kind: str,
) -> Credential:
    cred: Credential
    if key:
        cred = StaticKey(key, header=header)
    elif env:
        if not os.environ.get(env):
            problems.append(f"{where}.api_key_env: environment variable {env!r} is not set or empty")
        cred = EnvKey(env, header=header)
    elif path:
        try:
            cred = FileKey(path, header=header)
        except CredentialUnavailable as exc:
            problems.append(f"{where}.api_key_file: {exc}")
            return NoAuth()
    else:
        return NoAuth()
    if kind != "static":
        cred.kind = kind
    return cred


async def send(
    upstream: Any,
    cred: Credential,
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None,
    *,
    connect_s: float,
    read_s: float,
    pool_s: float | None = None,
) -> tuple[Any, bool]:
    """Authenticate and send one request; on a 401 from a credential that can refresh,
    refresh and send it once more (the same endpoint, re-signed). Returns the open
    response and whether that second send happened. The one place a credential
    meets a request: attempts, hedges, retries, resumes and probes all come here."""
    io = upstream.io
    blocking = not io.concurrent  # a sync caller's thread: never suspend
    out = OutgoingRequest(method, url, list(headers), body, blocking, io.time_left())
    used = await cred.apply(out)
    resp = await upstream.open(
        out.method, out.url, out.headers, out.body, connect_s=connect_s, read_s=read_s, pool_s=pool_s
    )
    if resp.status != 401 or not cred.refreshable:
        return resp, False
    await resp.aclose()
    cred.invalidate(used)
    out = OutgoingRequest(method, url, list(headers), body, blocking, io.time_left())
    await cred.apply(out)
    resp = await upstream.open(
        out.method, out.url, out.headers, out.body, connect_s=connect_s, read_s=read_s, pool_s=pool_s
    )
    return resp, True


class Refresher:
    """Background refresh for every credential of a catalog, on the MultiCloud's loop:
    fetches each token once at start (so the first request does not wait) and again
    ahead of its expiry. Bounded: it sleeps until the next due refresh (at most
    ``max_sleep_s``) and stops with :meth:`stop`."""

    def __init__(self, creds: Callable[[], Iterable[Credential]], *, max_sleep_s: float = 30.0) -> None:
        #: called on every round: a live catalog update brings its new credentials along
        self._source = creds
        self.max_sleep_s = max_sleep_s
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    @property
    def creds(self) -> list[Credential]:
        seen: dict[int, Credential] = {}
        for c in self._source():
            if type(c).next_refresh is not Credential.next_refresh:  # it has something to refresh
                seen.setdefault(id(c), c)
        return list(seen.values())

    def __bool__(self) -> bool:
        return bool(self.creds)

    async def run(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._stopped:
                return
            while True:
                now = time.time()
                wake = now + self.max_sleep_s
                for c in self.creds:
                    due = c.next_refresh(now)
                    if due is None:
                        continue
                    if due <= now:
                        with contextlib.suppress(Exception):
                            c.refresh_soon()
                        # in flight now; look again soon to schedule the next one
                        wake = min(wake, now + 0.05)
                    else:
                        wake = min(wake, due)
                await anyio.sleep(max(wake - time.time(), 0.01) if math.isfinite(wake) else self.max_sleep_s)

    async def stop(self) -> None:
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

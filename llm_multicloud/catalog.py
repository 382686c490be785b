"""The region catalog: which deployments of which models exist, where, at what price.

A catalog is loaded once (YAML, JSON, TOML, a dict, or an existing
:class:`Catalog`), validated by pydantic, and *resolved* into immutable
:class:`Endpoint` values that the router reads on every request without further
parsing: residency footprints, coordinates, prices and served model names are
all computed here, at load time, so that the hot path only compares sets and
floats.

Residency is modelled as a *footprint*: the set of countries an endpoint may
process data in. A public cloud region has a one-country footprint taken from the
built-in region table (:mod:`llm_multicloud.regions`). A ``residency:`` list in the
catalog overrides it with the intersection of its tags (``[EU]`` = "somewhere in
the EU", ``[DE]`` = Germany) and must not contradict the region table. A request
constraint is a set of allowed countries; an endpoint complies when its whole
footprint lies inside it. That is fail-closed by construction: an endpoint that is
"somewhere in the EU" complies with ``EU`` but not with ``DE``.

Errors name the field path, the bad value and what is allowed, e.g.::

    endpoints[1] (id='gcp-euw4').region: 'europe-wset4' is not a gcp region;
    did you mean: europe-west4, europe-west1, europe-west2?
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from . import auth as auth_mod
from . import regions
from .auth import Credential
from .auth.presets import expand as expand_preset
from .config_errors import describe
from .errors import CatalogError
from .limits import Limits
from .policy import Policy, Timeouts, merge_dicts

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
#: An HTTP header name (RFC 9110 token).
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: A header value we send: printable ASCII, spaces and tabs only between visible characters.
_VALUE_RE = re.compile(r"^(?:[\x21-\x7e](?:[ \t]*[\x21-\x7e])*)?$")
#: A credential: printable ASCII without spaces (it goes into a header as it is).
_KEY_RE = re.compile(r"^[\x21-\x7e]+$")


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an HTTP header name (None: it can)."""
    if not _TOKEN_RE.fullmatch(name):
        return (
            f"{_short(name)} is not a valid HTTP header name: use letters, digits and - "
            "(no spaces, colons, CR/LF or other control characters)"
        )
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as an HTTP header value (None: it can)."""
    if not _VALUE_RE.fullmatch(value):
        return (
            "is not a valid HTTP header value: printable ASCII only, no CR/LF or other control "
            "characters, no leading or trailing whitespace"
        )
    return None


def clean_key(raw: str) -> tuple[str, str | None]:
    """A credential as read from the catalog, an environment variable or a mounted file:
    surrounding whitespace (the newline at the end of a secret file) is stripped;
    spaces or control characters inside, or non-ASCII characters, are a problem. The
    problem never shows the value."""
    key = raw.strip()
    if not key:
        return key, "is empty (or only whitespace)"
    if not _KEY_RE.fullmatch(key):
        bad = next(c for c in key if not ("\x21" <= c <= "\x7e"))
        what = "a space" if bad == " " else "non-ASCII text" if ord(bad) > 0x7E else "a control character"
        return key, (
            f"contains {what} (value hidden: it is a secret); a key is printable ASCII without "
            "spaces: fix the secret where it is stored"
        )
    return key, None


#: ``${NAME}``, ``$NAME``, ``%NAME%``, ``env:NAME``: a variable reference, not a key.
_ENV_REF_RE = re.compile(r"^(?:\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)|%([A-Za-z_]\w*)%|env:([A-Za-z_]\w*))$", re.ASCII)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pricing(_Strict):
    """Prices in USD. Per million tokens, or a GPU-hour price plus throughput for
    self-hosted endpoints (converted to per-token prices at load)."""

    input_per_mtok: float | None = Field(None, ge=0.0)
    output_per_mtok: float | None = Field(None, ge=0.0)
    cached_input_per_mtok: float | None = Field(None, ge=0.0)
    gpu_hour: float | None = Field(None, ge=0.0, description="USD per GPU hour (self-hosted)")
    gpus: float = Field(1.0, gt=0.0)
    tokens_per_s: float | None = Field(None, gt=0.0, description="sustained output tokens/s of the deployment")

    @model_validator(mode="after")
    def _complete(self) -> Pricing:
        per_tok = self.input_per_mtok is not None, self.output_per_mtok is not None
        if any(per_tok) and not all(per_tok):
            raise ValueError("give both input_per_mtok and output_per_mtok (a half price is not a price)")
        if (self.gpu_hour is None) != (self.tokens_per_s is None) and not all(per_tok):
            raise ValueError("a GPU-hour price needs tokens_per_s (sustained output tokens/s) to become per-token")
        if not any(per_tok) and self.gpu_hour is None and self.cached_input_per_mtok is None:
            raise ValueError("empty pricing: give input_per_mtok and output_per_mtok, or gpu_hour and tokens_per_s")
        return self

    def resolved(self) -> tuple[float, float, float] | None:
        """(input, output, cached input) USD per million tokens, or None if unknown."""
        if self.input_per_mtok is not None and self.output_per_mtok is not None:
            cached = self.cached_input_per_mtok if self.cached_input_per_mtok is not None else self.input_per_mtok
            return (self.input_per_mtok, self.output_per_mtok, cached)
        if self.gpu_hour is not None and self.tokens_per_s is not None:
            per_mtok = self.gpu_hour * self.gpus / (self.tokens_per_s * 3600.0) * 1e6
            # A self-hosted GPU costs the same whatever it processes; prompt tokens are
            # ~an order of magnitude cheaper to process than generated ones (prefill).
            return (per_mtok / 10.0, per_mtok, per_mtok / 10.0)
        return None


class ModelSpec(_Strict):
    context_window: int | None = Field(None, gt=0)
    #: Per-model deadlines (reasoning models need a long first token).
    timeouts: dict[str, float] | None = None


class LimitsSpec(_Strict):
    """A deployment's quota: requests and tokens per minute (see docs/limits.md)."""

    rpm: float | None = Field(None, gt=0.0)
    tpm: float | None = Field(None, gt=0.0)
    #: The bucket holds this many seconds' worth of each limit (the largest burst).
    burst_s: float = Field(10.0, gt=0.0, le=3600.0)

    @model_validator(mode="after")
    def _some(self) -> LimitsSpec:
        if self.rpm is None and self.tpm is None:
            raise ValueError("give rpm, tpm or both (e.g. limits: {rpm: 600, tpm: 100000})")
        return self


class EndpointSpec(_Strict):
    id: str
    provider: str
    region: str
    base_url: str
    api_key_env: str | None = None
    api_key: SecretStr | None = None
    #: a file holding the key, re-read when it changes (Kubernetes secret mounts)
    api_key_file: str | None = None
    #: the credential: {kind: static|azure|gcp|aws|aws-api-key|none, ...}, or a
    #: Credential object from code (lmc.auth.provider(fn)...); see docs/auth.md
    auth: Any = None
    #: query parameters sent to this endpoint only (Azure's api-version...)
    query: dict[str, str] = Field(default_factory=dict)
    #: bedrock | vertex | azure-openai: expanded at load (see llm_multicloud.auth.presets)
    preset: str | None = None
    #: the endpoint processes data anywhere in this bloc (EU, US...), or "global"
    #: (anywhere: no residency); set by presets for multi-region deployments
    processing_zone: str | None = None
    #: Override the residency the region table implies (intersection of these tags).
    residency: list[str] | None = None
    #: Country of an endpoint whose region is not in the table (on-prem, other clouds).
    country: str | None = None
    #: [lat, lon] of an endpoint whose region is not in the table.
    location: tuple[float, float] | None = Field(None, description="[latitude, longitude] in degrees")
    models: dict[str, str] | list[str] = Field(
        description="a mapping of logical name to served name ({llama-3.1-8b: meta-llama/Llama-3.1-8B-Instruct}) "
        "or a list of names served as they are ([llama-3.1-8b])"
    )
    pricing: Pricing | None = None
    weight: float = Field(1.0, gt=0.0)
    max_concurrency: int | None = Field(None, ge=1)
    tags: dict[str, str] = Field(default_factory=dict)
    #: Endpoints sharing one upstream quota (same account/key) cool down together.
    quota_domain: str | None = None
    #: Failure domain for hedging; default: provider/region.
    failure_domain: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    auth_header: str = "authorization"
    probe_path: str | None = None
    metrics_path: str | None = None
    timeouts: dict[str, float] | None = None
    #: How this endpoint continues a partial assistant message (stream resume):
    #: vllm (continue_final_message), prefix (prefix: true), none (cannot).
    resume: Literal["vllm", "prefix", "none"] | None = None
    #: rpm/tpm quota; endpoints of one quota domain share one bucket.
    limits: LimitsSpec | None = None

    @field_serializer("auth")
    def _auth_dump(self, v: Any) -> Any:
        """Dumps (catalog versions, CLI) show a credential's kind and settings, never a secret."""
        if isinstance(v, Credential):
            return v.describe()
        if isinstance(v, Mapping):
            return {k: ("***" if _secret_name(str(k)) else x) for k, x in v.items()}
        return None if v is None else repr(type(v).__name__)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError("must be 1-64 characters: letters, digits and _ . : - (starting with a letter/digit)")
        return v

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str) -> str:
        v = v.strip().lower()
        if not v:
            raise ValueError("must not be empty (aws, gcp, azure, oci, onprem, or any name)")
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if any(c <= " " or c == "\x7f" for c in v):
            raise ValueError("must not contain spaces or control characters (CR/LF, tabs...)")
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://host/v1")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535, e.g. https://host:8443/v1") from None
        if port == 0:
            raise ValueError("port 0 cannot be connected to: use a port from 1 to 65535")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return v.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            bad = header_name_problem(name)
            if bad is not None:
                raise ValueError(bad)
            bad = header_value_problem(value)
            if bad is not None:
                raise ValueError(f"the value of header {name!r} {bad}")
        return v

    @field_validator("auth_header")
    @classmethod
    def _auth_header(cls, v: str) -> str:
        bad = header_name_problem(v)
        if bad is not None:
            raise ValueError(bad + " (e.g. authorization, api-key, x-api-key)")
        return v


class CatalogSpec(_Strict):
    models: dict[str, ModelSpec] | None = None
    endpoints: list[EndpointSpec] = Field(min_length=1)
    policy: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Endpoint:
    """A resolved endpoint. Immutable; its key is never shown in repr/str."""

    index: int
    id: str
    provider: str
    region: str
    base_url: str
    scheme: str
    host: str
    port: int
    path_prefix: str
    _key: str | None = field(repr=False)
    auth_header: str
    footprint: frozenset[str]  # countries it may process data in (empty: unknown)
    residency: tuple[str, ...]  # human-readable residency tags
    location: tuple[float, float] | None
    models: Mapping[str, str]  # logical -> served name
    price: tuple[float, float, float] | None  # USD per Mtok: input, output, cached input
    weight: float
    max_concurrency: int | None
    tags: Mapping[str, str]
    quota_domain: str
    failure_domain: str
    headers: tuple[tuple[str, str], ...]
    probe_path: str | None
    metrics_path: str | None
    timeouts: Mapping[str, float]  # overrides of the policy's Timeouts
    resume: str | None
    limits: Limits | None = None  # rpm/tpm quota of its quota domain
    credential: Credential = field(repr=False, default_factory=auth_mod.NoAuth)
    query: tuple[tuple[str, str], ...] = ()
    preset: str | None = None

    @property
    def has_key(self) -> bool:
        return bool(self._key)

    def secret(self) -> str | None:
        """The endpoint's credential. Only the transport calls this, for this endpoint."""
        return self._key

    def auth_headers(self) -> list[tuple[str, str]]:
        """This endpoint's own static headers and static key (the request path uses
        :attr:`credential`, which also refreshes and signs)."""
        out = list(self.headers)
        if self._key:
            out.append((self.auth_header, f"Bearer {self._key}" if self.auth_header == "authorization" else self._key))
        return out

    def __repr__(self) -> str:
        return f"Endpoint(id={self.id!r}, provider={self.provider!r}, region={self.region!r})"

    __str__ = __repr__


class Catalog:
    """A validated, resolved catalog. Build with :meth:`Catalog.load`."""

    __slots__ = (
        "_by_id",
        "_owned_headers",
        "_owned_query",
        "_serving",
        "_urls",
        "endpoints",
        "models",
        "policy_data",
        "spec",
    )

    def __init__(self, spec: CatalogSpec, endpoints: list[Endpoint]) -> None:
        self.spec = spec
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._by_id = {e.id: e for e in endpoints}
        names: dict[str, ModelSpec] = dict(spec.models or {})
        for e in endpoints:
            for m in e.models:
                names.setdefault(m, ModelSpec())
        self.models: dict[str, ModelSpec] = names
        self._serving: dict[str, tuple[Endpoint, ...]] = {
            m: tuple(e for e in endpoints if m in e.models) for m in names
        }
        self.policy_data: dict[str, Any] = dict(spec.policy or {})
        # Names an endpoint sets itself belong to the catalog: the caller's values for
        # them go nowhere (an api-version meant for Azure must not reach Vertex).
        self._owned_query = OWNED_QUERY | {k for e in endpoints for k, _ in e.query}
        self._owned_headers = {k for e in endpoints for k, _ in e.headers}
        #: request URLs built so far, per (endpoint, API path, caller's query): a path is
        #: joined and a query filtered once, not per attempt (bounded: queries are the
        #: caller's, and a catalog generation lives long)
        self._urls: dict[tuple[str, str, str], str] = {}

    # -- loading ----------------------------------------------------------------
    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any] | Catalog) -> Catalog:
        """Load from a path (``.yaml``/``.yml``, ``.json``, ``.toml``), a dict, or a Catalog."""
        if isinstance(source, Catalog):
            return source
        if isinstance(source, Mapping):
            data: Any = dict(source)
            origin = "catalog"
        elif not isinstance(source, str | os.PathLike):
            raise CatalogError(
                f"a catalog is a path, a mapping or a Catalog (got {type(source).__name__}); "
                "the top level is a mapping with 'endpoints:'"
            )
        else:
            path = Path(source)
            origin = str(path)
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise CatalogError(f"cannot read catalog {path}: {exc.strerror or exc}") from None
            data = _parse_text(_decode(content, path), path)
        if not isinstance(data, dict):
            raise CatalogError(
                f"{origin}: the top level must be a mapping with 'endpoints:' (got {type(data).__name__})"
            )
        preset_problems: list[str] = []
        if isinstance(data.get("endpoints"), list):
            data = dict(data)
            data["endpoints"] = [
                expand_preset(item, f"endpoints[{i}] (id={item.get('id')!r})", preset_problems)
                if isinstance(item, dict)
                else item
                for i, item in enumerate(data["endpoints"])
            ]
        if preset_problems:
            raise CatalogError(f"{origin} is invalid:\n  " + "\n  ".join(preset_problems))
        try:
            spec = CatalogSpec.model_validate(data)
        except ValidationError as exc:
            # Also report what is wrong in the endpoints that did parse (an unknown
            # region...), so that one run lists every problem, not the first layer.
            more: list[str] = []
            raw = data.get("endpoints")
            stub = CatalogSpec.model_construct(models=None, endpoints=[], policy=None)
            for i, item in enumerate(raw if isinstance(raw, list) else []):
                try:
                    _resolve(i, EndpointSpec.model_validate(item), stub, more)
                except ValidationError:
                    if isinstance(item, dict):
                        where = f"endpoints[{i}] (id={item.get('id')!r})"
                        bad = _region_problem(where, str(item.get("provider", "")).lower(), str(item.get("region", "")))
                        more += [bad] if bad else []
            more += _duplicate_ids(raw) + _policy_problems(data.get("policy"))
            msg = _format_validation(exc, data, origin)
            raise CatalogError("\n  ".join([msg, *more])) from None
        problems: list[str] = []
        creds: dict[str, Credential] = {}
        endpoints = [_resolve(i, e, spec, problems, creds) for i, e in enumerate(spec.endpoints)]
        problems += _duplicate_ids(data.get("endpoints"))
        # An identity used by one endpoint only is just that endpoint's quota domain.
        shared = Counter(e.quota_domain for e in endpoints)
        endpoints = [
            replace(e, quota_domain=f"endpoint:{e.id}")
            if shared[e.quota_domain] == 1 and e.quota_domain.startswith("identity:") and not s.quota_domain
            else e
            for e, s in zip(endpoints, spec.endpoints, strict=True)
        ]
        for name, m in (spec.models or {}).items():
            problems += _timeout_problems(m.timeouts or {}, f"models.{name}.timeouts")
        problems += _limit_problems(endpoints)
        problems += _policy_problems(spec.policy)
        if problems:
            raise CatalogError(f"{origin} is invalid:\n  " + "\n  ".join(problems))
        return cls(spec, endpoints)

    # -- queries ----------------------------------------------------------------
    def serving(self, model: str) -> tuple[Endpoint, ...] | None:
        """Endpoints that serve a logical model; None for an unknown model."""
        return self._serving.get(model)

    def get(self, endpoint_id: str) -> Endpoint:
        return self._by_id[endpoint_id]

    def policy(self, override: Mapping[str, Any] | Policy | None = None) -> Policy:
        """The catalog's policy merged with an override (dict merges key by key)."""
        if isinstance(override, Policy):
            return override
        data = merge_dicts(self.policy_data, dict(override or {}))
        try:
            return Policy.model_validate(data)
        except ValidationError as exc:
            raise CatalogError(_format_validation(exc, data, "policy", Policy)) from None

    def secrets(self) -> list[str]:
        """Every endpoint's current secret values (a snapshot), for redaction."""
        return list(self.live_secrets())

    def live_secrets(self, also: Iterable[str] = ()) -> _Secrets:
        """Every endpoint's secrets as they are when iterated (rotated tokens included),
        then those of ``also`` (an earlier catalog generation's)."""
        return _Secrets(self.endpoints, also)

    def request_for(
        self, ep: Endpoint, path: str, query: str, headers: list[tuple[str, str]]
    ) -> tuple[str, list[tuple[str, str]]]:
        """URL and headers of a request to ``ep``: the caller's query parameters and
        headers minus those some endpoint owns (its ``query:``/``headers:`` names and
        the clouds' own: api-version, key, x-amz-*...), plus this endpoint's own. The
        URL is built once per endpoint, path and query (memoised)."""
        key = (ep.id, path, query)
        # (only for this generation's own endpoint: an attempt of an earlier generation's
        # may still be running after a reload, and its base_url may differ)
        mine = self._by_id.get(ep.id) is ep
        url = self._urls.get(key) if mine else None
        if url is None:
            url = f"{ep.base_url}/{path}"
            if query or ep.query:
                pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if not self._owns_query(k)]
                pairs += list(ep.query)
                if pairs:
                    url += "?" + urlencode(pairs)
            if mine and len(self._urls) < _MAX_URLS:
                self._urls[key] = url
        owned = self._owned_headers
        out = [h for h in headers if h[0] not in owned and not h[0].startswith(OWNED_HEADER_PREFIXES)]
        out += ep.headers
        return url, out

    def _owns_query(self, name: str) -> bool:
        low = name.lower()
        return low in self._owned_query or low.startswith("x-amz-")

    def __repr__(self) -> str:
        return f"Catalog({len(self.endpoints)} endpoints, models={sorted(self.models)})"


def _decode(raw: bytes, path: Path) -> str:
    """A catalog file's text: UTF-8 (a BOM is accepted), else a CatalogError that says
    what the file seems to be instead."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CatalogError(f"{path}: the file is UTF-16 encoded; save the catalog as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        binary = b"\0" in raw[:8192]
        what = "a binary file, not a text catalog" if binary else "not UTF-8 text (another encoding?)"
        raise CatalogError(
            f"{path}: {what}: byte 0x{raw[exc.start]:02x} at offset {exc.start} is not UTF-8; "
            "give the path of a YAML, JSON or TOML catalog saved as UTF-8"
        ) from None
    bad = next((i for i, c in enumerate(text) if c < " " and c not in "\t\n\r"), None)
    if bad is not None:
        line = text.count("\n", 0, bad) + 1
        raise CatalogError(
            f"{path}: line {line} contains the control character {text[bad]!r} (a binary file, or a "
            "pasted escape?); a catalog is plain text: remove it"
        )
    return text


#: At most this many request URLs are memoised per catalog generation.
_MAX_URLS = 4096

#: Query parameters that belong to one cloud's endpoint, never forwarded from the caller.
OWNED_QUERY = frozenset({"api-version", "api_version", "key", "access_token", "sig", "signature"})
#: Request header prefixes that belong to one cloud (signatures, Google project routing).
OWNED_HEADER_PREFIXES = ("x-amz-", "x-goog-", "ocp-apim-", "x-ms-client-", "x-functions-key")


class _Secrets:
    """A live view of every endpoint's current secrets (iterable, for redact())."""

    __slots__ = ("_also", "_eps")

    def __init__(self, eps: tuple[Endpoint, ...], also: Iterable[str] = ()) -> None:
        self._eps = eps
        self._also = also

    def __iter__(self) -> Iterator[str]:
        for e in self._eps:
            yield from e.credential.secrets()
        yield from self._also


def _secret_name(name: str) -> bool:
    low = name.lower()
    return ("key" in low or "secret" in low or "token" in low) and not low.endswith(("_env", "_file", "_path"))


def _identity_domain(cred: Credential, region: str) -> str | None:
    """The default quota domain of an endpoint: its credential's identity (and region,
    for cloud identities, whose quotas are regional)."""
    if not cred.identity:
        return None
    return f"identity:{cred.identity}" + (f"@{region}" if cred.regional_quota else "")


def _parse_text(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml", ""):
            return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        # json/toml errors are ValueErrors, and so are YAML values that parse but do
        # not exist (a timestamp like 2024-13-45).
        raise CatalogError(f"{path}: not valid {suffix.lstrip('.').upper() or 'YAML'}: {exc}") from None
    raise CatalogError(f"{path}: unknown catalog format {suffix!r}; use .yaml, .yml, .json or .toml")


def _format_validation(exc: ValidationError, data: Any, origin: str, model: type[BaseModel] = CatalogSpec) -> str:
    return f"{origin} is invalid:\n  " + "\n  ".join(describe(exc, data, model))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _duplicate_ids(raw: Any) -> list[str]:
    """Every reuse of an endpoint id, also in a catalog with other errors."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        eid = item.get("id") if isinstance(item, dict) else None
        if not isinstance(eid, str):
            continue
        if eid in seen:
            out.append(f"endpoints[{i}].id: {eid!r} is already used by endpoints[{seen[eid]}]; ids must be unique")
        seen.setdefault(eid, i)
    return out


def _policy_problems(policy: Any) -> list[str]:
    """The catalog's own ``policy:`` section, checked at load with everything else."""
    if not isinstance(policy, dict):
        return []
    try:
        Policy.model_validate(policy)
    except ValidationError as exc:
        return [f"policy.{line}" for line in describe(exc, policy, Policy)]
    return []


def _limit_problems(endpoints: list[Endpoint]) -> list[str]:
    """Endpoints of one quota domain share one bucket: their limits must agree."""
    first: dict[str, Endpoint] = {}
    out = []
    for e in endpoints:
        if e.limits is None:
            continue
        seen = first.setdefault(e.quota_domain, e)
        if seen.limits != e.limits:
            out.append(
                f"endpoints[{e.index}] (id={e.id!r}).limits: {_short(e.limits)} differs from "
                f"{seen.id!r}'s {_short(seen.limits)} in the same quota domain {e.quota_domain!r}; "
                "give the domain's limits once (or identically)"
            )
    return out


def _timeout_problems(timeouts: Mapping[str, Any], where: str) -> list[str]:
    """Deadline overrides checked against the policy's Timeouts fields, one line each."""
    if not timeouts:
        return []
    try:
        Timeouts.model_validate(dict(timeouts))
    except ValidationError as exc:
        return [f"{where}.{line}" for line in describe(exc, dict(timeouts), Timeouts)]
    return []


def _region_problem(where: str, provider: str, region: str) -> str | None:
    """An unknown region of a provider that has a built-in table, with suggestions."""
    if provider in regions.PROVIDERS and regions.lookup(provider, region) is None:
        near = ", ".join(regions.suggest(provider, region)) or "see docs/regions.md"
        elsewhere = [r for r in regions.find_code(region) if r.provider != provider]
        what = f" (it is {elsewhere[0].provider}'s {elsewhere[0].name})" if elsewhere else ""
        return f"{where}.region: {region!r} is not a known {provider} region{what}; did you mean: {near}?"
    return None


def _resolve(
    i: int, e: EndpointSpec, spec: CatalogSpec, problems: list[str], creds: dict[str, Credential] | None = None
) -> Endpoint:
    where = f"endpoints[{i}] (id={e.id!r})"
    # -- region, country, location
    known = regions.lookup(e.provider, e.region)
    # a multi-region location (Vertex eu/us/global) is not a region of the table
    bad_region = None if e.processing_zone and known is None else _region_problem(where, e.provider, e.region)
    if bad_region:
        problems.append(bad_region)
    country = known.country if known else None
    if e.country is not None:
        c = e.country.upper()
        if c not in regions.COUNTRIES:
            problems.append(f"{where}.country: {e.country!r} is not an ISO 3166-1 alpha-2 country code (e.g. DE, US)")
        elif country is not None and c != country:
            problems.append(f"{where}.country: {c!r} contradicts region {e.region!r}, which is in {country}")
        else:
            country = c
    location: tuple[float, float] | None = None
    if e.location is not None:
        lat, lon = e.location
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            problems.append(f"{where}.location: {list(e.location)} is not [latitude, longitude] in degrees")
        location = (float(lat), float(lon))
    elif known is not None:
        location = (known.lat, known.lon)
    elif country is not None:
        location = regions.locate(country)
    # -- residency footprint
    footprint: frozenset[str] = frozenset({country}) if country else frozenset()
    residency_tags: tuple[str, ...] = tuple(sorted(regions.tags_for_country(country))) if country else ()
    zone = (e.processing_zone or "").strip()
    if zone.lower() == "global":
        # processes anywhere: serves only requests without a residency constraint
        footprint, residency_tags = frozenset(), ()
    elif zone:
        bloc = zone.upper()
        if not regions.is_known_tag(bloc):
            problems.append(
                f"{where}.processing_zone: {zone!r} is not a bloc or country tag (EU, US, APAC...) or global"
            )
        elif country is not None and country not in regions.expand_tag(bloc):
            problems.append(f"{where}.processing_zone: {bloc} does not contain region {e.region!r} ({country})")
        else:
            footprint, residency_tags = regions.expand_tag(bloc), (bloc,)
    if e.residency is not None and zone:
        problems.append(f"{where}.residency: the processing_zone {zone!r} sets the residency; remove residency:")
    elif e.residency is not None:
        tags = [t.strip().upper() for t in e.residency]
        bad = [t for t in tags if not regions.is_known_tag(t)]
        if bad or not tags:
            problems.append(
                f"{where}.residency: {e.residency!r} has unknown tags {bad}; use ISO country codes (DE, IE, US) "
                f"or blocs ({', '.join(sorted(regions.BLOCS))})"
            )
        else:
            fp = frozenset.intersection(*(regions.expand_tag(t) for t in tags))
            if not fp:
                problems.append(f"{where}.residency: {e.residency!r} has no country in common")
            elif footprint and not footprint <= fp:
                problems.append(
                    f"{where}.residency: {e.residency!r} contradicts region {e.region!r}, which is in "
                    f"{country}; remove the override or fix the region"
                )
            else:
                footprint = footprint or fp
                residency_tags = tuple(tags)
    # -- credentials
    key: str | None = None
    if e.api_key is not None and e.api_key_env is not None:
        problems.append(f"{where}: give api_key or api_key_env, not both")
    if e.api_key is not None:
        key, key_problem = clean_key(e.api_key.get_secret_value())
        if key_problem is not None:
            problems.append(f"{where}.api_key: {key_problem}")
        ref = _ENV_REF_RE.match(key)
        if ref:
            var = next(g for g in ref.groups() if g)
            problems.append(
                f"{where}.api_key: {key!r} looks like an environment variable, but the catalog does not "
                f"expand variables (that text would be sent as the key); write api_key_env: {var}"
            )
    elif e.api_key_env is not None:
        key = os.environ.get(e.api_key_env)
        if key:  # unset or empty is reported by auth.build
            key, key_problem = clean_key(key)
            if key_problem is not None:
                problems.append(f"{where}.api_key_env: the value of {e.api_key_env} {key_problem}")
    credential = auth_mod.build(
        where=where,
        region=e.region,
        auth=e.auth,
        api_key=key if e.api_key is not None else None,
        api_key_env=e.api_key_env if e.api_key is None else None,
        api_key_file=e.api_key_file,
        header=e.auth_header.lower(),
        problems=problems,
        cache=creds,
    )
    # -- models
    models = {m: m for m in e.models} if isinstance(e.models, list) else dict(e.models)
    if not models:
        problems.append(f"{where}.models: lists no model; map logical names to served names")
    if spec.models is not None:
        for m in models:
            if m not in spec.models:
                problems.append(
                    f"{where}.models: {m!r} is not declared under top-level models: "
                    f"(declared: {', '.join(sorted(spec.models)) or 'none'})"
                )
    # -- timeouts
    timeouts = dict(e.timeouts or {})
    if "total_s" in timeouts:
        problems.append(f"{where}.timeouts.total_s: the overall deadline is per request; set it per model or in policy")
    else:
        problems += _timeout_problems(timeouts, f"{where}.timeouts")
    price = e.pricing.resolved() if e.pricing else None
    if price is not None and not all(math.isfinite(p) for p in price):
        problems.append(f"{where}.pricing: prices must be finite numbers")
    parts = urlsplit(e.base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for name in ("probe_path", "metrics_path"):
        v = getattr(e, name)
        if v is not None and not v.startswith("/"):
            problems.append(f"{where}.{name}: {v!r} must start with '/'")
    return Endpoint(
        index=i,
        id=e.id,
        provider=e.provider,
        region=e.region,
        base_url=e.base_url,
        scheme=parts.scheme,
        host=parts.hostname or "",
        port=port,
        path_prefix=parts.path.rstrip("/"),
        _key=key if e.auth is None else None,
        auth_header=e.auth_header.lower(),
        footprint=footprint,
        residency=residency_tags,
        location=location,
        models=models,
        price=price,
        weight=e.weight,
        max_concurrency=e.max_concurrency,
        tags=dict(e.tags),
        # endpoints authenticating as one identity share its quota by default
        quota_domain=e.quota_domain or _identity_domain(credential, e.region) or f"endpoint:{e.id}",
        failure_domain=e.failure_domain or f"{e.provider}/{e.region}",
        headers=tuple((k.lower(), v) for k, v in e.headers.items()),
        probe_path=e.probe_path,
        metrics_path=e.metrics_path,
        timeouts=timeouts,
        resume=e.resume,
        limits=None if e.limits is None else Limits(e.limits.rpm, e.limits.tpm, e.limits.burst_s),
        credential=credential,
        query=tuple((str(k), str(v)) for k, v in e.query.items()),
        preset=e.preset,
    )


#: What a catalog can be given as: a file path (YAML, JSON or TOML), a mapping, or a
#: loaded :class:`Catalog`.
CatalogSource = str | os.PathLike[str] | Mapping[str, Any] | Catalog

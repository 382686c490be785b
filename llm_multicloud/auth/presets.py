"""Endpoint presets: write the cloud, not the URL.

``{preset: bedrock, region: eu-central-1}``, ``{preset: vertex, region: europe-west4,
project: my-proj}`` and ``{preset: azure-openai, resource: my-res, region:
swedencentral}`` expand — before validation, so the rest of the catalog checks
apply to the result — into ``provider``, ``base_url``, the default ``auth`` kind and
the residency the deployment really has:

* **bedrock**: ``https://bedrock-runtime.{region}.amazonaws.com/openai/v1`` (the
  OpenAI-compatible Chat Completions endpoint of Bedrock Runtime), SigV4 with
  service ``bedrock`` — or, given ``api_key``/``api_key_env``/``api_key_file``, a
  Bedrock API key as bearer (``aws-api-key``). Served names are Bedrock model ids
  (``openai.gpt-oss-20b-1:0``); a geographic cross-region inference profile
  (``eu.``/``us.``/``apac.`` prefix) processes anywhere in that geography, so the
  endpoint's footprint becomes that bloc, and a ``global.`` profile has no residency.
* **vertex**: Vertex AI's OpenAI-compatible endpoint
  ``.../v1/projects/{project}/locations/{location}/endpoints/openapi`` on
  ``{region}-aiplatform.googleapis.com``, the multi-region hosts
  ``aiplatform.eu.rep.googleapis.com`` / ``aiplatform.us.rep.googleapis.com``
  (``region: eu`` / ``us``: footprint EU / US), or ``aiplatform.googleapis.com``
  (``region: global``: no residency); auth ``gcp`` (ADC). Served names are
  ``publisher/model`` (``google/gemini-2.0-flash-001``, ``meta/llama-3.1-8b-instruct-maas``).
* **azure-openai**: ``https://{resource}.openai.azure.com/openai/v1`` (the v1 API:
  no ``api-version`` needed; served names are deployment names), auth ``azure``
  (Entra ID) — or, given a key, the ``api-key`` header. The resource name does not
  say where it is, so ``region`` is required; ``deployment: datazone`` processes in
  the region's data zone (EU or US), ``deployment: global`` anywhere (no residency).
"""

from __future__ import annotations

import re
from typing import Any

from .. import regions

PRESETS = ("bedrock", "vertex", "azure-openai")
_PRESET_FIELDS = {"project", "resource", "deployment"}
_GCP_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z0-9.-]+:[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_AZURE_RESOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
_BEDROCK_GEO = {"eu": "EU", "us": "US", "apac": "APAC", "jp": "JP", "au": "AU", "ca": "CA", "us-gov": "US"}
_VERTEX_MULTI = {"eu": "EU", "us": "US"}


def _provider_of(region: str) -> str | None:
    for p in regions.PROVIDERS:
        if regions.lookup(p, region) is not None:
            return p
    return None


def _has_key(ep: dict[str, Any]) -> bool:
    return any(ep.get(k) for k in ("api_key", "api_key_env", "api_key_file"))


def expand(ep: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """The endpoint with its preset expanded; problems (with the fix) go to ``problems``."""
    preset = ep.get("preset")
    if preset is None:
        stray = sorted(_PRESET_FIELDS & set(ep))
        if stray:
            problems.append(f"{where}: {', '.join(stray)} only go with a preset (preset: {' | '.join(PRESETS)})")
        return ep
    out = dict(ep)
    if preset not in PRESETS:
        problems.append(f"{where}.preset: {preset!r} is not a preset; use one of: {', '.join(PRESETS)}")
        return out
    region = out.get("region")
    if not isinstance(region, str) or not region:
        problems.append(f"{where}: preset {preset} needs region: (e.g. {_example_region(preset)})")
        return out
    cloud = {"bedrock": "aws", "vertex": "gcp", "azure-openai": "azure"}[preset]
    if out.get("provider") not in (None, cloud):
        problems.append(f"{where}.provider: preset {preset} is on {cloud}; remove provider: {out['provider']!r}")
    if out.get("base_url"):
        problems.append(f"{where}.base_url: preset {preset} sets the base URL; remove base_url (or the preset)")
    out["provider"] = cloud
    if preset == "bedrock":
        _bedrock(out, where, region, problems)
    elif preset == "vertex":
        _vertex(out, where, region, problems)
    else:
        _azure(out, where, region, problems)
    for k in _PRESET_FIELDS:
        out.pop(k, None)
    return out


def _example_region(preset: str) -> str:
    return {"bedrock": "eu-central-1", "vertex": "europe-west4", "azure-openai": "swedencentral"}[preset]


def _wrong_cloud(where: str, preset: str, cloud: str, region: str, problems: list[str]) -> bool:
    if regions.lookup(cloud, region) is not None:
        return False
    other = _provider_of(region)
    near = ", ".join(regions.suggest(cloud, region)) or _example_region(preset)
    if other is not None:
        problems.append(
            f"{where}.region: {region!r} is a {other} region, but preset {preset} runs on {cloud}; "
            f"use a {cloud} region (did you mean: {near}?) or the preset of {other}"
        )
    else:
        problems.append(
            f"{where}.region: {region!r} is not a known {cloud} region for preset {preset}; did you mean: {near}?"
        )
    return True


def _served(ep: dict[str, Any]) -> list[str]:
    models = ep.get("models")
    if isinstance(models, dict):
        return [str(v) for v in models.values()]
    if isinstance(models, list):
        return [str(v) for v in models]
    return []


def _zone(ep: dict[str, Any], where: str, zone: str, why: str, problems: list[str]) -> None:
    given = ep.get("processing_zone")
    if given is not None and str(given).upper() != zone.upper():
        problems.append(f"{where}.processing_zone: {given!r} contradicts {why}, which processes in {zone}")
    ep["processing_zone"] = zone


def _bedrock(ep: dict[str, Any], where: str, region: str, problems: list[str]) -> None:
    if _wrong_cloud(where, "bedrock", "aws", region, problems):
        return
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    ep["base_url"] = f"https://bedrock-runtime.{region}.{suffix}/openai/v1"
    if ep.get("auth") is None:
        ep["auth"] = {"kind": "aws-api-key"} if _has_key(ep) else {"kind": "aws"}
    geos = set()
    for name in _served(ep):
        head, dot, _ = name.partition(".")
        if not dot:
            problems.append(
                f"{where}.models: {name!r} is not a Bedrock model id; they look like provider.model "
                "(e.g. openai.gpt-oss-20b-1:0, meta.llama3-1-8b-instruct-v1:0)"
            )
        elif head == "global":
            geos.add("global")
        elif head in _BEDROCK_GEO:
            geos.add(head)
    if len(geos) > 1:
        problems.append(
            f"{where}.models: mixes inference profiles {sorted(geos)}; one endpoint has one residency — "
            "split them into one endpoint per profile"
        )
    elif geos:
        geo = geos.pop()
        if geo == "global":
            _zone(ep, where, "global", "a global. inference profile", problems)
        else:
            bloc = _BEDROCK_GEO[geo]
            home = regions.lookup("aws", region)
            if home is not None and home.country not in regions.expand_tag(bloc):
                problems.append(
                    f"{where}.models: a {geo}. inference profile is not available from {region} "
                    f"({home.country}); use a region in {bloc} or the in-region model id"
                )
            _zone(ep, where, bloc, f"the {geo}. inference profile", problems)


def _vertex(ep: dict[str, Any], where: str, region: str, problems: list[str]) -> None:
    project = ep.get("project")
    if not isinstance(project, str) or not _GCP_PROJECT.match(project):
        problems.append(
            f"{where}.project: preset vertex needs project: the Google Cloud project id "
            "(6-30 lowercase letters, digits, hyphens)" + (f" (got {project!r})" if project is not None else "")
        )
        return
    if region == "global":
        host, location = "aiplatform.googleapis.com", "global"
        _zone(ep, where, "global", "the global endpoint", problems)
    elif region in _VERTEX_MULTI:
        host, location = f"aiplatform.{region}.rep.googleapis.com", region
        _zone(ep, where, _VERTEX_MULTI[region], f"the {region} multi-region", problems)
    else:
        if _wrong_cloud(where, "vertex", "gcp", region, problems):
            problems[-1] += " (or eu / us for the multi-region endpoints, global for the global one)"
            return
        host, location = f"{region}-aiplatform.googleapis.com", region
    ep["base_url"] = f"https://{host}/v1/projects/{project}/locations/{location}/endpoints/openapi"
    if ep.get("auth") is None and not _has_key(ep):
        ep["auth"] = {"kind": "gcp"}
    for name in _served(ep):
        if "/" not in name:
            problems.append(
                f"{where}.models: {name!r} is not a Vertex model name; they are publisher/model "
                "(e.g. google/gemini-2.0-flash-001, meta/llama-3.1-8b-instruct-maas)"
            )


def _azure(ep: dict[str, Any], where: str, region: str, problems: list[str]) -> None:
    resource = ep.get("resource")
    if not isinstance(resource, str) or not _AZURE_RESOURCE.match(resource):
        problems.append(
            f"{where}.resource: preset azure-openai needs resource: the Azure OpenAI resource name "
            "(the NAME in https://NAME.openai.azure.com)" + (f" (got {resource!r})" if resource is not None else "")
        )
        return
    if _wrong_cloud(where, "azure-openai", "azure", region, problems):
        return
    ep["base_url"] = f"https://{resource}.openai.azure.com/openai/v1"
    if ep.get("auth") is None:
        if _has_key(ep):
            ep.setdefault("auth_header", "api-key")
        else:
            ep["auth"] = {"kind": "azure"}
    deployment = ep.get("deployment", "standard")
    if deployment == "global":
        _zone(ep, where, "global", "a global deployment", problems)
    elif deployment == "datazone":
        home = regions.lookup("azure", region)
        bloc = "EU" if home is not None and home.country in regions.expand_tag("EU") else "US"
        if home is not None and home.country not in regions.expand_tag(bloc):
            problems.append(f"{where}.deployment: Azure data zones are EU and US; {region} is in neither")
        else:
            _zone(ep, where, bloc, "a data zone deployment", problems)
    elif deployment != "standard":
        problems.append(f"{where}.deployment: {deployment!r} is not one of standard, datazone, global")

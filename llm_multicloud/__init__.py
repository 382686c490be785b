"""llm_multicloud: route openai SDK requests across clouds and regions, in-process.

    import openai, llm_multicloud as lmc
    client = lmc.wrap(openai.OpenAI(api_key="unused"), catalog="catalog.yaml")

Public names are imported lazily (PEP 562), so ``import llm_multicloud`` stays
cheap: pydantic, PyYAML and the HTTP stack load on first use.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from ._version import __version__

_EXPORTS = {
    "wrap": "client",
    "MultiCloud": "client",
    "httpx_client": "client",
    "async_httpx_client": "client",
    "multicloud_of": "client",
    "PLACEHOLDER_BASE_URL": "client",
    "PLACEHOLDER_ROOT_URL": "client",
    "Catalog": "catalog",
    "Endpoint": "catalog",
    "Policy": "policy",
    "routing": "context",
    "residency": "context",
    "Constraints": "context",
    "Plan": "router",
    "AttemptRecord": "executor",
    "RequestRecord": "executor",
    "Transition": "health",
    "CatalogUpdate": "live",
    "status_app": "status",
    "LLMMulticloudError": "errors",
    "CatalogError": "errors",
    "ResidencyError": "errors",
    "RoutingError": "errors",
    "StreamInterrupted": "errors",
}

__all__ = ("__version__", "auth", *sorted(_EXPORTS))

if _typing.TYPE_CHECKING:
    from .catalog import Catalog as Catalog
    from .catalog import Endpoint as Endpoint
    from .client import PLACEHOLDER_BASE_URL as PLACEHOLDER_BASE_URL
    from .client import PLACEHOLDER_ROOT_URL as PLACEHOLDER_ROOT_URL
    from .client import MultiCloud as MultiCloud
    from .client import async_httpx_client as async_httpx_client
    from .client import httpx_client as httpx_client
    from .client import multicloud_of as multicloud_of
    from .client import wrap as wrap
    from .context import Constraints as Constraints
    from .context import residency as residency
    from .context import routing as routing
    from .errors import CatalogError as CatalogError
    from .errors import LLMMulticloudError as LLMMulticloudError
    from .errors import ResidencyError as ResidencyError
    from .errors import RoutingError as RoutingError
    from .errors import StreamInterrupted as StreamInterrupted
    from .executor import AttemptRecord as AttemptRecord
    from .executor import RequestRecord as RequestRecord
    from .health import Transition as Transition
    from .live import CatalogUpdate as CatalogUpdate
    from .policy import Policy as Policy
    from .router import Plan as Plan
    from .status import status_app as status_app


def __getattr__(name: str) -> _typing.Any:
    if name == "auth":  # the credentials package: lmc.auth.provider(fn), lmc.auth.azure()...
        value = _importlib.import_module(".auth", __name__)
        globals()[name] = value
        return value
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'llm_multicloud' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # the public names only: not the helpers this module imports for itself
    return sorted(__all__)

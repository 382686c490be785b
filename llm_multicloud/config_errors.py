"""Validation errors in the configuration's own words, with the fix.

pydantic reports *where* a value failed in its own vocabulary: union branches in the
path (``models.dict[str,str]``), ``Input should be a valid dictionary``, a link to
its documentation. A newcomer editing a catalog needs the field path as written in
the file, what the field accepts, and — for a misspelt name — the name meant.

:func:`describe` turns one :class:`pydantic.ValidationError` into such lines for any
model (the catalog, the policy, the fleet's config), by walking the model's own type
annotations along each error's location. A field added to a model later gets the
same treatment without code here: its type says what it accepts, its
``Field(description=...)`` adds the why.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError

__all__ = ("describe", "did_you_mean")

#: Field names whose values are never echoed (they may be credentials).
_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``choices`` close to ``word`` in spelling (case-insensitive)."""
    options = list(dict.fromkeys(choices))
    lowered = {c.lower(): c for c in options}
    found = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    if not found:
        # a prefix or a contained word: "url" for base_url, "quantil" for quantile
        w = word.lower()
        found = [c for c in lowered if len(w) >= 3 and (c.startswith(w) or w in c.split("_"))][:n]
    return [lowered[f] for f in found]


def describe(exc: ValidationError, data: Any, model: type[BaseModel]) -> list[str]:
    """One line per problem: ``path: what is wrong (got value)`` — no pydantic internals."""
    found: list[tuple[tuple[Any, ...], dict[str, Any], Any, Any]] = []
    for details in exc.errors(include_url=False):
        err: dict[str, Any] = dict(details)
        path, tp, union = _walk(model, tuple(err["loc"]))
        if err["type"] == "missing" and path and isinstance(path[-1], int):
            # too few items in a fixed-size list ([lat, lon]): say what the list must be
            path, tp, union = path[:-1], _walk(model, path[:-1])[1], None
            err["type"] = "wrong_length"
        found.append((path, err, tp, union))
    # When the value matched one branch of a union in shape (a mapping for
    # "mapping or list") and failed inside it, the other branch's "not a list" is noise.
    deep = {p[:n] for p, _, _, u in found if u is not None for n in range(len(p))}
    groups: dict[tuple[Any, ...], list[tuple[dict[str, Any], Any, Any]]] = {}
    for path, err, tp, union in found:
        if union is not None and path in deep and str(err["type"]).endswith("_type"):
            continue
        groups.setdefault(path, []).append((err, tp, union))

    # A missing field and an unknown one next to it that is its misspelling are one
    # mistake: report the misspelling only.
    missing = {p: errs for p, errs in groups.items() if any(e["type"] == "missing" for e, _, _ in errs)}
    covered: set[tuple[Any, ...]] = set()
    for p, errs in groups.items():
        if any(e["type"] == "extra_forbidden" for e, _, _ in errs):
            guess = did_you_mean(str(p[-1]), [str(m[-1]) for m in missing if m[:-1] == p[:-1]], n=1)
            covered.update(m for m in missing if m[:-1] == p[:-1] and guess and str(m[-1]) == guess[0])

    lines: list[str] = []
    for p, errs in groups.items():
        if p in covered:
            continue
        where = _render_path(p, data)
        first = errs[0][0]
        unions = [u for _, _, u in errs if u is not None]
        if len(errs) > 1 and unions:
            # every branch of a union failed here: say what the field accepts, once
            lines.append(f"{where}: must be {_description(model, p) or _expected(unions[0])}{_shown(p, first)}")
            continue
        for e, tp, _ in errs:
            lines.append(f"{where}: {_message(e, tp, p, model, data, missing)}{_shown(p, e)}")
    return lines


# ----------------------------------------------------------------------------- paths


def _strip(tp: Any) -> Any:
    """The type without Annotated and Optional."""
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    if _is_union(tp):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _strip(members[0])
    return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _tag(tp: Any) -> str:
    """pydantic's name for a union branch: ``dict[str,str]``, ``list[str]``, ``Pricing``."""
    tp = _strip(tp)
    origin = get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", repr(tp))
    return f"{getattr(origin, '__name__', repr(origin))}[{','.join(_tag(a) for a in get_args(tp))}]"


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any, Any]:
    """The location as written in the file (union branch tags dropped), the type at
    its end (None when unknown) and the union whose branch was crossed last, if any."""
    tp: Any = model
    path: list[Any] = []
    union: Any = None
    for part in loc:
        tp = _strip(tp)
        if _is_union(tp) and isinstance(part, str):
            # pydantic names the branch it tried; follow that branch
            union = tp
            members = [a for a in get_args(tp) if a is not type(None)]
            tp = next((m for m in members if _tag(m) == part), None)
            continue
        path.append(part)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(part) if isinstance(part, str) else None
            tp = info.annotation if info is not None else None
        elif get_origin(tp) in (dict, Mapping) or tp is dict:
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else None
        elif get_origin(tp) in (list, Sequence, set, frozenset):
            args = get_args(tp)
            tp = args[0] if args else None
        elif get_origin(tp) is tuple:
            args = get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                tp = args[0]
            else:
                tp = args[part] if isinstance(part, int) and part < len(args) else None
        else:
            tp = None
    return tuple(path), tp, union


def _render_path(path: tuple[Any, ...], data: Any) -> str:
    """``endpoints[1] (id='gcp-euw4').region``: indexes as written, list items named by their id."""
    out = ""
    node = data
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                out += f" (id={node['id']!r})"
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


# ----------------------------------------------------------------------------- words


def _expected(tp: Any) -> str:
    """What a type accepts, in words a catalog author uses."""
    tp = _strip(tp)
    if tp is None or tp is Any:
        return "a valid value"
    if _is_union(tp):
        members = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(dict.fromkeys(_expected(m) for m in members))
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is SecretStr:
        return "a string (a secret: prefer api_key_env)"
    if origin in (dict, Mapping) or tp is dict:
        args = get_args(tp)
        if len(args) == 2:
            return f"a mapping of {_plural(args[0])} to {_plural(args[1])} ({{name: value, ...}})"
        return "a mapping ({name: value, ...})"
    if origin in (list, Sequence, set, frozenset):
        args = get_args(tp)
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        kinds = {_plural(a) for a in args}
        return f"a list of {len(args)} {kinds.pop()}" if len(kinds) == 1 else f"a list of {len(args)} values"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping with fields " + ", ".join(tp.model_fields)
    return "a valid value"


def _plural(tp: Any) -> str:
    tp = _strip(tp)
    return {str: "strings", int: "whole numbers", float: "numbers", bool: "booleans"}.get(tp, "values")


_PHRASES = (
    ("Input should be a valid integer", "must be a whole number"),
    ("Input should be a valid number", "must be a number"),
    ("Input should be a valid string", "must be a string"),
    ("Input should be a valid boolean", "must be true or false"),
    ("Input should be a valid dictionary", "must be a mapping"),
    ("Input should be a valid list", "must be a list"),
    ("Input should be a valid ", "must be a "),
    ("Input should be ", "must be "),
    ("Value error, ", ""),
    ("Assertion failed, ", ""),
    ("String should have at least 1 character", "must not be empty"),
    ("List should have at least 1 item after validation, not 0", "must list at least one entry"),
    ("String should ", "must "),
    ("List should ", "must "),
    ("Dictionary should ", "must "),
    ("Tuple should ", "must "),
)


def _message(
    err: Mapping[str, Any],
    tp: Any,
    path: tuple[Any, ...],
    model: type[BaseModel],
    data: Any,
    missing: Mapping[tuple[Any, ...], Any],
) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else ""
        allowed = _fields_at(model, path[:-1])
        guess = did_you_mean(name, allowed)
        if guess:
            required = [g for g in guess if (*path[:-1], g) in missing]
            hint = f"; did you mean {' or '.join(repr(g) for g in guess[:2])}?"
            if required:
                hint += f" ({required[0]!r} is required)"
            return f"unknown field {name!r}{hint}"
        return f"unknown field {name!r} (allowed: {', '.join(allowed)})" if allowed else f"unknown field {name!r}"
    if kind.endswith(("_type", "_parsing")) or kind in ("is_instance_of", "wrong_length"):
        desc = _description(model, path)
        return f"must be {_expected(tp)}" + (f" ({desc})" if desc else "")
    msg = str(err["msg"])
    for old, new in _PHRASES:
        if msg.startswith(old):
            msg = new + msg[len(old) :]
            break
    return msg


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    _, tp, _ = _walk(model, path)
    tp = model if not path else _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _description(model: type[BaseModel], path: tuple[Any, ...]) -> str:
    if not path or not isinstance(path[-1], str):
        return ""
    _, parent, _ = _walk(model, path[:-1])
    parent = model if len(path) == 1 else _strip(parent)
    if isinstance(parent, type) and issubclass(parent, BaseModel):
        info = parent.model_fields.get(path[-1])
        if info is not None and info.description:
            return info.description
    return ""


def _shown(path: tuple[Any, ...], err: Mapping[str, Any]) -> str:
    if err["type"] in ("missing", "extra_forbidden"):
        return ""
    # header values carry credentials too (x-api-key...)
    if any(isinstance(p, str) and (p == "headers" or any(w in p.lower() for w in _SECRET_WORDS)) for p in path):
        return " (value hidden: it may be a secret)"
    text = repr(err.get("input"))
    return f" (got {text if len(text) <= 80 else text[:77] + '...'})"

"""The public namespace is exactly ``__all__`` (as httpx checks its own)."""

from __future__ import annotations

import types

import llm_multicloud as lmc


def test_all_is_a_tuple_of_unique_names() -> None:
    assert isinstance(lmc.__all__, tuple)
    assert len(set(lmc.__all__)) == len(lmc.__all__)


def test_every_exported_name_resolves_and_belongs_to_the_package() -> None:
    for name in lmc.__all__:
        value = getattr(lmc, name)
        if name == "__version__" or isinstance(value, str):
            continue
        # a subpackage (lmc.auth) is its own module
        module = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", "")
        assert module.startswith("llm_multicloud"), (name, module)


def test_dir_shows_the_public_names_and_nothing_else() -> None:
    public = [name for name in dir(lmc) if not name.startswith("_")]
    assert sorted(public) == sorted(n for n in lmc.__all__ if not n.startswith("_"))
    for helper in ("Any", "TYPE_CHECKING", "annotations", "import_module"):
        assert helper not in dir(lmc)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        lmc.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")

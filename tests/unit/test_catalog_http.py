"""Catalogs that would produce invalid HTTP fail at load, each with a CatalogError that
names the field (or file) and the fix — never a raw ValueError/UnicodeDecodeError, and
never a catalog that loads and then fails every request like an outage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm_multicloud.catalog import Catalog
from llm_multicloud.errors import CatalogError

SECRET = "sk-very-secret-0123456789abcdef"


def _ep(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "onprem-a",
        "provider": "onprem",
        "region": "dc1",
        "country": "DE",
        "base_url": "http://127.0.0.1:8000/v1",
        "api_key": SECRET,
        "models": ["m"],
    }
    base.update(kw)
    return base


def _fails(where: str, *, must: str, **kw: Any) -> str:
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [_ep(**kw)]})
    msg = str(ei.value)
    assert type(ei.value) is CatalogError
    assert where in msg and must in msg, msg
    assert SECRET not in msg
    return msg


@pytest.mark.parametrize(
    ("url", "must"),
    [
        ("http://127.0.0.1:99999/v1", "1 to 65535"),
        ("http://127.0.0.1:70000/v1", "1 to 65535"),
        ("http://127.0.0.1:http/v1", "not a number"),
        ("http://127.0.0.1:-1/v1", "1 to 65535"),
        ("http://127.0.0.1:0/v1", "port 0"),
        ("http://127.0.0.1:8000/v1\r\nx-injected: 1", "control characters"),
        ("http://exa mple.com/v1", "spaces"),
    ],
)
def test_base_urls_that_are_not_valid_http_fail_at_load(url: str, must: str) -> None:
    _fails("endpoints[0] (id='onprem-a').base_url", must=must, base_url=url)


@pytest.mark.parametrize("name", ["x api key", "x-key\r\nx-injected", "x:y", "", "x-\x00"])
def test_header_names_with_spaces_or_control_characters_fail(name: str) -> None:
    _fails("endpoints[0] (id='onprem-a').headers", must="not a valid HTTP header name", headers={name: "v"})


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "tab-\x00", "bell\x07", " lead-x", "trail-x ", "café"])
def test_header_values_with_cr_lf_or_control_characters_fail_without_showing_them(value: str) -> None:
    msg = _fails(
        "endpoints[0] (id='onprem-a').headers", must="not a valid HTTP header value", headers={"x-tenant": value}
    )
    assert value not in msg and "value hidden" in msg  # a header may carry a credential


def test_valid_headers_load() -> None:
    cat = Catalog.load({"endpoints": [_ep(headers={"X-Tenant": "a b\tc", "api-version": "2024-06-01"})]})
    assert cat.endpoints[0].headers == (("x-tenant", "a b\tc"), ("api-version", "2024-06-01"))


@pytest.mark.parametrize("name", ["x api key", "api-key\n", "authorization:"])
def test_an_auth_header_with_spaces_fails(name: str) -> None:
    _fails("endpoints[0] (id='onprem-a').auth_header", must="x-api-key", auth_header=name)


def test_a_key_read_with_a_trailing_newline_is_cleaned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMC_TEST_KEY", f"  {SECRET}\n")  # a mounted secret file, as read
    cat = Catalog.load({"endpoints": [_ep(api_key=None, api_key_env="LMC_TEST_KEY")]})
    assert cat.endpoints[0].secret() == SECRET
    assert cat.endpoints[0].auth_headers() == [("authorization", f"Bearer {SECRET}")]
    assert Catalog.load({"endpoints": [_ep(api_key=SECRET + "\r\n")]}).endpoints[0].secret() == SECRET


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        (SECRET[:10] + " " + SECRET[10:], "a space"),
        (SECRET + "\x01x", "a control character"),
        ("sk-é" + SECRET, "ASCII"),
    ],
)
def test_keys_with_inner_spaces_or_control_characters_fail_without_showing_the_value(
    monkeypatch: pytest.MonkeyPatch, bad: str, what: str
) -> None:
    msg = _fails("endpoints[0] (id='onprem-a').api_key:", must=what, api_key=bad)
    assert "value hidden" in msg and SECRET[:10] not in msg and SECRET[10:] not in msg
    monkeypatch.setenv("LMC_TEST_KEY", bad)
    msg = _fails("api_key_env: the value of LMC_TEST_KEY", must=what, api_key=None, api_key_env="LMC_TEST_KEY")
    assert SECRET[:10] not in msg and SECRET[10:] not in msg


@pytest.mark.parametrize(
    ("name", "data", "must"),
    [
        ("binary.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file"),
        ("utf16.yaml", "endpoints: []\n".encode("utf-16"), "UTF-16"),
        ("latin1.yaml", "endpoints:\n  - id: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("latin1.json", '{"endpoints": [{"id": "caf\xe9"}]}'.encode("latin-1"), "not UTF-8"),
        ("nul.toml", b"[[endpoints]]\nid = 'a\x00b'\n", "control character"),
        ("nul.yaml", b"endpoints:\n  - id: a\x00b\n", "line 2"),
        ("date.yaml", b"endpoints: 2024-13-45\n", "not valid YAML"),
        ("huge.json", b'{"endpoints": ' + b"1" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_undecodable_files_fail_with_the_file_and_the_fix(tmp_path: Path, name: str, data: bytes, must: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CatalogError) as ei:
        Catalog.load(path)
    assert type(ei.value) is CatalogError and ei.value.__cause__ is None
    assert str(path) in str(ei.value) and must in str(ei.value), str(ei.value)


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(
        b"\xef\xbb\xbf" + b'{"endpoints": [{"id": "a", "provider": "onprem", "region": "x", '
        b'"country": "DE", "base_url": "http://127.0.0.1:8000/v1", "models": ["m"]}]}'
    )
    assert Catalog.load(path).endpoints[0].id == "a"

"""Redaction of credentials in text that came from elsewhere.

Every string the library prints that is derived from upstream bytes — an error
body, a break reason, an error event inside a stream, a transport exception, a
probe failure — may contain an endpoint's key: servers echo what they were sent
("invalid key sk-..."), proxies repeat the Authorization header, and a hostile
server can do it on purpose. Such strings end up in exception messages, in
``snapshot()``/``explain()``, in log lines and in span statuses, so each of them
passes through a :class:`Redactor` before it is stored anywhere.

A key is found in every form it takes when printed: as is, JSON-escaped (ASCII or
not), inside a Python ``repr`` of text or of bytes, percent-encoded (with ``+`` or
``%20`` for spaces), HTML-escaped, hex, base64 at any byte alignment (the key
inside ``Basic`` credentials or a base64 blob), and cut short (a prefix of at
least 12 characters: servers and our own messages truncate). Redaction runs before
any truncation, so a key cut in half by a length limit never shows either.

Built once per catalog (one compiled regular expression); used only on error
paths, never per streamed chunk.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus

#: What a secret is replaced by.
MASK = "***"
#: Secrets shorter than this are not searched for (they would mask ordinary words).
MIN_SECRET = 4
#: A truncated key is still recognised down to this many leading characters.
MIN_PREFIX = 12


def _b64_forms(raw: bytes) -> set[str]:
    """The part of the base64 text of ``raw`` that does not depend on the bytes around
    it, for each of the three alignments ``raw`` can have inside a longer blob."""
    out: set[str] = set()
    for k in range(3):
        if len(raw) - (3 - k) % 3 < 6:
            continue
        enc = base64.b64encode(b"\0" * k + raw).decode()
        head = 4 if k else 0  # the first group mixes in unknown bytes
        body_bytes = len(raw) - (3 - k) % 3
        full = body_bytes // 3 * 4  # whole groups made of key bytes only
        stable = enc[head : head + full]
        if len(stable) >= 8:
            out.add(stable)
            out.add(stable.replace("+", "-").replace("/", "_"))  # urlsafe alphabet
    return out


def forms(secret: str) -> set[str]:
    """Every printed form of ``secret`` that :class:`Redactor` looks for (whole forms;
    prefixes are matched separately)."""
    raw = secret.encode("utf-8", "surrogatepass")
    out = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        repr(raw)[2:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        html.escape(secret),
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    out |= _b64_forms(raw)
    return {f for f in out if len(f) >= MIN_SECRET}


def _prefix_pattern(secret: str) -> str:
    """A pattern matching the longest prefix of ``secret`` of at least MIN_PREFIX chars."""
    if len(secret) <= MIN_PREFIX:
        return re.escape(secret)
    tail = ""
    for ch in reversed(secret[MIN_PREFIX:]):
        tail = f"(?:{re.escape(ch)}{tail})?"
    return re.escape(secret[:MIN_PREFIX]) + tail


_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|%([0-9a-fA-F]{2})")


def _unescape(m: re.Match[str]) -> str:
    return chr(int(m.group(1) or m.group(2) or m.group(3), 16))


class Redactor:
    """Replaces every printed form of the given secrets by ``***``."""

    __slots__ = ("_re",)

    def __init__(self, secrets: Iterable[str | None]) -> None:
        keys = sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True)
        alts: list[str] = []
        for key in keys:
            alts += [re.escape(f) for f in sorted(forms(key), key=len, reverse=True)]
        alts += [_prefix_pattern(k) for k in keys]
        self._re = re.compile("|".join(alts)) if alts else None

    def __call__(self, text: str) -> str:
        if self._re is None or not text:
            return text
        out = self._re.sub(MASK, text)
        if "\\" in out or "%" in out:
            # A key escaped character by character (``\u0073k-...``, ``%73k-...``,
            # mixed with plain characters) has no fixed printed form: undo such escapes
            # and, if a key shows then, mask the unescaped text instead.
            plain = _ESCAPE.sub(_unescape, out)
            if plain != out and self._re.search(plain):
                out = self._re.sub(MASK, plain)
        return out

    def __bool__(self) -> bool:
        return self._re is not None

    def bytes(self, data: bytes) -> bytes:
        """Redact raw upstream bytes (decoded leniently as UTF-8)."""
        if self._re is None:
            return data
        return self(data.decode("utf-8", "replace")).encode()


@lru_cache(maxsize=64)
def _cached(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)


def redactor(secrets: Iterable[str | None]) -> Redactor:
    """A (cached) :class:`Redactor` for these secrets."""
    return _cached(tuple(sorted({s for s in secrets if s})))

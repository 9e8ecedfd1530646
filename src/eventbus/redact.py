"""Secrets kept out of what eventbus logs and raises: broker URLs and option mappings.

Every message, log record and ``repr`` of the library that shows a broker URL or an adapter's
options shows it through these functions. :func:`redact_url` replaces the password of the
URL's user information and the value of every query parameter whose name says it is a secret
with ``***``, and keeps the rest (scheme, user, hosts, ports, path, other parameters) as it was
written, so the message still says which server was meant. :func:`redact_options` does the
same for a mapping of options. Both accept anything and never raise: a URL too malformed to
parse still loses what looks like its password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

__all__ = ["MASK", "SECRET_WORDS", "is_secret", "redact_options", "redact_text", "redact_url"]

MASK = "***"
"""What a secret is replaced with."""

SECRET_WORDS = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "passphrase",
    "access_key",
    "accesskey",
    "api_key",
    "apikey",
    "private_key",
    "credential",
)
"""A name (an option, a query parameter) containing one of these, in any case, is a secret:
``password``, ``sasl_plain_password``, ``ssl_keyfile_password``, ``client_secret``,
``sasl_oauth_token_provider``, ``aws_secret_access_key``, ``access_token``…"""

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_secret(name: object) -> bool:
    """Whether an option or query parameter called ``name`` holds a secret."""
    folded = str(name).lower().replace("-", "_")
    return any(word in folded for word in SECRET_WORDS)


def redact_url(url: object) -> str:
    """``url`` with its password and secret query parameters replaced by ``***``.

    ``redis://app:s3cret@cache:6379/0?ssl_password=x&db=1`` becomes
    ``redis://app:***@cache:6379/0?ssl_password=***&db=1``; a URL without secrets is
    returned unchanged.
    """
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    at = rest.rfind("@", 0, end)
    if at == -1 and ":" in rest[:end]:
        # A password with an unescaped "/", "?" or "#" ends the authority early: take the
        # last "@" before the query as the end of the user information instead.
        query = rest.find("?")
        at = rest.rfind("@", 0, query if query != -1 else len(rest))
    if at != -1:
        user, colon, password = rest[:at].partition(":")
        if colon and password:
            rest = f"{user}:{MASK}{rest[at:]}"
    return f"{scheme}{sep}{_redact_query(rest)}"


def _redact_query(rest: str) -> str:
    head, question, query = rest.partition("?")
    if not question:
        return rest
    query, hash_, fragment = query.partition("#")
    parts = []
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if equals and value and is_secret(unquote(name)):
            part = f"{name}={MASK}"
        parts.append(part)
    return f"{head}?{'&'.join(parts)}{hash_}{fragment}"


def redact_text(text: object) -> str:
    """``text`` with every URL in it passed through :func:`redact_url` (for messages that
    quote one, such as a driver's error)."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), str(text))


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` fit to be shown: secret values as ``***``, URLs redacted.

    Nested mappings (``consumer_options={...}``) are redacted the same way; other values are
    kept as they are.
    """
    shown: dict[str, Any] = {}
    for name, value in options.items():
        if is_secret(name) and value is not None:
            shown[name] = MASK
        elif isinstance(value, Mapping):
            shown[name] = redact_options(value)
        elif isinstance(value, str) and "://" in value:
            shown[name] = redact_url(value)
        else:
            shown[name] = value
    return shown

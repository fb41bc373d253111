"""Secrets kept out of everything the tool prints or writes: URLs, error messages, records.

A storage or tracking URL may carry a password (`postgresql://user:PASSWORD@host/db`,
`...?password=...`) or a token in its query; a libpq connection string a `password=...`
keyword. The password is found by parsing the URL, never by guessing which characters it may
hold: SQLAlchemy's URL parser for database URLs, the standard library's for the others. Each
password found is remembered, so that it is hidden wherever it shows again in a text, inside
a URL or not (an error message quoting it, a repr escaping it), as written and decoded.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

HIDDEN = "***"
# Query or keyword names whose value is a secret.
_SECRET_KEYS = frozenset({
    "password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token", "api_key", "apikey", "auth", "key",
})
# URLs that are not databases: parsed by urllib (SQLAlchemy's parser takes every other scheme).
_WEB_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp", "ftps", "file", "s3", "gs", "hdfs", "databricks"})
# A URL in a text runs from its scheme to the next blank.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://\S+")
_KEYWORD = re.compile(
    rf"(?P<head>(?<![\w?&;])(?:{'|'.join(sorted(_SECRET_KEYS))})\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&;]+)",
    re.IGNORECASE,
)
# Shorter secrets are hidden inside URLs only: hidden everywhere they would mangle ordinary words.
_SHORTEST_REMEMBERED = 4
_remembered: set[str] = set()


def _userinfo_password(url: str) -> tuple[int, int, str] | None:
    """(start, end, decoded) of the password in `url`'s user info, as its parser reads it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    offset = len(scheme) + len(sep)
    if scheme.split("+")[0].lower() not in _WEB_SCHEMES:
        from sqlalchemy.engine import make_url  # noqa: PLC0415 - SQLAlchemy is imported only when a URL needs it

        try:
            password = make_url(url).password
        except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: the standard library's reading
            password = None
        else:
            if not password:
                return None
            # SQLAlchemy reads the user as `[^:/]*` and the password as what follows its ':' up to the next '@'.
            start = offset + rest.index(":") + 1
            return start, url.index("@", start), str(password)
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return None
    if not password:
        return None
    userinfo = parts.netloc.rpartition("@")[0]
    start = offset + userinfo.index(":") + 1
    return start, offset + len(userinfo), urllib.parse.unquote(password)


def _query_secrets(url: str) -> list[str]:
    query = urllib.parse.urlsplit(url).query if "?" in url else ""
    return [value for key, value in urllib.parse.parse_qsl(query, keep_blank_values=False)
            if key.lower() in _SECRET_KEYS]


def _redact_url(span: str) -> str:
    url = span.rstrip("'\",;:)]}>.")  # a URL quoted or ending a sentence: the host ends it, not the password
    tail = span[len(url):]
    found = _userinfo_password(url)
    if found:
        start, end, password = found
        remember(password, url[start:end])
        url = f"{url[:start]}{HIDDEN}{url[end:]}"
    for secret in _query_secrets(url):
        remember(secret)
        url = re.sub(rf"(?<=[?&;=]){re.escape(secret)}(?=[&;#\s'\"]|$)", HIDDEN, url)
        raw = urllib.parse.quote_plus(secret)
        url = re.sub(rf"(?<=[?&;=]){re.escape(raw)}(?=[&;#\s'\"]|$)", HIDDEN, url)
    return url + tail


def _redact_keyword(match: re.Match[str]) -> str:
    secret = match["secret"]
    if secret.startswith("'") and secret.endswith("'") and len(secret) > 1:  # libpq's quoting: \' and \\ inside
        remember(secret[1:-1], re.sub(r"\\(.)", r"\1", secret[1:-1]))
    else:
        remember(secret)
    return f"{match['head']}{HIDDEN}"


def remember(*secrets: str) -> None:
    """Hide these secrets (a password, as decoded and as written) in every text from now on."""
    for secret in secrets:
        if len(secret) >= _SHORTEST_REMEMBERED:
            _remembered.update({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
                                repr(secret)[1:-1], secret.replace('"', '\\"')})


def _remember_environment() -> None:
    """The tracking URI can come from the environment only: its password is hidden from the start."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and "@" in uri:
        _redact_url(uri)


def redact(text: str) -> str:
    """`text` with every password or token in it replaced by ***."""
    _remember_environment()
    text = _URL.sub(lambda m: _redact_url(m[0]), text)
    text = _KEYWORD.sub(_redact_keyword, text)
    for secret in sorted(_remembered, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


def redact_all(value: Any) -> Any:
    """`redact` applied to every string inside nested dicts, lists and tuples."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(v) for v in value)
    return value

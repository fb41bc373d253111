"""Secrets kept out of everything the tool prints or writes: URLs, error messages, records.

A storage or tracking URL may carry a password (`postgresql://user:PASSWORD@host/db`,
`...?password=...`, a libpq `password=...` keyword) or a token in its query. `redact`
replaces each such value with `***` wherever it appears in a text.
"""

from __future__ import annotations

import re
from typing import Any

_SECRET_KEYS = r"(?:password|passwd|pwd|sslpassword|secret|token|access_token|api_key|apikey|auth|key)"
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*):(?P<secret>[^@/\s'\"]*)@")
_QUERY = re.compile(rf"(?P<head>[?&;]{_SECRET_KEYS}=)(?P<secret>[^&;#\s'\"]*)", re.IGNORECASE)
_KEYWORD = re.compile(rf"(?P<head>(?<![\w?&;]){_SECRET_KEYS}\s*=\s*)(?P<secret>'[^']*'|[^\s&;'\"]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password or token in it replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@" if m["secret"] else m[0], text)
    text = _QUERY.sub(lambda m: f"{m['head']}***", text)
    return _KEYWORD.sub(lambda m: f"{m['head']}***", text)


def redact_all(value: Any) -> Any:
    """`redact` applied to every string inside nested dicts, lists and tuples."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(v) for v in value)
    return value

"""Taking secrets out of text that leaves the machine (`compute-endpoint diagnose`).

Two layers, because a pattern alone cannot know every secret and a list alone cannot know
what a log line will carry:

* patterns: the userinfo of a URL (``amqps://user:pass@host``), a bearer or basic
  Authorization value, PEM private keys, and the value of any key or variable whose name
  looks secret (``password``, ``secret``, ``token``, ``key``, ``credential``, ...), in
  YAML, JSON, Python, shell and log text alike;
* known values: every secret found in the parsed config (or the environment) is replaced
  wherever it appears, so one written under an innocent key elsewhere is caught too.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

MASK = "<redacted>"

#: Parts of a name that mark its value secret; "key" only as a whole word (not "monkey").
_SECRET_PARTS = ("password", "passwd", "passphrase", "secret", "token", "credential", "apikey")
_WORDS = re.compile(r"[A-Za-z][a-z0-9]*|[A-Z0-9]+(?![a-z])")

_SECRET_NAME = r"[\w.-]*(?:passw(?:or)?d|passphrase|secret|token|credential|key)[\w.-]*"
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"<>]+@")
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{4,}")
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?(-----END \1-----|\Z)", re.DOTALL)
# `name: value`, `name = value`, `NAME=value`, `"name": "value"` of a secret-looking name:
# the value runs to its closing quote when quoted, else to the end of the line (a YAML value
# may hold spaces) or to a delimiter.
_ASSIGNMENT = re.compile(
    rf"""(?i)(?P<name>['"]?{_SECRET_NAME}['"]?)(?P<sep>[ \t]*(?::|=>|=)[ \t]*)"""
    r"""(?P<value>'[^'\n]*'?|"[^"\n]*"?|[^\s'"][^\n,;&'"\)\]}]*)"""
)
#: Names that look secret and are not: exception classes in tracebacks.
_NOT_SECRETS = ("Error", "Exception", "Warning")
#: Known values shorter than this are not replaced everywhere (a 1-character "secret" would
#: turn every log line into noise).
MIN_KNOWN_LEN = 6


def is_secret_name(name: str) -> bool:
    """True when a key or variable named `name` probably holds a secret."""
    lowered = re.sub(r"[^a-z0-9]", "", name.lower())
    if any(part in lowered for part in _SECRET_PARTS):
        return True
    words = [w.lower() for w in _WORDS.findall(name)]
    return "key" in words or "keys" in words or lowered.endswith("key")


def _mask_assignment(match: re.Match[str]) -> str:
    if match.group("name").strip("'\"").endswith(_NOT_SECRETS):
        return match.group(0)  # `KeyError: 'endpoint_id'` in a traceback names no secret
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('name')}{match.group('sep')}{quote}{MASK}{quote}"


def redact_text(text: str, known: Iterable[str] = ()) -> str:
    """`text` with every pattern above and every known secret value masked."""
    for value in sorted({k for k in known if len(k) >= MIN_KNOWN_LEN}, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _PEM.sub(f"-----BEGIN \\1-----{MASK}-----END \\1-----", text)
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _AUTH_HEADER.sub(rf"\1\2{MASK}", text)
    return _ASSIGNMENT.sub(_mask_assignment, text)


def url_password(text: str) -> str | None:
    """The password of a URL with userinfo, else None."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
    except ValueError:
        return None
    return parts.password if parts.scheme and parts.password else None


def secret_values(doc: Any, under_secret: bool = False) -> Iterator[str]:
    """Every string in a parsed document that is a secret: values under secret-looking keys
    (whole subtrees), and the passwords of URLs anywhere."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from secret_values(value, under_secret or is_secret_name(str(key)))
    elif isinstance(doc, list | tuple):
        for item in doc:
            yield from secret_values(item, under_secret)
    elif isinstance(doc, str):
        if under_secret and doc:
            yield doc
        for word in doc.split():
            password = url_password(word.strip("'\","))
            if password:
                yield password
                yield urllib.parse.unquote(password)


def public_address(url: str) -> str | None:
    """`scheme://host:port` of a URL: what may be shown of a broker URL (no userinfo, no
    path); None when it is not a URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")

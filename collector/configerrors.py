"""Config errors as one line: the rule, where the value came from and, where we know it, the fix.

``unknown field`` errors get a "did you mean" (and, for secrets people try to put
in the file, the variable that holds them instead); a bad ``redis.url`` gets an
example of a good one.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Mapping

import msgspec

__all__ = ["describe", "unreadable_file"]

_ERROR_PATH = re.compile(r" - at `\$\.([^`]+)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]+)`(?: - at `\$\.?([^`]*)`)?$")
# Settings people expect in the file that deliberately live elsewhere: key -> where they go.
_NOT_IN_THE_FILE = {
    "redis.password": "the Redis password never goes in the config file: set $TELEMETRY_REDIS_PASSWORD, "
    "or $TELEMETRY_REDIS_PASSWORD_FILE naming a file that holds it",
    "redis.username": "set $TELEMETRY_REDIS_USERNAME (the ACL user; its password in $TELEMETRY_REDIS_PASSWORD[_FILE])",
    "redis.tls_ca_file": "set $TELEMETRY_REDIS_TLS_CA_FILE",
    "redis.ca_file": "set $TELEMETRY_REDIS_TLS_CA_FILE",
    "redis.tls_cert_file": "set $TELEMETRY_REDIS_TLS_CERT_FILE",
    "redis.tls_key_file": "set $TELEMETRY_REDIS_TLS_KEY_FILE",
}


# Fixes for values that break a rule, by field path.
_FIXES = {"redis.url": ": use redis://host:port/db, rediss:// for TLS or unix:///path/redis.sock, e.g. redis://localhost:6379/0"}


def describe(message: str, origins: Mapping[str, str], root: type) -> str:
    """The msgspec error ``message`` with where the value came from and, where we know one, the fix."""
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown:
        return _describe_unknown(message, unknown.group(1), unknown.group(2) or "", origins, root)
    match = _ERROR_PATH.search(message)
    origin = origins.get(match.group(1)) if match else None
    fix = _FIXES.get(match.group(1), "") if match else ""
    return f"invalid config: {message}" + (f" ({origin})" if origin else "") + fix


def _field_names(root: type, section: str) -> list[str]:
    """The field names of the struct at ``section`` ("" for the top level); [] when not a plain struct."""
    kind: Any = msgspec.inspect.type_info(root)
    for name in filter(None, section.split(".")):
        field = next((f for f in getattr(kind, "fields", ()) if f.name == name), None)
        if field is None:
            return []
        kind = field.type
    return [field.name for field in getattr(kind, "fields", ())]


def _describe_unknown(message: str, name: str, section: str, origins: Mapping[str, str], root: type) -> str:
    dotted = f"{section}.{name}" if section else name
    origin = origins.get(dotted)
    text = f"invalid config: {message}" + (f" ({origin})" if origin else "")
    if dotted in _NOT_IN_THE_FILE:
        return f"{text}: {_NOT_IN_THE_FILE[dotted]}"
    names = _field_names(root, section)
    guess = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not section:
        hint = f"unknown section [{name}]" + (f", did you mean [{guess[0]}]?" if guess else "")
        return f"{text}: {hint} Sections: {', '.join(f'[{n}]' for n in names)}"
    if guess:
        return f"{text}: did you mean `{guess[0]}`?"
    return f"{text}: [{section}] takes {', '.join(names)}" if names else text


def unreadable_file(exc: OSError, environ: Mapping[str, str]) -> str:
    """``cannot read $NAME_FILE=path: reason``, naming the variable that points at the file when one does."""
    names = [name for name, value in environ.items() if name.endswith("_FILE") and value == exc.filename]
    where = f"${names[0]}={exc.filename}" if names else str(exc.filename)
    return f"invalid config: cannot read {where}: {exc.strerror or exc}: point it at a readable file, or unset it"

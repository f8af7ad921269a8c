"""Logging for the daemon and tools: structlog on top of stdlib logging.

One handler on the root logger renders both structlog events and plain
``logging`` records from libraries (redis-py, the OpenTelemetry exporters), so
everything comes out in one format and goes through the same redaction:

- ``json``: one JSON object per line (``timestamp`` ISO 8601 UTC, ``level``,
  ``logger``, ``event`` and the bound fields), for systemd/journald, Docker
  and anything that ships logs;
- ``console``: structlog's human renderer, for a terminal;
- ``auto``: ``console`` when stderr is a TTY and the process is not run by
  systemd (``JOURNAL_STREAM``/``INVOCATION_ID`` unset), else ``json``.

Secrets never reach the output: :func:`redact_secrets` masks values under
secret-looking keys, credentials inside URLs and bearer tokens, in every
field including rendered tracebacks.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Literal, Mapping, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "LogFormat",
    "LEVELS",
    "configure_logging",
    "choose_format",
    "redact_secrets",
    "mask_credentials",
    "is_secret_key",
    "MASK",
]

LogFormat = Literal["json", "console", "auto"]
FORMATS: tuple[str, ...] = ("json", "console", "auto")
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
MASK = "***"

# Keys whose values are secrets whatever they hold. Matched per word of the key
# (split on anything not a letter or digit) so that `prompt_tokens` or
# `tokens_per_second` stay readable while `token`, `access_token`, `apiKey`,
# `redis_password` and `Authorization` are masked.
_SECRET_WORDS = ("password", "passwd", "secret", "authorization", "credential", "apikey", "cookie")
_KEY_WORD = re.compile(r"[a-z0-9]+")
# scheme://user:password@host -> the password, up to the last '@' of the token
# (an unencoded '@' in a password must not leak its tail).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<password>\S*)@")
# Header values, also percent-encoded as in OTEL_EXPORTER_OTLP_HEADERS ("Bearer%20...").
_BEARER = re.compile(r"(?P<scheme>\b(?:Bearer|Basic)(?:\s+|%20))[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)
# key=value inside text: query strings (?password=), header lists, env dumps.
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z][A-Za-z0-9_.\-]*)=(?P<value>[^\s,;&'\"]+)")


def is_secret_key(key: str) -> bool:
    """Whether a field named ``key`` holds a secret (``password``, ``*_token``, ``Authorization``...)."""
    lowered = key.lower()
    words = _KEY_WORD.findall(lowered)
    if any(word.endswith("token") for word in words):
        return True
    compact = "".join(words)
    return any(secret in compact for secret in _SECRET_WORDS)


def _mask_assignment(match: re.Match[str]) -> str:
    return f"{match['key']}={MASK}" if is_secret_key(match["key"]) else match[0]


def mask_credentials(text: str) -> str:
    """``text`` with URL passwords, bearer/basic credentials and ``secret_key=value``
    assignments replaced by ``***``."""
    text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    text = _BEARER.sub(rf"\g<scheme>{MASK}", text)
    return _ASSIGNMENT.sub(_mask_assignment, text) if "=" in text else text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_credentials(value)
    if isinstance(value, Mapping):
        return {
            key: MASK if isinstance(key, str) and is_secret_key(key) else _redact_value(item)
            for key, item in value.items()
        }
    if type(value) is list or type(value) is tuple:  # not namedtuples: their fields are typed
        return type(value)(_redact_value(item) for item in value)
    return value


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Processor: mask secrets in every field; runs last before rendering."""
    for key, value in event_dict.items():
        if key.startswith("_"):
            continue  # structlog's own bookkeeping (the LogRecord), never rendered
        if is_secret_key(key):
            event_dict[key] = MASK
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


def choose_format(requested: str, *, isatty: bool, environ: Mapping[str, str]) -> Literal["json", "console"]:
    """Resolve ``auto``: a human at a terminal gets colours, everything else JSON lines."""
    if requested not in FORMATS:
        raise ValueError(f"log.format: must be one of {', '.join(FORMATS)}, got {requested!r}")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    under_systemd = bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))
    return "console" if isatty and not under_systemd else "json"


def parse_level(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log.level: must be one of {', '.join(LEVELS)}, got {level!r}") from None


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so reconfiguring replaces it."""


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=_isatty(stream))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(
    format: str = "auto",  # noqa: A002 - the option is called --log-format
    level: str = "info",
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> Literal["json", "console"]:
    """Set up structlog and the root logger; returns the format chosen.

    Safe to call again (a later call replaces the earlier setup). Raises
    ``ValueError`` naming ``log.format``/``log.level`` for a bad value.
    """
    stream = sys.stderr if stream is None else stream
    numeric_level = parse_level(level)
    chosen = choose_format(format, isatty=_isatty(stream), environ=os.environ if environ is None else environ)

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become a string field first so that redaction sees them too.
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_secrets,
            _renderer(chosen, stream),
        ],
    )
    handler = _Handler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Module-level loggers must follow a later reconfiguration (tests, `run` after import).
        cache_logger_on_first_use=False,
    )
    return chosen


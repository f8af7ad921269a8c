"""Replacing attributes of mlx-lm modules and classes, reversibly and failing soft.

Every replacement is marked, so that the function behind our patches can be
found again (``original``) and so that ``restore`` only puts back what is still
ours. A hook whose target a future mlx-lm renamed is recorded as missing instead
of raising: the engine keeps serving without that part of the telemetry.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

__all__ = ["MARK", "original", "original_class", "patch", "mark", "observe_safely", "HookSet"]

log = logging.getLogger("mlx_telemetry.mlx")

MARK = "_mlx_telemetry_patch"

# Hooks whose bookkeeping failed once: each is logged the first time only.
_FAILED: set[str] = set()


def observe_safely(hook: str, observe: Callable[..., None], *args: Any) -> None:
    """Run a hook's telemetry bookkeeping; whatever goes wrong there never reaches the engine.

    Only the bookkeeping is guarded, never the mlx-lm call itself: the engine's own
    exceptions must reach the engine unchanged.
    """
    try:
        observe(*args)
    except Exception:  # an mlx-lm whose responses changed shape: serve on, without this telemetry
        if hook not in _FAILED:
            _FAILED.add(hook)
            log.warning("mlx-telemetry: %s bookkeeping failed; the engine goes on without it", hook, exc_info=True)


def original(function: Callable[..., Any]) -> Callable[..., Any]:
    """The mlx-lm function behind one of our patches (other wrappers are kept)."""
    while getattr(function, MARK, False):
        function = function.__wrapped__  # type: ignore[attr-defined]
    return function


def original_class(cls: type) -> type:
    """The mlx-lm class behind one of our subclasses."""
    while getattr(cls, MARK, False):
        cls = cls.__mro__[1]
    return cls


def patch(original_function: Callable[..., Any], replacement: Callable[..., Any]) -> Callable[..., Any]:
    """A marked function that looks like ``original_function`` and calls ``replacement``."""

    @functools.wraps(original_function)
    def patched(*args: Any, **kwargs: Any) -> Any:
        return replacement(*args, **kwargs)

    setattr(patched, MARK, True)
    return patched


def mark(value: Any) -> Any:
    """Mark a replacement that is not a plain function wrapper (e.g. a subclass)."""
    setattr(value, MARK, True)
    return value


class HookSet:
    """The replacements one ``instrument()`` made, and the hooks it could not make."""

    def __init__(self) -> None:
        self.applied: list[tuple[Any, str, Any]] = []
        self.missing: list[str] = []

    def replace(self, owner: Any, attribute: str, replacement: Any) -> None:
        """Set ``owner.attribute``, remembering what was there for ``restore``."""
        self.applied.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, replacement)

    def miss(self, what: str, reason: str) -> None:
        self.missing.append(f"{what}: {reason}")

    def warn_missing(self) -> None:
        """One warning for everything that could not be hooked."""
        if self.missing:
            log.warning(
                "mlx-telemetry could not hook %d part(s) of this mlx-lm; the engine runs without "
                "that telemetry: %s",
                len(self.missing),
                "; ".join(self.missing),
            )

    def restore(self) -> None:
        """Put back what we replaced, newest first, leaving alone what others replaced after us."""
        for owner, attribute, previous in reversed(self.applied):
            if getattr(getattr(owner, attribute, None), MARK, False):
                setattr(owner, attribute, previous)
        self.applied.clear()

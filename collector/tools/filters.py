"""Which events a tool shows: the filters every tool takes, as one value."""

from __future__ import annotations

import fnmatch
from typing import Optional

import msgspec

from emitters.events import SEVERITY_RANK, Event

__all__ = ["EventFilter"]


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """The filters every tool takes; all given ones must match (globs within one are OR-ed)."""

    services: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    min_severity: Optional[str] = None
    trace_id: Optional[str] = None
    request_id: Optional[str] = None
    job_id: Optional[str] = None

    def matches(self, event: Event) -> bool:
        if self.services and not any(fnmatch.fnmatchcase(event.service, g) for g in self.services):
            return False
        if self.types and not any(fnmatch.fnmatchcase(event.type, g) for g in self.types):
            return False
        if self.min_severity is not None and SEVERITY_RANK[event.severity] < SEVERITY_RANK[self.min_severity]:
            return False
        if self.trace_id is not None and not (event.trace_id or "").startswith(self.trace_id):
            return False
        if self.request_id is not None and event.request_id != self.request_id:
            return False
        if self.job_id is not None and event.job_id != self.job_id:
            return False
        return True

"""Test-only shim, put on PYTHONPATH of the mlx_lm.server subprocess by tests/support/mlx_server.py.

TODO(#13): delete this file once ``Emitter.context(name=..., *, traceparent=...)``
(contract decision 1) is on main. Until then it lets ``emitters.mlx.serving``
call that signature: the traceparent's trace id becomes the scope's trace id
(the remote parent span and the ``span.ended`` event are #13's). When the real
signature is present it does nothing.
"""

import inspect
import re

from emitters.emitter import Emitter

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")

if "traceparent" not in inspect.signature(Emitter.context).parameters:
    _context = Emitter.context

    def context(self, name=None, *, traceparent=None, **ids):  # type: ignore[no-untyped-def]
        match = _TRACEPARENT.match(traceparent or "")
        if match and ids.get("trace_id") is None:
            ids["trace_id"] = match.group(1)
        return _context(self, **ids)

    Emitter.context = context  # type: ignore[method-assign]

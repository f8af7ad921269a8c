"""Operator tools: ``tail``, ``search``, ``timeline``, ``errors``, ``health``, ``dlq``.

Each of those modules exports one click command that ``collector.cli`` loads
lazily. They read Redis without a consumer group, so running one never takes
work away from the collectors nor changes their pending counts (``dlq replay``
and ``dlq purge`` are the only writers, and only to the dead-letter stream and
the stream a dead letter is replayed onto).

What they share, one job a module: ``command`` (the click classes), ``options``
(the shared options and the :class:`~collector.tools.options.Target` they
build), ``filters``, ``times`` (``--since``/``--until`` in, UTC times out),
``reading`` (streams and archive), ``formatting`` and ``output``. ``health``
is split the same way: ``health_snapshot`` reads, ``health_checks`` judges.

Conventions every tool follows:

- ``--redis-url`` (``$TELEMETRY_REDIS_URL``), ``--stream-prefix``
  (``$TELEMETRY_STREAM_PREFIX``) and ``--json``.
- Exit codes from :mod:`collector.exitcodes`: a bad argument, a secret that
  cannot be read, Redis out of reach or refusing the credentials are one
  ``Error: ...`` line (:mod:`collector.redisproblems`) and exit status 2.
- Colour only when stdout is a terminal (click strips it otherwise) and never
  with ``$NO_COLOR`` set.
- Times are the event's own ``ts`` (see :mod:`collector.tools.reading`).
"""

"""Operator tools: ``tail``, ``search``, ``timeline``, ``errors``, ``health``, ``dlq``.

Each module exports one click command that ``collector.cli`` loads lazily.
They read Redis without a consumer group, so running one never takes work
away from the collectors nor changes their pending counts (``dlq replay`` and
``dlq purge`` are the only writers, and only to the dead-letter stream and the
stream a dead letter is replayed onto).
"""

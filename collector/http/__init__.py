"""The live view: one small HTTP server with ``/metrics``, ``/healthz``, ``/readyz`` and the dashboard.

It runs inside the collector (``run --http-port``) or on its own against any
Redis (``telemetry-collector ui``); see :mod:`collector.http.server`.
"""

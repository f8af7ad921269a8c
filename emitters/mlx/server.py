"""``python -m emitters.mlx.server``: the stock ``mlx_lm.server``, instrumented, no code to write.

    python -m emitters.mlx.server --model PATH [any mlx_lm.server flag]
        [--telemetry-redis-url URL] [--telemetry-service NAME] [--telemetry-status-interval SECONDS]
        [--telemetry-stream-prefix PREFIX]

The ``--telemetry-*`` flags are ours (the URL also comes from
``TELEMETRY_REDIS_URL``, the service name from ``TELEMETRY_SERVICE``, the
prefix from ``TELEMETRY_STREAM_PREFIX``); every
other argument goes to ``mlx_lm.server`` unchanged, ``--help`` included. Redis
being down never stops the server: events are buffered, then counted as lost.
SIGTERM stops it like Ctrl-C (what is buffered is flushed on the way out).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType
from typing import Optional, Sequence

__all__ = ["main", "DEFAULT_SERVICE"]

DEFAULT_SERVICE = "mlx-lm-server"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_STATUS_INTERVAL = 10.0


def _options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--telemetry-redis-url", default=os.environ.get("TELEMETRY_REDIS_URL") or DEFAULT_REDIS_URL)
    parser.add_argument("--telemetry-service", default=os.environ.get("TELEMETRY_SERVICE") or DEFAULT_SERVICE)
    parser.add_argument("--telemetry-status-interval", default=str(DEFAULT_STATUS_INTERVAL))
    parser.add_argument("--telemetry-stream-prefix", default=os.environ.get("TELEMETRY_STREAM_PREFIX") or "telemetry")
    return parser.parse_known_args(list(argv))


def _usage_error(message: str) -> None:
    print(f"emitters.mlx.server: {message}", file=sys.stderr)
    raise SystemExit(2)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        _usage_error(f"--telemetry-status-interval must be a number of seconds > 0, got {text!r}; e.g. 10")
    return value


def _stop_like_ctrl_c(signum: int, frame: Optional[FrameType]) -> None:
    # mlx_lm.server shuts its HTTP server and generation thread down on KeyboardInterrupt.
    raise KeyboardInterrupt


_OUR_HELP = """telemetry options (emitters.mlx.server; every other option is mlx_lm.server's, below):
  --telemetry-redis-url URL          Redis for the events [env TELEMETRY_REDIS_URL, default redis://localhost:6379/0]
  --telemetry-service NAME           service name on every event [env TELEMETRY_SERVICE, default mlx-lm-server]
  --telemetry-status-interval SECS   seconds between runtime.status events [default 10]
  --telemetry-stream-prefix PREFIX   stream key prefix [env TELEMETRY_STREAM_PREFIX, default telemetry]
"""


def main(argv: Optional[Sequence[str]] = None) -> None:
    options, server_argv = _options(sys.argv[1:] if argv is None else argv)
    if "-h" in server_argv or "--help" in server_argv:
        print(_OUR_HELP)
        _serve(server_argv)  # mlx_lm.server prints its own options and exits
        return
    interval = _interval(options.telemetry_status_interval)
    import redis

    from emitters import Emitter
    from emitters.mlx import instrument, uninstrument

    try:
        redis.Redis.from_url(options.telemetry_redis_url)  # checks the URL's form; connects later
    except ValueError as exc:
        _usage_error(f"--telemetry-redis-url (or TELEMETRY_REDIS_URL): {exc}; e.g. redis://localhost:6379/0")
    try:
        emitter = Emitter(
            options.telemetry_service, options.telemetry_redis_url, stream_prefix=options.telemetry_stream_prefix
        )
    except ValueError as exc:
        _usage_error(f"--telemetry-service / --telemetry-stream-prefix: {exc}")
    instrumentation = instrument(emitter, heartbeat_interval=interval)
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        _serve(server_argv)
    except KeyboardInterrupt:
        pass
    finally:
        uninstrument()
        instrumentation.runtime_status("shutdown")
        emitter.close()


def _serve(server_argv: list[str]) -> None:
    sys.argv = ["mlx_lm.server", *server_argv]
    from mlx_lm.server import main as serve

    serve()


if __name__ == "__main__":
    main()

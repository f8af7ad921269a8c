"""One read of the streams running on a worker thread while the loop delivers the batch in hand.

The daemon's loop is strictly ordered: read, decode, write to the sinks,
ack. With a backlog the next batch is certainly there, so the round trip
for it (Redis building the reply on its own core, the socket transfer) can
run while this batch is written and fsynced, both of which release the GIL.
At most one read is ahead: with the batch in hand that bounds the entries
read but not acked to two batches, which is also what a crash can deliver
twice.

The read itself is a plain callable; whatever it raises is raised again by
:meth:`ReadAhead.take`, on the loop's thread, where every Redis error is
handled as if the loop had read synchronously.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Optional, TypeVar

__all__ = ["ReadAhead"]

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """At most one read in flight; :meth:`take` waits for it and hands its reply over."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._future: Optional[Future[T]] = None

    @property
    def outstanding(self) -> bool:
        return self._future is not None

    def start(self, read: Callable[[], T]) -> None:
        if self._future is not None:
            raise RuntimeError("read-ahead: one read is already in flight")
        self._future = self._executor.submit(read)

    def take(self) -> T:
        """The read's reply, waiting for it; re-raises what the read raised."""
        if self._future is None:
            raise RuntimeError("read-ahead: no read in flight")
        future, self._future = self._future, None
        return future.result()

    def forget(self) -> None:
        """Drop the read in flight unseen: what it delivered is in the consumer's pending list,
        and the caller rereads that list (after a reconnect) rather than trust a stale cursor."""
        self._future = None

    def close(self) -> None:
        self._future = None
        self._executor.shutdown(wait=False, cancel_futures=True)

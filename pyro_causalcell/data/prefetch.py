"""Draw minibatches in a background thread, so a training step never waits on the disk."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
_END = object()


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """Yield ``items`` in order, drawn by a background thread up to ``depth`` items ahead.

    Reading a minibatch from disk (h5py, zarr and SciPy release the GIL for most of it) then
    overlaps the step on the previous one. An error raised while drawing is raised here, at the
    item where it happened; leaving the loop early stops the thread.

    Parameters
    ----------
    items : iterable
    depth : int
        Items drawn ahead; 0 draws them in the caller's thread (no thread).
    """
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def draw() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer
            put((_END, error))

    worker = threading.Thread(target=draw, name="causalcell-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        worker.join()

"""Model calls with a time limit, at most a fixed number at once.

Each call runs in a worker thread that holds one of the demo's model slots for as long as the backend works on
it. The request's handler waits for the call's results only until the request's deadline; past it the handler
gets :class:`RequestTimeout` and returns (so Gradio's queue moves on), and the worker stops at the next point the
backend hands control back (between two streamed pieces) and closes the backend's iterator before it frees its
slot. A backend call that never hands control back keeps its slot until it returns: later requests then wait
for a slot within their own time limit instead of piling more work onto the model.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["ModelSlots", "RequestTimeout"]

T = TypeVar("T")

_ITEM, _DONE, _ERROR, _NO_SLOT = range(4)


class RequestTimeout(Exception):
    """A request ran past its time limit (``str(err)`` is the message for the page)."""


class ModelSlots:
    """``slots`` model calls at once; :meth:`stream` and :meth:`call` bound each by an absolute deadline."""

    def __init__(self, slots: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._free = threading.Semaphore(slots)

    def deadline(self) -> float:
        """The deadline of a request starting now (``time.monotonic()`` seconds)."""
        return time.monotonic() + self.timeout_s

    def _timeout(self, busy: bool) -> RequestTimeout:
        if busy:
            return RequestTimeout(f"the model stayed busy past the {self.timeout_s:g} s time limit; try again")
        return RequestTimeout(f"the request ran past the {self.timeout_s:g} s time limit and was stopped")

    def stream(self, start: Callable[[], Iterable[T]], deadline: float) -> Iterator[T]:
        """The items of ``start()``, run in a worker thread holding a slot; :class:`RequestTimeout` past
        ``deadline``; the backend's own exceptions are raised here as they are."""
        results: queue.SimpleQueue = queue.SimpleQueue()
        stop, running = threading.Event(), threading.Event()

        def work() -> None:
            if not self._free.acquire(timeout=max(0.0, deadline - time.monotonic())):
                results.put((_NO_SLOT, None))
                return
            running.set()
            try:
                if stop.is_set():
                    return
                items = start()
                try:
                    for item in items:
                        if stop.is_set():
                            return
                        results.put((_ITEM, item))
                    results.put((_DONE, None))
                finally:
                    close = getattr(items, "close", None)
                    if close is not None:
                        close()  # a generator's own cleanup runs now, before the slot is free
            except BaseException as err:  # handed to the caller's thread
                results.put((_ERROR, err))
            finally:
                self._free.release()

        threading.Thread(target=work, name="demo-model-call", daemon=True).start()
        try:
            while True:
                try:
                    kind, value = results.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise self._timeout(busy=not running.is_set()) from None
                if kind == _ITEM:
                    yield value
                elif kind == _DONE:
                    return
                elif kind == _ERROR:
                    raise value
                else:
                    raise self._timeout(busy=True)
        finally:
            stop.set()  # done, timed out, failed or abandoned by the caller: the worker stops at its next item

    def call(self, fn: Callable[..., Any], *args: Any, deadline: float) -> Any:
        """``fn(*args)`` in a worker thread holding a slot, bounded by ``deadline`` like :meth:`stream`."""
        for result in self.stream(lambda: iter([fn(*args)]), deadline):
            return result
        raise AssertionError("unreachable: a call yields exactly one result")

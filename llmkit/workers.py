"""A small pool of threads of its own that run blocking calls for the event loop (see Workers)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextvars import copy_context
from functools import partial
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class Workers:
    """Up to `size` threads of their own running calls for the event loop: a SimpleQueue in, and
    call_soon_threadsafe out. About half the CPU per call of run_in_executor on a
    ThreadPoolExecutor, which wraps a concurrent future in an asyncio one (measured: this is
    paid on every request). A thread starts when a call finds none waiting, so a busy render
    never holds up the next call, and calls made one at a time use one thread. A call runs in
    its caller's context (what the request pinned: the snapshot of a served ref)."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._waiting = 0  # threads blocked on the queue, ready for a call

    async def run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._queue.put((loop, future, partial(copy_context().run, call)))
            if self._queue.qsize() > self._waiting and self._started < self._size:
                self._started += 1
                name = f"{self._name}-{self._started}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        return await future

    def close(self) -> None:
        """Threads end once the calls queued before this are done."""
        with self._lock:
            for _ in range(self._started):
                self._queue.put(None)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            item = self._queue.get()
            with self._lock:
                self._waiting -= 1
            if item is None:
                return
            loop, future, call = item
            try:
                outcome: tuple[Any, BaseException | None] = (call(), None)
            except BaseException as exc:  # handed to the awaiting task, which raises it
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller went away meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)

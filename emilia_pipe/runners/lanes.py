"""Worker threads for the local runner's lanes (batched stages, writes) that a stuck task cannot hold up.

A thread cannot be stopped from outside. So when a task is past its deadline its thread is left behind
(a daemon thread: it never keeps the process from exiting) and a new thread takes its place, so the
lane keeps its width and the run goes on; what the stuck task was doing is recorded as failed by the
scheduler."""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import queue
import threading
import time


class Lane:
    def __init__(self, threads: int, name: str):
        self.name = name
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.running: dict[cf.Future, threading.Thread] = {}
        self.began: dict[cf.Future, float] = {}  # when each task began to run
        self.abandoned: set[threading.Thread] = set()
        self.threads: list[threading.Thread] = []
        self._ids = itertools.count()
        for _ in range(max(1, threads)):
            self._spawn()

    def _spawn(self) -> None:
        t = threading.Thread(target=self._work, name=f"{self.name}-{next(self._ids)}", daemon=True)
        self.threads.append(t)
        t.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while me not in self.abandoned:
            item = self.queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            self.began[future] = time.monotonic()
            self.running[future] = me
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                self.running.pop(future, None)
                self.began.pop(future, None)

    def submit(self, fn, *args) -> cf.Future:
        future: cf.Future = cf.Future()
        self.queue.put((future, fn, args))
        return future

    def abandon(self, future: cf.Future) -> bool:
        """``future``'s task is past its deadline: cancel it if it has not started, else leave its thread
        behind and start another. Returns whether a running task was left behind."""
        thread = self.running.get(future)
        if thread is None:
            future.cancel()
            return False
        self.abandoned.add(thread)
        self.threads.remove(thread)
        self._spawn()
        return True

    def close(self) -> None:
        """Stop the threads once the queued work is done; never waits for a stuck one."""
        for _ in self.threads:
            self.queue.put(None)

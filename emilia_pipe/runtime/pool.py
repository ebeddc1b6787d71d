"""A bounded, ordered map over threads: for calls that mostly wait (a remote object's metadata, a stat on a
network filesystem), where one call after another would spend the time waiting."""
from __future__ import annotations

import concurrent.futures as cf
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fn`` of each item, in the items' order, at most ``threads`` calls at once. Items are taken from
    ``items`` as calls finish (at most ``2 * threads`` waiting), so a long iterable is never held whole.
    An exception from a call is raised when its result's turn comes. One thread: plain calls, no pool."""
    threads = max(1, int(threads))
    if threads == 1:
        yield from map(fn, items)
        return
    with cf.ThreadPoolExecutor(threads) as pool:
        pending: deque[cf.Future] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or a caller that stops early: nothing more starts
            for f in pending:
                f.cancel()


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

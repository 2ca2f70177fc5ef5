"""Map-like callables for fitness evaluation: serial, a process pool, or dask.

Each factory is a context manager that yields a callable with the semantics
of the builtin ``map``: ``mapper(fn, items)`` returns an iterable of
``fn(item)`` **in input order**. Engines pass the same mapper to every
generation, so everything random stays in the calling process and the
workers only evaluate; for a deterministic ``fn`` the three mappers give
identical results.

``serial_map()``
    The builtin ``map``, in this process.
``process_map(workers)``
    A :class:`concurrent.futures.ProcessPoolExecutor` (``spawn`` start
    method by default, so it is safe in a process that already runs threads).
    Items are sent in chunks; ``fn`` is pickled **once** per distinct
    function object and unpickled once per worker (workers cache it by the
    digest of its pickle), so an evaluator that carries the training data is
    not rebuilt for every chunk.
``dask_map(workers=None, scheduler=None)``
    dask.distributed: a ``LocalCluster(n_workers=workers,
    threads_per_worker=1, processes=True)`` or a ``Client`` of a running
    scheduler address. ``fn`` is scattered to every worker once per distinct
    function object; chunks of items go out with ``client.map`` and come back
    with ``client.gather`` in order.

``fn`` and the items must be picklable (a module-level function or an
instance of a module-level class). A lambda is accepted only when
``cloudpickle`` is installed.
"""
from __future__ import annotations

import hashlib
import math
import pickle
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from features.errors import StepMLError

__all__ = ["serial_map", "process_map", "dask_map", "chunked", "mapper_for"]

#: Worker-side cache of unpickled functions, keyed by the digest of their pickle.
_FN_CACHE: "OrderedDict[str, Any]" = OrderedDict()
_FN_CACHE_SIZE = 4
#: Seconds to wait for a running dask scheduler (``--scheduler``) to answer.
CONNECT_TIMEOUT_S = 10


def chunked(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` cut into consecutive lists of at most ``size`` (order kept)."""
    size = max(1, int(size))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _dumps(fn: Any) -> bytes:
    try:
        return pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        try:
            import cloudpickle
        except ImportError:
            raise
        return cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)


def _cached_fn(key: str, blob: bytes) -> Any:
    cached = _FN_CACHE.get(key)
    if cached is not None:
        _FN_CACHE.move_to_end(key)
        return cached
    fn = pickle.loads(blob)
    _FN_CACHE[key] = fn
    while len(_FN_CACHE) > _FN_CACHE_SIZE:
        _FN_CACHE.popitem(last=False)
    return fn


def _run_chunk(key: str, blob: bytes, chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Worker: apply the (cached) function to each argument tuple of a chunk."""
    fn = _cached_fn(key, blob)
    return [fn(*args) for args in chunk]


def _run_dask_chunk(chunk: list[tuple[Any, ...]], fn: Any) -> list[Any]:
    """Dask worker: ``fn`` arrives already resolved from its scattered future."""
    return [fn(*args) for args in chunk]


class _FunctionBlob:
    """The pickle of the last function mapped, reused while the same object is mapped again."""

    def __init__(self) -> None:
        self._fn: Any = None
        self.key = ""
        self.blob = b""

    def get(self, fn: Any) -> tuple[str, bytes]:
        if fn is not self._fn:
            blob = _dumps(fn)
            self._fn, self.blob = fn, blob
            self.key = hashlib.sha256(blob).hexdigest()
        return self.key, self.blob


def _default_chunksize(n: int, workers: int) -> int:
    return max(1, math.ceil(n / (4 * max(1, workers))))


class _ProcessMap:
    """``map``-like callable over a process pool (see :func:`process_map`)."""

    def __init__(self, executor: Any, workers: int, chunksize: int | None) -> None:
        self._executor = executor
        self.workers = workers
        self.chunksize = chunksize
        self._blob = _FunctionBlob()

    def __call__(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        items = list(zip(*iterables))
        if not items:
            return iter(())
        key, blob = self._blob.get(fn)
        size = self.chunksize or _default_chunksize(len(items), self.workers)
        futures = [self._executor.submit(_run_chunk, key, blob, chunk) for chunk in chunked(items, size)]
        results: list[Any] = []
        for future in futures:
            results.extend(future.result())
        return iter(results)


class _DaskMap:
    """``map``-like callable over a dask.distributed client (see :func:`dask_map`)."""

    def __init__(self, client: Any, chunksize: int | None) -> None:
        self.client = client
        self.chunksize = chunksize
        self._fn: Any = None
        self._future: Any = None

    def _workers(self) -> int:
        try:
            return max(1, len(self.client.scheduler_info().get("workers", {})))
        except Exception:  # scheduler_info may fail transiently; chunking only
            return 1

    def __call__(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        items = list(zip(*iterables))
        if not items:
            return iter(())
        if fn is not self._fn:
            self._future = self.client.scatter(fn, broadcast=True, hash=False)
            self._fn = fn
        size = self.chunksize or _default_chunksize(len(items), self._workers())
        futures = self.client.map(_run_dask_chunk, chunked(items, size), fn=self._future, pure=False)
        results: list[Any] = []
        for part in self.client.gather(futures):
            results.extend(part)
        return iter(results)


@contextmanager
def serial_map() -> Iterator[Callable[..., Iterable[Any]]]:
    """The builtin ``map`` (evaluation in this process)."""
    yield map


@contextmanager
def process_map(workers: int | None = None, chunksize: int | None = None,
                start_method: str = "spawn") -> Iterator[_ProcessMap]:
    """A process-pool ``map``; the pool lives as long as the ``with`` block.

    Parameters
    ----------
    workers : int, optional
        Worker processes (default: ``os.cpu_count()``).
    chunksize : int, optional
        Items per task (default: about four tasks per worker per call).
    start_method : str
        ``spawn`` (default), ``forkserver`` or ``fork``.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    n = int(workers or os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"process_map needs at least one worker, got {workers}")
    executor = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context(start_method))
    try:
        yield _ProcessMap(executor, n, chunksize)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@contextmanager
def dask_map(workers: int | None = None, scheduler: str | None = None,
             chunksize: int | None = None) -> Iterator[_DaskMap]:
    """A dask.distributed ``map``: a local cluster, or a running scheduler at ``scheduler``.

    Parameters
    ----------
    workers : int, optional
        Worker processes of the local cluster (dask's default when None);
        ignored with ``scheduler``.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``).
    chunksize : int, optional
        Items per task (default: about four tasks per worker per call).
    """
    import logging

    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        from discovery.config import check_scheduler_address

        address = check_scheduler_address(scheduler)
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise StepMLError(f"--scheduler {address}: cannot connect ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        yield _DaskMap(client, chunksize)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextmanager
def mapper_for(workers: int | None = None, scheduler: str | None = None,
               processes: int | None = None) -> Iterator[Any]:
    """The mapper the ``--workers`` / ``--scheduler`` / ``--processes`` options ask for (None: in this process).

    Counts below 1 and a malformed scheduler address are one-line errors, raised
    before anything starts.
    """
    from features.errors import StepMLError

    for flag, value in (("--workers", workers), ("--processes", processes)):
        if value is not None and value < 1:
            raise StepMLError(f"{flag} must be >= 1, got {value}")
    if scheduler is not None:
        from discovery.config import check_scheduler_address

        check_scheduler_address(scheduler)
    if workers is not None or scheduler is not None:
        with dask_map(workers=workers, scheduler=scheduler) as mapper:
            yield mapper
    elif processes is not None:
        with process_map(processes) as mapper:
            yield mapper
    else:
        yield None

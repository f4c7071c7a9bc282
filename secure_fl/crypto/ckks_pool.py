"""Process-parallel CKKS chunk work for one party: a persistent worker pool per key set.

TenSEAL holds Python's GIL while it encodes, encrypts, serialises, loads and decrypts a
``CKKSVector``, so threads do not help (two threads ran at 0.89x); separate processes do. A
party whose machine has more than one core (``os.sched_getaffinity``) runs the chunks of a
large vector on a pool of worker processes; small vectors stay on the serial path.

The pool. Created lazily on first use, reused for every later vector of the same key set
(across rounds), and shut down at interpreter exit (and when another key set needs a pool:
at most one pool lives per process, so a process never holds more than one set of workers).
It is keyed by the context's fingerprint and whether it holds the secret key. Workers start
with ``forkserver`` (``spawn`` where forkserver is unavailable), never plain ``fork``: a
forked copy of a process running torch's threads can deadlock, and a fresh interpreter shares
no state (no PRNG state, no locks) with its parent. As with every ``spawn``/``forkserver`` pool, the
workers import the main script again: a script that encrypts large vectors must start its work
under ``if __name__ == "__main__":`` (the ``secure-fl`` command and ``python -m`` runs do).

The key. Each worker is initialised once with the party's own serialised context. For a site
that decrypts this context **holds the secret key**: it goes to the site's own child processes
through the pipe multiprocessing starts them with (pickled start arguments), never to disk,
never to another party; the workers die with the pool. The assumption this rests on is the
one a site already makes for its own process: its memory (and that of its children, same user)
is not readable by others.

Randomness. Encryption randomness comes from SEAL's CSPRNG (BLAKE2-based PRNG seeded from
``std::random_device``, i.e. the OS) inside each worker process, fresh for every ciphertext;
no seed is shared between workers (``tests/test_ckks_parallel.py`` checks the ciphertext bytes).

Workers. ``SECURE_FL_CKKS_WORKERS`` (an integer >= 1; 1 = always serial) overrides the
default, the number of cores this process may run on. A pool is used only for vectors of at
least :data:`MIN_PARALLEL_CHUNKS` chunks (measured break-even, see its comment). Results come
back in chunk order; at most a few batches are in flight, so memory stays at about one batch
per worker. A task that raises in a worker raises the same exception in the caller (the chunk
work is the serial code); a worker that dies (``BrokenProcessPool``) becomes a
:class:`CkksWorkerError` and the pool is rebuilt on the next call.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np
import tenseal as ts

from ..errors import InvalidParameter, SecureFLError
from .ckks import CkksContext, ContextKind, ScaledParts, encrypt_one
from .ckks_params import CkksPreset

__all__ = [
    "ENV_WORKERS",
    "MIN_PARALLEL_CHUNKS",
    "BATCH_CHUNKS",
    "CkksWorkerError",
    "ChunkPool",
    "configured_workers",
    "workers_for",
    "get_pool",
    "shutdown_pools",
    "worker_context",
    "iter_encrypted",
    "pool_starts",
    "pool_tasks",
    "worker_cpu_seconds",
]

ENV_WORKERS = "SECURE_FL_CKKS_WORKERS"

#: smallest number of chunks a vector needs before the pool is used. Measured on an idle 2-core machine
#: (``python benchmarks/bench_ckks_parallel.py --table``, ``compact``, three runs): a 2-worker pool starts in
#: 0.45 s (once per process) and then saves 1.4 ms per chunk on encrypt + decrypt (1.62-1.67x at 1M
#: parameters; warm, 2 workers were 1.6x faster already at 16 chunks, the smallest size timed). A cold pool
#: therefore pays for its start within one vector of ~320 chunks (1.3M parameters) and within ~5 rounds at
#: 64 chunks (~260k parameters, ~90 ms saved a round); below that the saving is too small for two more
#: processes of ~47 MB each.
MIN_PARALLEL_CHUNKS = 64

#: chunks per task sent to a worker (amortises the pipe round trip; ~0.7 MB of ciphertext with ``compact``)
BATCH_CHUNKS = 8

_T = TypeVar("_T")
_R = TypeVar("_R")


class CkksWorkerError(SecureFLError, RuntimeError):
    """A CKKS worker process died (killed, out of memory, crashed); the pool is rebuilt on the next call."""


def configured_workers() -> int:
    """Worker processes this party may use: ``SECURE_FL_CKKS_WORKERS`` or the cores it may run on."""
    raw = os.environ.get(ENV_WORKERS)
    if raw is None or raw.strip() == "":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # platforms without sched_getaffinity (macOS, Windows)
            return max(1, os.cpu_count() or 1)
    try:
        n = int(raw.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise InvalidParameter(ENV_WORKERS, "must be a whole number >= 1 (1 = encrypt and decrypt serially)", raw)
    return n


def workers_for(n_chunks: int, workers: int | None = None) -> int:
    """Workers to use for a vector of ``n_chunks`` chunks: 1 (serial) below :data:`MIN_PARALLEL_CHUNKS`,
    else ``workers`` (default :func:`configured_workers`), never more than there are batches."""
    w = configured_workers() if workers is None else workers
    if not isinstance(w, int) or isinstance(w, bool) or w < 1:
        raise InvalidParameter("workers", "must be a whole number >= 1 (1 = serial)", w)
    if w == 1 or n_chunks < MIN_PARALLEL_CHUNKS:
        return 1
    return max(1, min(w, -(-n_chunks // BATCH_CHUNKS)))


# --- inside a worker ------------------------------------------------------------------------

_WORKER_CTX: CkksContext | None = None


def _init_worker(blob: bytes, kind: ContextKind, preset: CkksPreset, fingerprint: str) -> None:
    global _WORKER_CTX
    ctx = ts.context_from(blob)
    ctx.global_scale = float(2**preset.scale)
    _WORKER_CTX = CkksContext(ctx, kind, preset, fingerprint)


def worker_context() -> CkksContext:
    """The context this worker process was started with (only inside a pool worker)."""
    if _WORKER_CTX is None:
        raise CkksWorkerError("worker_context() called outside a CKKS worker process")
    return _WORKER_CTX


def _encrypt_batch(part: np.ndarray) -> list[bytes]:
    """Encrypt consecutive slot-sized chunks of ``part`` (already checked by the caller)."""
    ctx = worker_context()
    slots = ctx.preset.slots
    return [encrypt_one(ctx, part[i : i + slots]) for i in range(0, part.size, slots)]


# --- the pool ---------------------------------------------------------------------------------

_LOCK = threading.Lock()
_POOLS: dict[tuple[str, bool], ChunkPool] = {}
_STARTS = 0
_TASKS = 0


def pool_starts() -> int:
    """How many pools this process has started."""
    return _STARTS


def pool_tasks() -> int:
    """How many tasks this process has handed to pool workers (tests check that small vectors hand none)."""
    return _TASKS


def worker_cpu_seconds() -> float:
    """CPU seconds (user + system) the live workers of this process have used so far; 0.0 where ``/proc``
    is absent. A party's CPU cost is its own ``time.process_time()`` plus the change of this value."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pool in list(_POOLS.values()):
        for pid in pool.pids():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:  # no /proc, or the worker has gone
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _mp_context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class ChunkPool:
    """``workers`` processes holding one context; :meth:`map_ordered` runs tasks and yields results in order."""

    def __init__(self, ctx: CkksContext, workers: int) -> None:
        private = ctx.can_decrypt
        blob = ctx.context.serialize(
            save_public_key=ctx.preset.encryption == "public-key",
            save_secret_key=private,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        self.key = (ctx.fingerprint, private)
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=_mp_context(),
            initializer=_init_worker,
            initargs=(blob, ctx.kind, ctx.preset, ctx.fingerprint),
        )
        del blob

    def pids(self) -> list[int]:
        """The worker processes' ids (those started so far)."""
        procs = getattr(self._executor, "_processes", None) or {}
        return sorted(int(p) for p in procs)

    def map_ordered(self, fn: Callable[[_T], _R], tasks: Iterable[_T], window: int | None = None) -> Iterator[_R]:
        """Run ``fn`` on each task in the workers; yield the results in task order.

        At most ``window`` (default twice the workers) tasks are in flight, so a long vector is never held
        whole. An exception raised by ``fn`` is raised here unchanged (pending tasks are cancelled).
        """
        global _TASKS
        limit = window or 2 * self.workers
        pending: deque[Future[_R]] = deque()
        try:
            for task in tasks:
                pending.append(self._executor.submit(fn, task))
                _TASKS += 1
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except (BrokenProcessPool, BrokenPipeError) as exc:
            _discard(self)
            raise CkksWorkerError(
                f"a CKKS worker process died ({type(exc).__name__}: {exc}); nothing of this vector was kept and the "
                "pool is rebuilt on the next call. Workers start a fresh interpreter that imports the main script "
                "again: a script must start its work under `if __name__ == \"__main__\":`; or set "
                f"{ENV_WORKERS}=1 to encrypt and decrypt in this process"
            ) from exc
        finally:
            for fut in pending:
                fut.cancel()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _discard(pool: ChunkPool) -> None:
    with _LOCK:
        if _POOLS.get(pool.key) is pool:
            del _POOLS[pool.key]
    pool.shutdown()


def get_pool(ctx: CkksContext, workers: int) -> ChunkPool:
    """The process's pool for ``ctx``'s key set with ``workers`` workers, started on first use."""
    global _STARTS
    key = (ctx.fingerprint, ctx.can_decrypt)
    old: list[ChunkPool] = []
    with _LOCK:
        pool = _POOLS.get(key)
        if pool is not None and pool.workers != workers:
            old.append(_POOLS.pop(key))
            pool = None
        if pool is None:
            old.extend(_POOLS.values())  # one pool per process: another key set's workers go
            _POOLS.clear()
            pool = ChunkPool(ctx, workers)
            _POOLS[key] = pool
            _STARTS += 1
    for p in old:
        p.shutdown()
    return pool


def shutdown_pools() -> None:
    """Stop every worker (registered at exit; safe to call any time, the next call starts a new pool)."""
    with _LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.shutdown()


atexit.register(shutdown_pools)


def iter_encrypted(ctx: CkksContext, x: np.ndarray | ScaledParts, workers: int) -> Iterator[bytes]:
    """The serialised ciphertexts of ``x``'s slot-sized chunks, in order, encrypted by ``workers`` processes
    (``x`` already checked by :func:`~secure_fl.crypto.ckks.encodable`)."""
    slots = ctx.preset.slots
    if workers <= 1:
        for i in range(0, x.size, slots):
            yield encrypt_one(ctx, x[i : i + slots])
        return
    step = BATCH_CHUNKS * slots
    pool = get_pool(ctx, workers)
    for batch in pool.map_ordered(_encrypt_batch, (x[i : i + step] for i in range(0, x.size, step))):
        yield from batch

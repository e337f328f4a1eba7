"""Training-set partitions computed in worker processes that never inherit the caller's threads.

Workers come from a ``forkserver``: a clean process started once, from which each worker is forked.
Forking the caller itself (a notebook, a test runner, a process holding Kafka client or Arrow pool
threads) can copy a lock another thread holds and hang the child forever; a fork server holds none.
Each partition's work travels pickled (its spill file's path, not its events); definitions files
loaded by path are loaded again in each worker, so their functions unpickle there. A feature set that
cannot be pickled (a lambda) is computed in process
instead, with one warning: slower, never wrong. A worker that dies raises, never hangs.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from aggregations.loading import load_module_file, loaded_definition_files

log = logging.getLogger(__name__)

# Raised in the parent (pickling) or the worker (unpickling: the set's module is not importable there).
_NOT_PORTABLE = (pickle.PicklingError, AttributeError, ModuleNotFoundError, ImportError, TypeError)


def _load_definitions(files: dict[str, str]) -> None:
    """Worker initializer: load the caller's definitions files under the same module names."""
    for name, path in files.items():
        try:
            load_module_file(name, path)
        except Exception:  # a broken file only matters if a partition needs it: that one falls back
            log.debug("could not load definitions file %s in a worker", path, exc_info=True)


class WorkerDied(RuntimeError):
    """A worker process ended without a result (killed, out of memory)."""


def portable(obj: Any) -> bool:
    """Whether obj survives pickling (so a fresh worker process can receive it)."""
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


def run_partitions(
    compute: Callable[[Any], Any],
    works: dict[int, Any],
    workers: int,
    in_process: Callable[[int], Any],
) -> Iterator[tuple[int, Any]]:
    """(partition, compute(works[p])) as they finish, in up to ``workers`` fresh processes.

    ``compute`` must be a module-level function. A partition whose work cannot travel to a worker is
    computed by ``in_process(p)`` instead.
    """
    context = multiprocessing.get_context("forkserver")
    warned = False
    try:
        pool = ProcessPoolExecutor(
            max_workers=min(workers, len(works)),
            mp_context=context,
            initializer=_load_definitions,
            initargs=(loaded_definition_files(),),
        )
    except (OSError, ValueError) as exc:  # e.g. no /dev/shm for the pool's semaphores
        log.warning("training-set workers unavailable (%s): computing in one process", exc)
        yield from ((p, in_process(p)) for p in works)
        return
    with pool:
        pending = {pool.submit(compute, work): p for p, work in works.items()}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                p = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool as exc:
                    for other in pending:
                        other.cancel()
                    raise WorkerDied(
                        "a training-set worker process died without a result (killed or out of memory?); "
                        "retry with fewer --workers or more --partitions"
                    ) from exc
                except _NOT_PORTABLE as exc:
                    if not warned:
                        log.warning(
                            "a partition could not run in a worker process (%s): computing in process", exc
                        )
                        warned = True
                    result = in_process(p)
                yield p, result

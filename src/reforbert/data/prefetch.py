"""Making the coming steps' batches in worker processes while the model trains on the current one.

Reading, masking and collating a batch is Python work of a few milliseconds per hundred examples. On a
CPU it is a small share of a step; on a GPU, where a small model's step takes milliseconds too, the
device would wait for it every step. :class:`Prefetcher` hands the work to PyTorch's DataLoader workers:
the training loop asks for the batch of each step in turn and gets it already made.

The keys (which examples, in which epoch) come from the same deterministic order the loop follows, and
each batch is a pure function of its key (masks are seeded per example), so a run makes exactly the same
batches with any number of workers.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from torch.utils.data import DataLoader, Dataset, Sampler

from reforbert.errors import ReforBertInputError

Key = TypeVar("Key")


class _MadeOnDemand(Dataset, Generic[Key]):
    """``dataset[key]`` is ``(key, make(key))``; a bad-input error comes back as the value, whole."""

    def __init__(self, make: Callable[[Key], Any]) -> None:
        self.make = make

    def __getitem__(self, key: Key) -> tuple[Key, Any]:
        try:
            return key, self.make(key)
        except ReforBertInputError as error:
            # Re-raised as it is in the training process, so the one-line message names the file; the
            # DataLoader's own wrapping would add the worker's traceback to it.
            return key, error


class _Keys(Sampler, Generic[Key]):
    def __init__(self, keys: Iterable[Key]) -> None:
        self.keys = keys

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)


def _as_made(item: Any) -> Any:
    return item


def _leave_stopping_to_the_loop(worker_id: int) -> None:
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group. The training loop answers them by
    # finishing its step and writing a checkpoint; a worker that died of them first could leave it
    # waiting for a batch that never comes. The loop ends the workers itself when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Prefetcher(Generic[Key]):
    """``make(key)`` for each of ``keys`` in turn, made ahead in ``workers`` processes.

    :meth:`next` returns them in the order of ``keys`` and checks that the caller expected that key:
    a loop that took another path than the keys foresaw fails loudly instead of training on the
    wrong batch. Use as a context manager, so that the workers end with the loop.
    """

    def __init__(
        self,
        make: Callable[[Key], Any],
        keys: Iterable[Key],
        workers: int,
        pin_memory: bool = False,
        ahead_per_worker: int = 4,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a Prefetcher needs at least one worker, got {workers}")
        self._loader = DataLoader(
            _MadeOnDemand(make),
            sampler=_Keys(keys),
            batch_size=None,  # each key is one item: the batch is made by ``make`` itself
            collate_fn=_as_made,
            num_workers=workers,
            prefetch_factor=ahead_per_worker,
            pin_memory=pin_memory,
            worker_init_fn=_leave_stopping_to_the_loop,
        )
        self._items: Iterator[tuple[Key, Any]] | None = iter(self._loader)

    def next(self, expected: Key) -> Any:
        if self._items is None:
            raise RuntimeError("the prefetcher is closed")
        key, value = next(self._items)
        if key != expected:
            raise RuntimeError(f"prefetched the batch of {key!r} where {expected!r} was due")
        if isinstance(value, ReforBertInputError):
            raise value
        return value

    def close(self) -> None:
        # Dropping the iterator stops its workers (and the pin-memory thread).
        self._items = None
        self._loader = None  # type: ignore[assignment]

    def __enter__(self) -> Prefetcher[Key]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""The prefetcher: batches made ahead in worker processes come back in order, as the loop would make them."""

from __future__ import annotations

import signal

import pytest

from reforbert.data.prefetch import Prefetcher
from reforbert.errors import ReforBertInputError


def square_or_refuse(key: int) -> int:
    if key == 5:
        raise ReforBertInputError("example 5 is broken", "data/shard-0", line=5)
    return key * key


def test_values_come_back_in_the_order_of_the_keys() -> None:
    with Prefetcher(square_or_refuse, iter(range(4)), workers=2) as prefetcher:
        assert [prefetcher.next(key) for key in range(4)] == [0, 1, 4, 9]


def test_bad_input_in_a_worker_is_raised_whole_in_the_loop() -> None:
    with Prefetcher(square_or_refuse, iter(range(3, 8)), workers=2) as prefetcher:
        assert prefetcher.next(3) == 9 and prefetcher.next(4) == 16
        with pytest.raises(ReforBertInputError) as raised:
            prefetcher.next(5)
    assert str(raised.value) == "data/shard-0:5: example 5 is broken"


def test_a_key_out_of_step_stops_the_loop() -> None:
    with Prefetcher(square_or_refuse, iter(range(4)), workers=1) as prefetcher:
        with pytest.raises(RuntimeError, match="prefetched the batch of 0 where 1 was due"):
            prefetcher.next(1)
        prefetcher.close()
        with pytest.raises(RuntimeError, match="closed"):
            prefetcher.next(1)


def stop_signals_ignored(key: int) -> bool:
    return signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_workers_leave_ctrl_c_and_sigterm_to_the_training_loop() -> None:
    with Prefetcher(stop_signals_ignored, iter(range(2)), workers=1) as prefetcher:
        assert prefetcher.next(0) is True

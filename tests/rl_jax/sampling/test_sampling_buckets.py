"""Length and batch buckets: every size fits its bucket, padding is bounded, and few distinct programs result."""

from __future__ import annotations

import pytest

from rl_jax.sampling.buckets import Buckets


def test_every_length_fits_a_bucket_that_wastes_a_bounded_share():
    b = Buckets()
    previous = 0
    for n in range(1, 20_000):
        bucket = b.length(n)
        assert bucket >= n and bucket >= previous  # fits, and never shrinks as n grows
        previous = bucket
        if n > b.min_length:
            waste = (bucket - n) / bucket
            assert waste < (1 / 5 if n > b.fine_from else 1 / 3), (n, bucket)


def test_long_prompts_take_eighth_steps_and_short_ones_half_octaves():
    b = Buckets()
    assert [b.length(n) for n in (17, 25, 33, 1500, 2048)] == [24, 32, 48, 1536, 2048]
    assert [b.length(n) for n in (2049, 2561, 3000, 4097, 6594, 8193)] == [2560, 3072, 3072, 5120, 7168, 10240]
    # distinct programs per octave: two below fine_from, four above
    assert len({b.length(n) for n in range(513, 1025)}) == 2
    assert len({b.length(n) for n in range(4097, 8193)}) == 4
    assert Buckets(fine_from=1 << 30).length(6594) == 8192  # the old rule, for who wants fewer programs


def test_batches_round_to_powers_of_two_from_the_minimum():
    assert [Buckets().batch(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 32]
    assert Buckets(min_batch=8).batch(3) == 8


@pytest.mark.parametrize("bad", [{"min_batch": 0}, {"min_length": 0}, {"fine_from": 8}])
def test_bad_minimums_are_refused(bad):
    with pytest.raises(ValueError, match="bucket minimums"):
        Buckets(**bad)

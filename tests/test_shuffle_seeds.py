"""Training shuffles depend on (seed, epoch) jointly: seeds never share an order, resumes repeat it."""

from __future__ import annotations

import itertools

from data.epoch_sampling import EpochSeededSampler

SEEDS, EPOCHS = range(40, 46), range(6)


def order(seed: int, epoch: int, size: int = 64) -> list[int]:
    sampler = EpochSeededSampler(range(size), seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_no_two_seed_epoch_pairs_shuffle_alike_and_each_pair_repeats_its_order():
    orders = {(seed, epoch): order(seed, epoch) for seed in SEEDS for epoch in EPOCHS}
    # seed + epoch would collide here: seed 42 at epoch 1 against seed 43 at epoch 0, and so on.
    for (a, order_a), (b, order_b) in itertools.combinations(orders.items(), 2):
        assert order_a != order_b, (a, b)
    assert all(order(seed, epoch) == orders[seed, epoch] for seed, epoch in orders)
    assert all(sorted(permutation) == list(range(64)) for permutation in orders.values())
